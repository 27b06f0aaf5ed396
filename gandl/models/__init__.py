"""StyleGAN2 (skip G, residual D) in Flax, with stylegan2-ada-pytorch weight conversion."""

from gandl.models.config import ModelConfig, build_models, init_variables
from gandl.models.discriminator import Discriminator
from gandl.models.generator import Generator, mix_styles

__all__ = ["Discriminator", "Generator", "ModelConfig", "build_models", "init_variables", "mix_styles"]
