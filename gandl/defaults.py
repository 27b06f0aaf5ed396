"""The fields every config shares; each `configs/*.py` `get_config()` starts from `base_config()` (or from another
config file, `call_in_file`)."""

import importlib.util
from typing import Any

import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    # Raw screen -> shards (mode=convert) and the input pipeline.
    config.data = ml_collections.ConfigDict(dict(
        kind="rxrx19a",  # a screen reader of gandl.data.screen.READERS (what root names: READERS[kind].summary)
        root="",  # the raw screen; "" = the embedded synthetic screen, generated into workdir/raw
        metadata="metadata.csv",  # the metadata table's file name in root (ome_zarr: the plate map CSV)
        channel_columns=(),  # generic screens: one image-path column per channel
        stains=(),  # stain names of the channels (generic default: the column names; ome_zarr: the OMERO labels)
        shards="",  # converted shards (or an rxrx1-utils TFRecord glob); "" = workdir/shards
        image_size=64,  # conversion target side in px; 0 keeps full resolution
        sites_per_shard=256,
        skip_bad_sites=False,  # True: skip sites with bad files and list them in skipped_sites.csv
        num_workers=0,  # conversion processes; 0 = one per core
        channels=(),  # 1-based channels to read, in order, e.g. (1, 2, 3, 4, 6) for RxRx1 -> RxRx19a
        intensity="auto",  # auto | dtype | dataset: raw values mapping to [-1, 1]
        crop_size=0,  # random crop in training, central crop in export; 0 = none
        augment=True,  # random flips and 90-degree rotations
        shuffle_buffer=1024,
        rxrx1_utils_image_size=512,  # side of images in rxrx1-utils records
    ))

    # The screen schema (gandl.data.screen.ScreenSchema): which metadata columns are plate, well, site, batch,
    # biological group, perturbation and dose, and which sites are controls (pandas queries). `preset` names one
    # of gandl.data.screen.PRESETS ("" = data.kind's own); every field left None keeps the preset's value.
    config.screen = ml_collections.ConfigDict(dict(
        preset="",
        plate=config_dict.placeholder(str), well=config_dict.placeholder(str), site=config_dict.placeholder(str),
        experiment=config_dict.placeholder(str),  # batch column; plates are named {experiment}_{plate}
        group=config_dict.placeholder(str),  # biological group, e.g. the cell line column
        perturbation=config_dict.placeholder(str), dose=config_dict.placeholder(str),
        positive=config_dict.placeholder(str),  # e.g. "compound == 'staurosporine'"
        negative=config_dict.placeholder(str),  # e.g. "compound == 'DMSO'"
        treated=config_dict.placeholder(str),  # the treatment sites, e.g. "compound != 'UV'"; "" = all perturbed
        positive_name=config_dict.placeholder(str), negative_name=config_dict.placeholder(str),
        highlight=config_dict.placeholder(tuple),  # perturbations the figures draw
    ))

    # The embedded default screen (gandl.data.synthetic.write_rxrx19a arguments).
    config.synthetic = ml_collections.ConfigDict(dict(
        seed=0, image_size=64, plates_per_cell_line=2, sites_per_well=2, num_compounds=12,
        control_wells_per_plate=(6, 3, 6, 2),
        # Harder test beds: one intensity histogram per channel for every site; infection and compound effects
        # scaled by a factor in (0, 1]; cells per site scaled by a factor in (0, 1].
        morphology_only=False, phenotype_strength=1.0, cell_density=1.0,
        # False-hit test beds: toxic compounds' infection level cut by this share of their toxicity, in [0, 1];
        # the share of toxic-inert compounds (None: a third); controls "random" or in the "edge" columns 1, 2,
        # 23, 24; the outer ring's stain gain changed by this factor in (-1, 1] (0.15: 15 % brighter).
        cytotoxic_mimicry=0.0, toxic_fraction=config_dict.placeholder(float), control_layout="random",
        edge_effect=0.0))

    config.preview = ml_collections.ConfigDict(dict(num_images=32, cols=8))

    # StyleGAN2 (gandl.models.config.ModelConfig fields); resolution must match the training images.
    config.model = ml_collections.ConfigDict(dict(
        resolution=64, num_channels=5, z_dim=512, w_dim=512, mapping_layers=3, channel_base=16384,
        channel_max=512, conv_clamp=256.0, mbstd_group_size=4, mbstd_num_channels=1, dtype="float32",
        mapping_lr_multiplier=0.01, w_avg_beta=0.995))

    # Training: the paper's variant (Adam lr 1e-4, path length + EMA on G, R1 + Lipschitz on D).
    config.train = ml_collections.ConfigDict(dict(
        batch_size=32,  # global, over every device of every process
        steps=100_000,
        g_lr=1e-4, d_lr=1e-4, adam_b1=0.0, adam_b2=0.99, adam_eps=1e-8,
        r1_gamma=1.0, r1_interval=16,
        lipschitz_weight=1.0,  # one-sided penalty on real/fake interpolates, applied with R1
        pl_weight=2.0, pl_interval=4, pl_decay=0.01, pl_batch_shrink=2,
        style_mixing_prob=0.9,
        ema_kimg=10.0, ema_rampup=0.05,
        log_every=50, sample_every=1000, checkpoint_every=1000, keep_checkpoints=3,
        swd_every=5000, swd_images=1024,
        # Linear probe of D's features every probe_every steps (0 = off; gandl.probe): probe.csv, probe_curve.png.
        probe_every=0, probe_features=("gandl", "gandl_multiscale"), probe_sites=512, probe_zeroshot_sites=512,
        distributed="auto",  # auto | on | off: jax.distributed.initialize()
        # Adaptive discriminator augmentation (gandl.train.augment): none | fixed (p = augment_p throughout) | ada
        # (p starts at augment_p and moves every ada_interval steps so that E[sign(D(real))] nears ada_target,
        # by at most 1 per ada_kimg thousand images: stylegan2-ada-pytorch's 500 for runs of millions of images).
        augment="none", augment_p=0.0, ada_target=0.6, ada_interval=4, ada_kimg=500.0,
        augment_transforms=("xflip", "rot90", "translate", "brightness", "contrast", "noise", "cutout"),
        # Contrastive discriminator (gandl.train.contrastive, ContraD): NT-Xent of two augmented views of the reals
        # on D's fc features through a projection head, added to D's loss with this weight (0 = off).
        contrastive_weight=0.0, contrastive_temperature=0.1,
    ))

    # Embedding export (mode=embed): one feature set per extractor named in `feature_sets`, in the same pass.
    config.embed = ml_collections.ConfigDict(dict(
        batch_size=64,  # global
        step=-1,  # checkpoint step; -1 = latest
        orientation_average=False,  # average the features of the 8 flips/rotations of each site
        # gandl.features.registry names: gandl (the trained D's b4.fc), random_d (a randomly initialised D),
        # gandl_multiscale / random_d_multiscale (mean and stddev over space of every D block, plus b4.fc),
        # handcrafted (intensity/texture statistics), imagenet (the fine-tuned comparator; needs imagenet_weights)
        feature_sets=("gandl", "random_d", "gandl_multiscale", "random_d_multiscale", "handcrafted"),
        # The stddev channel D's features are computed with: "constant" (a group of one: 1e-4, never seen in
        # training) or "train" (D's mean group stddev over `mbstd_batches` real training batches, recorded).
        mbstd="constant",
        mbstd_batches=4,
        part_batches=32,  # batches per resumable part file
        well_aggregate="median",  # median | mean over a well's sites: the well profiles (and the analysis' wells)
        # ImageNet comparator (gandl.features.imagenet): a torchvision densenet121 state dict (.npz, or .pt with
        # torch) or "random" for a random backbone; fine-tuned per `imagenet` (FineTuneConfig fields).
        imagenet_weights="",
        imagenet=ml_collections.ConfigDict(dict(epochs=3, batch_size=32, learning_rate=1e-3, train_backbone=False,
                                                blocks=(6, 12, 24, 16), pool_batches=8)),
    ))

    # Zero-shot cell typing on an RxRx1-layout set never seen in training (6 channels mapped onto 5).
    config.zeroshot = ml_collections.ConfigDict(dict(
        enabled=True,
        root="",  # RxRx1-layout folder; "" = synthesize one into workdir/raw_rxrx1
        shards="",  # or converted shards / an rxrx1-utils TFRecord glob
        channels=(),  # source channels feeding the model's; () = by stain, (1, 2, 3, 4, 6) for RxRx1
        # gandl.data.synthetic.write_rxrx1 arguments; its image size follows config.synthetic's
        synthetic=ml_collections.ConfigDict(dict(seed=1, plates_per_cell_line=2, sites_per_well=2)),
    ))

    # Analysis (gandl.analysis.report.AnalysisConfig fields).
    config.analysis = ml_collections.ConfigDict(dict(
        normalization="none", level="site", c=1.0, n_splits=5, group_by="plate", uv_is_positive=False,
        top_k=5, flat_threshold=0.25, toxic_threshold=0.5,
        fdr=0.05,  # false discovery rate of the hit calls
        rescue_threshold=0.0,  # efficacy a hit must be shown to exceed (C- = -1, C+ = +1; 0 = half way)
        off_axis_limit=1.5,  # off-axis distance over the C+ wells' own beyond which a dose is not a rescue
        viability_floor=0.7,  # cell-count proxy over the plate's C- wells below which a dose is cytotoxic
        position_correction="auto",  # auto | on | off: plate row/column/edge effects removed before the hit test
        seed=0,
        few_labels=(),  # e.g. (4, 8, 16): Table 1 also with k labelled control wells per class (table1_few_labels)
        few_label_draws=5,  # seeded draws of those wells, averaged
        exclude_plates=(),  # plates ({experiment}_{plate}, qc_plates.csv's plate_id) left out of all but the plate QC
        min_z_prime=config_dict.placeholder(float),  # also leave out plates whose robust Z′ is below it; None = keep
        truth=""))  # a ground-truth CSV (truth.csv schema); "" = a matching truth.csv beside the screen, if any
    return config


def call_in_file(path: str, attr: str) -> Any:
    """`attr()` of a Python file loaded by path: sweep and config files are files, not importable modules."""
    spec = importlib.util.spec_from_file_location(f"_gandl_{attr}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, attr)()
