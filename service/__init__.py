"""The HTTP service: validates requests, calls core and the serving layer, shapes responses."""
