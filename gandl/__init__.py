"""GAN-DL: StyleGAN2 discriminator embeddings for fluorescence microscopy screens."""

__version__ = "0.1.0"
