"""The compute ladder's larger steps for one GPU (configs/sweeps/ladder.py): 64 and 128 px, 64 to 256 channels per
block, on seed 1, GAN-DL and its self-supervised twin, 64k training images each.
  python benchmarks/ladder.py --sweep configs/sweeps/ladder_gpu.py --workdir /tmp/ladder_gpu
The screen is rendered at 128 px (the model's side comes from it by area downscaling).
"""

import os

from gandl.defaults import call_in_file


def get_sweep() -> dict:
    return call_in_file(os.path.join(os.path.dirname(__file__), "ladder.py"), "ladder",
                        {"model.resolution": [64, 128], "model.channel_max": [64, 256]}, seeds=(1,),
                        overrides={"synthetic.image_size": 128, "model.channel_base": 16384})
