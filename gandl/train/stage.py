"""The train stage (mode train): the run's config -> the typed pieces the training loop takes."""

from __future__ import annotations

from gandl import defaults
from gandl.train import loop


def run(config: defaults.Config, workdir: str, probe: loop.ProbeFn | None = None) -> loop.TrainResult:
    """Train (or resume) the StyleGAN2 on the shards; `probe` (gandl.probe, above this layer) is passed in."""
    return loop.train(loop.TrainSettings.from_config(config, workdir), workdir, probe=probe)
