"""Helpers shared by the config files: argument parsing and common blocks.

`parse_arg("smoke,steps=10", smoke=False, steps=100)` turns the string after
the colon in `--config=configs/X.py:ARG` into typed fields (big_vision's
`configs/common.py::parse_arg` idea).
"""
import difflib
import os

import ml_collections

from medclr import errors
from medclr import models
from medclr.train import renames

# Named model sizes live with the models (unet2d-32 is the canonical model
# of docs/protocol.md section 2).
MODEL_PRESETS = models.MODEL_PRESETS


def parse_arg(arg, **defaults):
  """Parses 'flag,key=value,...' into a ConfigDict typed like `defaults`."""
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    if key not in defaults:
      renamed = renames.renamed_arg_message(key, arg, defaults)
      if renamed:
        raise errors.ConfigError(renamed)
      close = difflib.get_close_matches(key, list(defaults), n=1)
      raise errors.ConfigError(
          f"unknown config argument {key!r} in {arg!r}; known: "
          f"{sorted(defaults)}" + (f" (did you mean {close[0]!r}?)"
                                   if close else ""))
    if not eq:
      result[key] = True
    elif isinstance(defaults[key], bool):
      result[key] = value.lower() in ("1", "true", "yes")
    else:
      kind = type(defaults[key])
      try:
        result[key] = kind(value)
      except ValueError:
        raise errors.ConfigError(
            f"config argument {item!r} in {arg!r}: expected "
            f"{kind.__name__}") from None
  return result


def default_data_dir():
  """Where prepared TFDS records live: $MEDCLR_DATA_DIR or ~/medclr_data."""
  return os.environ.get("MEDCLR_DATA_DIR", os.path.expanduser("~/medclr_data"))


def model_config(preset="unet2d-32", in_channels=3, num_classes=1):
  """The `config.model` block; `preset` fills widths and norm."""
  if preset not in MODEL_PRESETS:
    raise errors.ConfigError(f"unknown model preset {preset!r}; known: "
                             f"{sorted(MODEL_PRESETS)}")
  cfg = ml_collections.ConfigDict(dict(MODEL_PRESETS[preset]))
  cfg.preset = preset
  cfg.in_channels = in_channels
  cfg.num_classes = num_classes
  # 'bfloat16': bfloat16 compute with float32 master weights (tested for
  # agreement with float32 in tests/precision_test.py).
  cfg.dtype = "float32"
  return cfg


def preprocess_fields():
  """`config.data` fields that must match in pretraining, fine-tuning and
  evaluation (medclr.data.preprocess; chosen by benchmarks/results/ablation).
  """
  return {
      # none | image (per-image, per-channel standardisation in the FOV) |
      # dataset (per-channel statistics of the training split).
      "normalize": "image",
      # Resample so the field of view is this many pixels across (0: the
      # dataset's own resolution). DRIVE's FOV is about 540 px.
      "fov_diameter": 0,
      # none | clahe (adaptive histogram equalisation of the brightness).
      "contrast": "none",
      # rgb | green (the green channel in all three).
      "channels": "rgb",
  }


def run_block(config, *, num_steps, log_every, checkpoint_every, keep=2):
  """Step counts, intervals and mesh shared by pretraining and fine-tuning."""
  config.seed = 0
  config.num_steps = num_steps
  config.log_every = log_every
  config.checkpoint_every = checkpoint_every
  config.keep_checkpoints = keep
  config.async_checkpoints = True
  config.mesh = ml_collections.ConfigDict({"data": -1})
  return config


def pretrain_config(method, args, *, preset="simclr_strong", in_channels=3,
                    blocks=None, volume=False):
  """The blocks every pretraining method shares, with the profiles applied.

  Args:
    method: registered method name (`config.method`).
    args: `parse_arg` result with smoke, quick, preset and (optionally) demo.
    preset: the method's default augmentation preset (`args.preset` wins).
    in_channels: `config.data.in_channels` and `config.model.in_channels`.
    blocks: optional `config -> None` that sets or replaces the method's own
      blocks (head, loss, optim, ...) before the profiles run, so `quick` and
      `smoke` shrink them as they do the shared ones.
    volume: apply `volume_profiles` (chaitanya, pcl) instead of
      `apply_pretrain_profiles`.

  Returns:
    ConfigDict with data, augment, model, head, loss, optim,
    contrastive_crop, batch,
    run, guard and probe fields; method configs add their own on top.
  """
  config = shared_blocks(method, args.preset or preset, in_channels)
  if blocks is not None:
    blocks(config)
  if volume:
    volume_profiles(config, args)
  else:
    apply_pretrain_profiles(config, args)
  diagnostics_blocks(config, args.smoke)
  return config


def shared_blocks(method, preset, in_channels):
  """Data, augment, model, head, loss, optim, contrastive_crop, batch and run
  blocks."""
  config = ml_collections.ConfigDict()
  config.method = method
  config.data = ml_collections.ConfigDict({
      "data_dir": default_data_dir(),
      # Unlabelled pool, "name:split" comma list; never DRIVE test/.
      "sources": "drive:train,hrf:train",
      "image_size": 128,
      "in_channels": in_channels,
      "worker_count": 0,
      # Where the two-view random resized crops are cut: 'host' (Grain) or
      # 'device': the host ships whole images fitted into a crop_canvas
      # square (0: from image_size and the smallest crop area) and the step
      # cuts the views (medclr/augment/crops.py); for accelerator hosts.
      "crop_site": "host",
      "crop_canvas": 0,
      **preprocess_fields(),
  })
  config.augment = ml_collections.ConfigDict(
      {"preset": preset, "strength": 1.0})
  config.model = model_config("unet2d-32", in_channels=in_channels)
  # Canonical head: GAP -> Dense 512 -> ReLU -> Dense 128
  # (docs/protocol.md section 2).
  config.head = ml_collections.ConfigDict({"hidden_dim": 512, "out_dim": 128})
  config.loss = ml_collections.ConfigDict({"temperature": 0.1})
  # Canonical step optimiser: Adam 1e-3 (docs/protocol.md section 2).
  config.optim = ml_collections.ConfigDict({
      "name": "adam", "learning_rate": 1e-3, "lr_scaling": "none",
      "schedule": "cosine", "warmup_steps": 100, "weight_decay": 0.0,
      "grad_clip_norm": 0.0})
  # ContrastiveCrop (docs/methods/contrastive_crop.md,
  # xyupeng/ContrastiveCrop): mode 'ccrop' turns it on. alpha 0.6 /
  # box_thresh 0.1 are its ImageNet values (0.1 for its small-data
  # configs); warm-up and interval are in steps here.
  config.contrastive_crop = ml_collections.ConfigDict({
      "mode": "rrc", "alpha": 0.6, "box_thresh": 0.1, "warmup_steps": 100,
      "loc_interval": 100, "loc_size": 0, "loc_batch": 16})
  config.batch_size = 16  # images; each gives two views
  run_block(config, num_steps=2000, log_every=10, checkpoint_every=200)
  return config


def apply_pretrain_profiles(config, args):
  """`quick`, `demo` and `smoke` over the shared pretraining blocks."""
  if args.quick:
    quick_profile(config)
  if args.get("demo"):  # make quickstart: a few minutes on 2 CPU cores
    config.data.sources = "phantom:train"
    config.data.image_size = 64
    config.model = model_config("small")
    config.head.hidden_dim = 128
    config.head.out_dim = 64
    config.num_steps = 150
    config.optim.warmup_steps = 15
    config.checkpoint_every = 50
  if args.smoke:
    smoke_profile(config)
    config.head.hidden_dim = 32
    config.head.out_dim = 16
    config.contrastive_crop.warmup_steps = 1
    config.contrastive_crop.loc_interval = 1
    config.contrastive_crop.loc_batch = 8


def diagnostics_blocks(config, smoke):
  """`config.guard` and `config.probe`, which every pretraining config has.

  guard (medclr/evaluate/guard.py): collapse / chance diagnostics, mode off,
      warn or
  stop; warmup_steps -1 is the larger of optim.warmup_steps and num_steps /
  10. probe (medclr/evaluate/probe.py): vessel/background balanced accuracy of a
  ridge-linear (kind 'linear') or k-NN ('knn') probe on the frozen encoder's
  features of patches of labelled training images, every `every` steps;
  dataset '' turns it off (the study sets its labelled set). Its size is
  measured: 4 images and 512 query pixels had a seed spread (0.05) larger
  than DINO's gain (benchmarks/results/probe_sensitivity.md).
  """
  config.guard = ml_collections.ConfigDict({
      "mode": "warn", "warmup_steps": -1, "patience": 3,
      "chance_margin": 0.02, "collapse_ratio": 0.1, "uniform_ratio": 0.98})
  config.probe = ml_collections.ConfigDict({
      "dataset": "", "split": "train", "kind": "linear", "num_images": 8,
      "patches_per_image": 8, "pixels_per_patch": 128, "k": 10,
      "every": 1 if smoke else 50, "seed": 0})


def study_optim():
  """The one optimiser of the CPU DRIVE study: Adam 1e-3, 30 warm-up steps.

  The study compares methods with one recipe; the methods' own optimisers
  (LARS, AdamW, SGD at their batch-size-scaled rates) are tuned for batches
  of hundreds to thousands and would barely move in 300 steps of 32.
  """
  return ml_collections.ConfigDict({
      "name": "adam", "learning_rate": 1e-3, "lr_scaling": "none",
      "schedule": "cosine", "warmup_steps": 30, "weight_decay": 0.0,
      "grad_clip_norm": 0.0})


def quick_profile(config):
  """The 2-core CPU DRIVE study profile; matches finetune_unet:quick."""
  config.data.image_size = 96
  # finetune_unet:quick's model: the encoder must transfer level for level.
  config.model = model_config("small")
  config.batch_size = 32
  config.num_steps = 300
  config.optim = study_optim()
  config.log_every = 10
  config.checkpoint_every = 100


def smoke_profile(config):
  """Two steps on the phantom with the tiny model: what the tests run."""
  config.data.sources = "phantom:train"
  config.data.image_size = 32
  config.model = model_config("tiny")
  config.batch_size = 8
  config.num_steps = 2
  # No warm-up: a 1-step warm-up would make step 0's learning rate 0 and
  # leave the parameters of the first update unchanged.
  config.optim.warmup_steps = 0
  config.log_every = 1
  config.checkpoint_every = 1


def volume_profiles(config, args):
  """`quick` / `smoke` of the volume-aware configs (chaitanya, pcl).

  Slices get 3 channels so the encoder goes to the RGB fine-tunes (DRIVE in
  quick, the phantom in smoke); unlike `quick_profile`, the method keeps its
  own optimiser.
  """
  if args.quick:
    config.data.image_size = 96
    config.data.in_channels = 3
    config.model = model_config("small", in_channels=3)
    config.batch_size = 32
    config.num_steps = 300
    config.log_every = 10
    config.checkpoint_every = 100
  if args.smoke:
    config.data.image_size = 32
    config.data.in_channels = 3
    config.model = model_config("tiny", in_channels=3)
    config.head.hidden_dim = 32
    config.head.out_dim = 16
    config.batch_size = 8
    config.num_steps = 2
    config.optim.warmup_steps = 0  # see smoke_profile
    config.log_every = 1
    config.checkpoint_every = 1


def volume_data(config, *, sources, image_size, sampling):
  """`config.data` of a volume set (chaitanya, pcl).

  Volume slices have no field of view: the preprocessing fields are dropped.
  `sampling` is 'random' (uniform slices) or 'partition' (one slice from
  each partition of a volume).
  """
  del config.data.normalize
  del config.data.fov_diameter
  config.data.sources = sources
  config.data.image_size = image_size
  config.data.sampling = sampling


def pretrain_args(arg):
  """The `:arg` every pretraining config accepts."""
  return parse_arg(arg, smoke=False, quick=False, demo=False, preset="")
