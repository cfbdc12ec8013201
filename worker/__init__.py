"""The trainer process: claims queued jobs, trains them with Keras, records every epoch."""
