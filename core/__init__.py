"""What the service and the worker both use: settings, job specs and what they cost, datasets,
images, the model's layers, logging."""
