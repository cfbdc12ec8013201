"""The HTTP service: validates requests, calls core and the predictor, shapes responses."""
