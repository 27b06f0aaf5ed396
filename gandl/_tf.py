"""TensorFlow for input pipelines and file I/O only: every module imports it from here.

JAX owns the accelerators. Hiding GPUs from TensorFlow before anything else touches it keeps tf.data
from reserving accelerator memory (the tensorflow-cpu wheel sees no TPU either).
"""

import tensorflow as tf

tf.config.set_visible_devices([], "GPU")

__all__ = ["tf"]
