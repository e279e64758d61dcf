r"""MoCo v2 pretraining of the U-Net encoder (METHODS.md 1.0, 1.2, 1.13).

  python -m launch.pretrain --config=configs/pretrain_mocov2.py \
      --workdir=/tmp/mocov2 --config.data.sources=drive:train,hrf:train

Arguments after the colon: `smoke` (a couple of steps on the embedded phantom,
tiny model; used by the tests), `quick` (the 2-core CPU study profile, same
model, view size, batch and optimiser as pretrain_simclr's `quick`),
`preset=NAME` (augmentation preset), e.g.
`--config=configs/pretrain_mocov2.py:quick,preset=basic_medical`.

Values come from facebookresearch/moco (`main_moco.py`, `moco/builder.py`,
README) unless a comment says otherwise.
"""
import ml_collections

from configs import common


def get_config(arg=None):
  """MoCo v2 config; see the module docstring for `arg`."""
  args = common.parse_arg(arg, smoke=False, quick=False, preset="")
  config = ml_collections.ConfigDict()
  config.method = "mocov2"
  config.data = ml_collections.ConfigDict({
      "data_dir": common.default_data_dir(),
      # Unlabelled pool, "name:split" comma list; never DRIVE test/.
      "sources": "drive:train,hrf:train",
      "image_size": 128,
      "in_channels": 3,
      "worker_count": 0,
  })
  # aug+ of MoCo v2 (main_moco.py): RRC (0.2, 1), jitter (0.4,0.4,0.4,0.1)
  # p .8, grayscale .2, blur p .5, flip; see augment.PRESETS['mocov2'].
  config.augment = ml_collections.ConfigDict(
      {"preset": args.preset or "mocov2", "strength": 1.0})
  config.model = common.model_config("unet2d-32")
  # `--mlp`: Linear(dim_mlp, dim_mlp) -> ReLU -> Linear(dim_mlp, 128) where
  # dim_mlp is the backbone width (2048 for ResNet-50). For unet2d-32 the
  # deepest width is 512, so the canonical 512 -> 128 head is MoCo's rule.
  config.head = ml_collections.ConfigDict({"hidden_dim": 512, "out_dim": 128})
  config.loss = ml_collections.ConfigDict({
      "temperature": 0.2,  # `--moco-t 0.2` (MoCo v2 README commands).
      # MoCo v2 is asymmetric; True averages the loss over both view orders.
      "symmetric": False,
  })
  config.moco = ml_collections.ConfigDict({
      "momentum": 0.999,  # `--moco-m` default.
      # Reference K = 65536 for 1.28 M ImageNet images and ~256 M keys seen.
      # Our pools hold tens of images and a 2000-step run sees 32 000 keys:
      # a 65536 queue would never hold only real keys and would repeat each
      # image ~1000 times as its own negative. 4096 is refreshed ~8 times per
      # run. Must be a multiple of batch_size (`assert K % batch_size == 0`).
      "queue_size": 4096,
  })
  # main_moco.py: SGD lr 0.03 for batch 256, momentum 0.9, wd 1e-4, `--cos`
  # cosine schedule, no warm-up. The MoCo README recommends the linear
  # scaling rule for other batch sizes (lr 0.015 for batch 128), hence
  # lr_scaling 'linear' (0.03 * batch / 256).
  # NOTE: optim.make_optimizer's 'sgd' does not apply weight_decay yet; the
  # value is recorded here so it takes effect once it does.
  config.optim = ml_collections.ConfigDict({
      "name": "sgd", "learning_rate": 0.03, "lr_scaling": "linear",
      "momentum": 0.9, "schedule": "cosine", "warmup_steps": 0,
      "weight_decay": 1e-4, "grad_clip_norm": 0.0})
  config.batch_size = 16  # images; each gives a query and a key view
  common.run_block(config, num_steps=2000, log_every=10, checkpoint_every=200)

  if args.quick:
    # Same model, view size, batch, steps and optimiser as pretrain_simclr's
    # quick profile, so that the DRIVE study compares methods, not recipes.
    config.data.image_size = 96
    config.model = common.model_config("unet2d-16")
    config.batch_size = 32
    config.num_steps = 300
    config.optim = ml_collections.ConfigDict({
        "name": "adam", "learning_rate": 1e-3, "lr_scaling": "none",
        "schedule": "cosine", "warmup_steps": 30, "weight_decay": 0.0,
        "grad_clip_norm": 0.0})
    # 300 steps x 32 = 9600 keys: a 1024 queue turns over ~9 times.
    config.moco.queue_size = 1024
    config.log_every = 10
    config.checkpoint_every = 100
  if args.smoke:
    config.data.sources = "phantom:train"
    config.data.image_size = 32
    config.model = common.model_config("tiny")
    config.head.hidden_dim = 32
    config.head.out_dim = 16
    config.batch_size = 8
    config.moco.queue_size = 16  # two batches: the pointer wraps in 2 steps
    config.num_steps = 2
    config.optim.warmup_steps = 1
    config.log_every = 1
    config.checkpoint_every = 1
  return config
