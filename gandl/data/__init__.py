"""Data layer: screen metadata, TFRecord shards, tf.data pipelines, the synthetic screen."""
