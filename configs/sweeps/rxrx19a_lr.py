"""Learning rates on RxRx19a at 256 px, one Cloud TPU v3-8 run after another on one spot VM.

Convert the screen once (configs/rxrx19a.py), then point every run at the shared shards:
  python -m gandl.sweep --sweep configs/sweeps/rxrx19a_lr.py --workdir gs://BUCKET/sweeps/rxrx19a_lr \
      --launcher tpu --launch_flags="--spot --keep --zone=europe-west4-a"
Edit the bucket below first.
"""


def get_sweep() -> dict:
    return {
        "base": "configs/rxrx19a.py",
        "mode": "train",
        "overrides": {"data.shards": "gs://BUCKET/rxrx19a/shards"},
        # G and D learning rates move together; the paper's 1e-4 first.
        "zip": {"train.g_lr": [1e-4, 2e-4, 4e-4], "train.d_lr": [1e-4, 2e-4, 4e-4]},
    }
