r"""SimCLR pretraining of the U-Net encoder (METHODS.md 1.1, EVALUATION.md 2).

  python -m launch.pretrain --config=configs/pretrain_simclr.py \
      --workdir=/tmp/simclr --config.data.sources=drive:train,hrf:train

Arguments after the colon: `smoke` (a couple of steps on the embedded phantom,
tiny model; used by the tests), `quick` (the 2-core CPU study profile), `demo` (make quickstart),
`preset=basic_medical` (augmentation preset), e.g.
`--config=configs/pretrain_simclr.py:quick,preset=basic_medical`.
"""
import ml_collections

from configs import common


def get_config(arg=None):
  """SimCLR config; see the module docstring for `arg`."""
  args = common.parse_arg(arg, smoke=False, quick=False, demo=False,
                          preset="")
  config = ml_collections.ConfigDict()
  config.method = "simclr"
  config.data = ml_collections.ConfigDict({
      "data_dir": common.default_data_dir(),
      # Unlabelled pool, "name:split" comma list; never DRIVE test/.
      "sources": "drive:train,hrf:train",
      "image_size": 128,
      "in_channels": 3,
      "worker_count": 0,
  })
  config.augment = ml_collections.ConfigDict(
      {"preset": args.preset or "simclr_strong", "strength": 1.0})
  config.model = common.model_config("unet2d-32")
  # Canonical head: GAP -> Dense 512 -> ReLU -> Dense 128 (EVALUATION.md 2).
  config.head = ml_collections.ConfigDict({"hidden_dim": 512, "out_dim": 128})
  # google-research/simclr default temperature 0.1.
  config.loss = ml_collections.ConfigDict({"temperature": 0.1})
  config.optim = ml_collections.ConfigDict({
      "name": "adam", "learning_rate": 1e-3, "lr_scaling": "none",
      "schedule": "cosine", "warmup_steps": 100, "weight_decay": 0.0,
      "grad_clip_norm": 0.0})
  # ContrastiveCrop (METHODS.md 1.7, xyupeng/ContrastiveCrop): mode 'ccrop'
  # turns it on. alpha 0.6 / box_thresh 0.1 are its ImageNet values (0.1 for
  # its small-data configs); warm-up and interval are in steps here.
  config.crop = ml_collections.ConfigDict({
      "mode": "rrc", "alpha": 0.6, "box_thresh": 0.1, "warmup_steps": 100,
      "loc_interval": 100, "loc_size": 0, "loc_batch": 16})
  config.batch_size = 16  # images; each gives two views
  common.run_block(config, num_steps=2000, log_every=10, checkpoint_every=200)

  if args.quick:
    config.data.image_size = 96
    config.model = common.model_config("unet2d-16")
    config.batch_size = 32
    config.num_steps = 300
    config.optim.warmup_steps = 30
    config.log_every = 10
    config.checkpoint_every = 100
    config.crop.warmup_steps = 100
    config.crop.loc_interval = 100
  if args.demo:  # make quickstart: a few minutes on 2 CPU cores
    config.data.sources = "phantom:train"
    config.data.image_size = 64
    config.model = common.model_config("small")
    config.head.hidden_dim = 128
    config.head.out_dim = 64
    config.batch_size = 16
    config.num_steps = 150
    config.optim.warmup_steps = 15
    config.checkpoint_every = 50
    # On the phantom, strong SimCLR views are indistinguishable across images
    # and the embedding collapses (watch embedding_std); basic views learn.
    config.augment.preset = args.preset or "basic_medical"
  if args.smoke:
    config.data.sources = "phantom:train"
    config.data.image_size = 32
    config.model = common.model_config("tiny")
    config.head.hidden_dim = 32
    config.head.out_dim = 16
    config.batch_size = 8
    config.num_steps = 2
    config.optim.warmup_steps = 1
    config.log_every = 1
    config.checkpoint_every = 1
    config.crop.warmup_steps = 1
    config.crop.loc_interval = 1
    config.crop.loc_batch = 8
  return config
