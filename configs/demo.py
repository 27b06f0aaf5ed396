"""Demo: the embedded synthetic screen, trained on a CPU (about 15 minutes on 2 idle cores end to end).

  python -m gandl.main --config configs/demo.py --workdir /tmp/gandl_demo --mode all

4,512 synthetic RxRx19a-like sites (`gandl.data.synthetic.layouts.DEMO_RXRX19A`) rendered at 64 px and converted
to 32 px, a narrow StyleGAN2 (32 channels per block, 64-d latents) trained for 4,000 iterations of 16
images with the linear probe every 500, then embeddings of the screen and of a synthetic RxRx1-like
zero-shot set, and the analysis report. The recommended GAN-DL feature set is `gandl_blocks`, read against
`random_d_blocks` (docs/results.md, "Harder test beds, few labels"); the paper's b4.fc (`gandl`) and the multiscale
statistics are exported beside it. Settings chosen on screen seed 0; configs/sweeps/demo_seeds.py reruns the
job on seeds 1-3, configs/sweeps/test_beds.py on the harder test beds.
"""

import ml_collections

from gandl.data.synthetic.layouts import DEMO_RXRX19A
from gandl.defaults import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.synthetic.update(DEMO_RXRX19A)  # the same screen as `python -m gandl.data.synthetic --demo`
    config.zeroshot.synthetic.update(plates_per_cell_line=2, sites_per_well=2)
    config.data.update(image_size=32, sites_per_shard=128)
    # mbstd groups of 2: the batch of 16 then also splits into whole groups over the 8 devices of a TPU v3-8.
    config.model.update(z_dim=64, w_dim=64, channel_base=1024, channel_max=32, mbstd_group_size=2)
    # 4,000 steps (64k images): the probe (every 500 steps, those checkpoints kept) shows where D's features
    # stand over training against the random-init reference lines.
    config.train.update(batch_size=16, steps=4000, g_lr=2e-3, d_lr=2e-3, r1_gamma=0.05, log_every=100,
                        checkpoint_every=500, sample_every=1000, swd_every=2000, swd_images=512, probe_every=500)
    # ADA, when chosen (train.augment="ada"): p can go 0 -> 1 in 10k images, the same share of this 64k-image run
    # as the original's 500k of its multi-million-image runs.
    config.train.ada_kimg = 10.0
    # The recommended set (block statistics alone) and its random-init reference beside the paper's b4.fc; the
    # probe follows it too.
    config.embed.feature_sets = ("gandl", "random_d", "gandl_multiscale", "random_d_multiscale", "gandl_blocks",
                                 "random_d_blocks", "handcrafted")
    config.train.probe_features = ("gandl", "gandl_multiscale", "gandl_blocks")
    config.embed.batch_size = 64
    return config
