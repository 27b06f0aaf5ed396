"""Data layer: screen metadata, TFRecord shards, tf.data pipelines, the synthetic screen.

TensorFlow is only the input pipeline here; JAX owns every accelerator. Hiding GPUs from TensorFlow
before anything else touches it keeps tf.data from reserving accelerator memory.
"""

import tensorflow as tf

tf.config.set_visible_devices([], "GPU")
