r"""AdCo pretraining of the U-Net encoder (METHODS.md 1.9).

  python -m launch.pretrain --config=configs/pretrain_adco.py \
      --workdir=/tmp/adco --config.data.sources=drive:train,hrf:train

Arguments after the colon: `smoke` (a couple of steps on the embedded phantom,
tiny model; used by the tests), `quick` (the 2-core CPU study profile, same
model, view size, batch and optimiser as pretrain_simclr's `quick`),
`preset=NAME` (augmentation preset).

Values come from maple-research-lab/AdCo (`ops/argparser.py`, README
commands, `training/train.py`, `training/main_worker.py`) unless a comment
says otherwise.
"""
import ml_collections

from configs import common


def get_config(arg=None):
  """AdCo config; see the module docstring for `arg`."""
  args = common.parse_arg(arg, smoke=False, quick=False, preset="")
  config = ml_collections.ConfigDict()
  config.method = "adco"
  config.data = ml_collections.ConfigDict({
      "data_dir": common.default_data_dir(),
      # Unlabelled pool, "name:split" comma list; never DRIVE test/.
      "sources": "drive:train,hrf:train",
      "image_size": 128,
      "in_channels": 3,
      "worker_count": 0,
  })
  # main_worker.py single-crop augmentation = MoCo v2 aug+ (RRC (0.2, 1),
  # jitter (0.4,0.4,0.4,0.1) p .8, gray .2, blur p .5, flip).
  config.augment = ml_collections.ConfigDict(
      {"preset": args.preset or "mocov2", "strength": 1.0})
  config.model = common.model_config("unet2d-32")
  # `--mlp 1`: Linear(dim_mlp, dim_mlp) -> ReLU -> Linear(dim_mlp, 128);
  # dim_mlp is the backbone width (512 for unet2d-32), `--moco_dim 128`.
  config.head = ml_collections.ConfigDict({"hidden_dim": 512, "out_dim": 128})
  config.loss = ml_collections.ConfigDict({
      "temperature": 0.12,  # `--moco_t 0.12` (default and README commands).
      # `--sym 0` in the headline single-crop run (68.6%); `--sym 1` is the
      # README's symmetric variant (70.6%).
      "symmetric": False,
  })
  config.adco = ml_collections.ConfigDict({
      "momentum": 0.999,  # `--moco_m`: EMA of the key encoder.
      # `--cluster 65536` in the reference. The bank is filled with keys
      # during the first ceil(K / batch) steps; at batch 16 a 65536 bank
      # would need 4096 steps, more than this whole run. 1024 takes 64 of
      # 2000 steps (the README also reports 8192 and 16384).
      "bank_size": 1024,
      # `--mem_t 0.02` in every README command (argparser default 0.07:
      # the commands that produced the published numbers override it).
      "bank_temperature": 0.02,
      "bank_lr": 3.0,  # `--memory_lr 3`, constant (no schedule in the code).
      "bank_momentum": 0.9,  # `args.momentum`, shared with the encoder SGD.
      "bank_weight_decay": 1e-4,  # `--mem_wd 1e-4`.
  })
  # argparser: SGD lr 0.03 (batch 256), momentum 0.9, wd 1e-4, `--cos 1`
  # cosine schedule (to lr_final 0.0006 in the code; optim's cosine ends at
  # 0), no warm-up. Linear scaling (0.03 * batch / 256) as for MoCo v2.
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
    config.adco.bank_size = 512  # 16 initialisation steps of 300
    config.log_every = 10
    config.checkpoint_every = 100
  if args.smoke:
    config.data.sources = "phantom:train"
    config.data.image_size = 32
    config.model = common.model_config("tiny")
    config.head.hidden_dim = 32
    config.head.out_dim = 16
    config.batch_size = 8
    # One initialisation step, then one adversarial step.
    config.adco.bank_size = 8
    config.num_steps = 2
    config.optim.warmup_steps = 1
    config.log_every = 1
    config.checkpoint_every = 1
  return config
