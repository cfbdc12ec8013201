"""Shared by the service and the worker: settings, job specs, lifecycle, database, artifacts."""
