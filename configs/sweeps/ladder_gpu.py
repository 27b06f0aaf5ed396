"""The compute ladder's larger steps for one GPU (configs/sweeps/ladder.py): from 64 px and 64 channels per block,
the model's side to 128 px and the width to 256 channels, GAN-DL and its self-supervised twin, 64k training images
each, seed 1 (6 runs; the screen is rendered at 128 px and area-downscaled to each run's side).
  python benchmarks/ladder.py --sweep configs/sweeps/ladder_gpu.py --workdir /tmp/ladder_gpu
Not yet run on a GPU: its time there is not measured (every run renders its own screen on the host's CPUs).
"""

import os

from gandl.defaults import call_in_file


def get_sweep() -> dict:
    return call_in_file(os.path.join(os.path.dirname(__file__), "ladder.py"), "ladder",
                        {"model.resolution": [128], "model.channel_max": [256]}, seeds=(1,),
                        start={"train.steps": 4000, "model.channel_max": 64, "model.resolution": 64,
                               "data.image_size": 64},
                        overrides={"synthetic.image_size": 128, "model.channel_base": 16384})
