"""Backend-specific device setup: the only place with raw backend calls."""

from __future__ import annotations

import gc
import os
import platform

import keras


def setup_device() -> str:
    """Prepare the accelerator if there is one and describe what training will run on.

    GPU memory is taken as needed rather than all at once, so several workers can share one
    card (JAX's equivalent, XLA_PYTHON_CLIENT_PREALLOCATE=false, is set before it loads)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        if gpus:
            name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "")
            return f"GPU:0 {name} (tensorflow)".replace("  ", " ")
    elif backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return f"{device.platform.upper()}:{device.id} {device.device_kind} (jax)"
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return f"GPU:0 {torch.cuda.get_device_name(0)} (torch)"
    return f"CPU {platform.machine()} ×{os.cpu_count()} ({backend})"


def freeze_imports() -> None:
    """Once a process has loaded its backend, and before it trains: TensorFlow and Keras leave
    ~300,000 long-lived objects that the full collection Keras' `clear_session` runs before
    every job would walk (0.27 s a job on the 2-core CPU; 0.03 s once they are set aside)."""
    gc.collect()  # what is garbage now is not kept forever
    gc.freeze()
