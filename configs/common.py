"""Helpers shared by the config files: arguments, blocks and profiles.

`parse_arg("smoke,steps=10", smoke=False, steps=100)` turns the string after
the colon in `--config=configs/X.py:ARG` into typed fields (big_vision's
`configs/common.py::parse_arg` idea).

Profiles. Every config file builds its default config and then
`apply_profiles(config, args, PROFILES)` runs the profiles its argument
turns on. A profile table maps a name to a tuple of overrides (functions
`config -> None`), applied in the table's order: a name is an argument
after the colon (`smoke`, `quick`, `demo`, or a variant such as
pretrain_volume_supcon's `chaitanya`), 'a+b' runs when both a and b are on,
and DEFAULT when none of the table's other names is. The tables here
(PRETRAIN_PROFILES, VOLUME_PROFILES) are shared; a config file extends one
with its own overrides (`extend`).
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
# The profile that runs when no other profile of a table is on: the
# config's full-size settings (e.g. MoCo v2's reference SGD optimiser).
DEFAULT = "default"


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


def profile_args(profiles):
  """`parse_arg` defaults for the profile names of table `profiles`."""
  return {name: False for key in profiles if key != DEFAULT
          for name in key.split("+")}


def apply_profiles(config, args, profiles):
  """Runs the overrides of each profile of `profiles` that `args` turns on,
  in the table's order (see the module docstring)."""
  names = profile_args(profiles)
  any_on = any(args.get(name) for name in names)
  for key, overrides in profiles.items():
    on = (not any_on if key == DEFAULT else
          all(args.get(name) for name in key.split("+")))
    if on:
      for override in overrides:
        override(config)


def extend(profiles, only=None, **more):
  """A profile table: `profiles` (its names in `only`, if given), each
  profile followed by its overrides in `more`; new names go last."""
  table = {key: tuple(overrides) for key, overrides in profiles.items()
           if only is None or key in only}
  for key, overrides in more.items():
    table[key] = table.get(key, ()) + tuple(overrides)
  return table


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
  # agreement with float32 in tests/models/precision_test.py).
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


def pretrain_config(method, args, profiles, *, preset, in_channels=3,
                    blocks=()):
  """A pretraining config: shared blocks, the method's, then the profiles.

  Args:
    method: registered method name (`config.method`).
    args: `parse_arg` result with the profile names of `profiles` and
      `preset`.
    profiles: the config file's profile table (see the module docstring).
    preset: the method's default augmentation preset (`args.preset` wins).
    in_channels: `config.data.in_channels` and `config.model.in_channels`.
    blocks: functions `config -> None` that add or replace the method's own
      blocks (head, loss, optim, ...) before the profiles run, so `quick`
      and `smoke` shrink them as they do the shared ones.

  Returns:
    ConfigDict with data, augment, model, optim, batch, run, guard and
    probe fields, and those `blocks` add.
  """
  config = shared_blocks(method, preset, in_channels)
  for block in blocks:
    block(config)
  apply_profiles(config, args, profiles)
  if args.preset:
    config.augment.preset = args.preset
  return config


def shared_blocks(method, preset, in_channels):
  """Data, augment, model, optim, batch, run, guard and probe blocks."""
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
  # Canonical step optimiser: Adam 1e-3 (docs/protocol.md section 2).
  config.optim = ml_collections.ConfigDict({
      "name": "adam", "learning_rate": 1e-3, "lr_scaling": "none",
      "schedule": "cosine", "warmup_steps": 100, "weight_decay": 0.0,
      "grad_clip_norm": 0.0})
  config.batch_size = 16  # images; each gives two views
  run_block(config, num_steps=2000, log_every=10, checkpoint_every=200)
  diagnostics_blocks(config)
  return config


def canonical_head(config):
  """`config.head`: GAP -> Dense 512 -> ReLU -> Dense 128 (docs/protocol.md
  section 2), the head of SimCLR, MoCo v2 and AdCo."""
  config.head = ml_collections.ConfigDict({"hidden_dim": 512, "out_dim": 128})


def contrastive_crop(config):
  """`config.contrastive_crop`, for the methods that can use it.

  ContrastiveCrop (docs/methods/contrastive_crop.md,
  xyupeng/ContrastiveCrop): mode 'ccrop' turns it on. alpha 0.6 /
  box_thresh 0.1 are its ImageNet values (0.1 for its small-data configs);
  warm-up and interval are in steps here.
  """
  config.contrastive_crop = ml_collections.ConfigDict({
      "mode": "rrc", "alpha": 0.6, "box_thresh": 0.1, "warmup_steps": 100,
      "loc_interval": 100, "loc_size": 0, "loc_batch": 16})


def diagnostics_blocks(config):
  """`config.guard` and `config.probe`, which every pretraining config has.

  guard (medclr/evaluate/guard.py): collapse / chance diagnostics, mode off,
  warn or stop; warmup_steps -1 is the larger of optim.warmup_steps and
  num_steps / 10. probe (medclr/evaluate/probe.py): vessel/background
  balanced accuracy of a ridge-linear (kind 'linear') or k-NN ('knn') probe
  on the frozen encoder's features of patches of labelled training images,
  every `every` steps; dataset '' turns it off (the study sets its labelled
  set). Its size is measured: 4 images and 512 query pixels had a seed
  spread (0.05) larger than DINO's gain
  (benchmarks/results/probe_sensitivity.md).
  """
  config.guard = ml_collections.ConfigDict({
      "mode": "warn", "warmup_steps": -1, "patience": 3,
      "chance_margin": 0.02, "collapse_ratio": 0.1, "uniform_ratio": 0.98})
  config.probe = ml_collections.ConfigDict({
      "dataset": "", "split": "train", "kind": "linear", "num_images": 8,
      "patches_per_image": 8, "pixels_per_patch": 128, "k": 10,
      "every": 50, "seed": 0})


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


# -- Profile overrides: the pieces of the shared profile tables.


def setting(path, value):
  """An override that sets the dotted field `path` to `value`."""
  *parents, leaf = path.split(".")

  def override(config):
    for parent in parents:
      config = config[parent]
    config[leaf] = value
  return override


def quick_run(config):
  """The 2-core CPU DRIVE study's model, view size and run length; matches
  finetune_unet:quick (the encoder must transfer level for level)."""
  config.data.image_size = 96
  config.model = model_config("small", in_channels=config.data.in_channels)
  config.batch_size = 32
  config.num_steps = 300
  config.log_every = 10
  config.checkpoint_every = 100


def study_optimiser(config):
  config.optim = study_optim()


def demo_run(config):
  """make quickstart: a few minutes on 2 CPU cores, on the phantom."""
  config.data.sources = "phantom:train"
  config.data.image_size = 64
  config.model = model_config("small", in_channels=config.data.in_channels)
  config.head.hidden_dim = 128
  config.head.out_dim = 64
  config.num_steps = 150
  config.optim.warmup_steps = 15
  config.checkpoint_every = 50


def phantom_pool(config):
  config.data.sources = "phantom:train"


def tiny_run(config):
  """Two steps of the tiny model: what the tests run."""
  config.model = model_config("tiny", in_channels=config.data.in_channels)
  config.batch_size = 8
  config.num_steps = 2
  # No warm-up: a 1-step warm-up would make step 0's learning rate 0 and
  # leave the parameters of the first update unchanged.
  config.optim.warmup_steps = 0
  config.log_every = 1
  config.checkpoint_every = 1


def smoke_views(config):
  config.data.image_size = 32


def small_head(config):
  # Chaitanya's local stage and MACL have no projection head.
  if "head" in config:
    config.head.hidden_dim = 32
    config.head.out_dim = 16


def contrastive_crop_every_step(config):
  # Only the methods that can use ContrastiveCrop have its block.
  if "contrastive_crop" in config:
    config.contrastive_crop.warmup_steps = 1
    config.contrastive_crop.loc_interval = 1
    config.contrastive_crop.loc_batch = 8


def probe_every_step(config):
  config.probe.every = 1


def rgb_slices(config):
  """Volume slices with 3 channels, so the encoder goes to the RGB
  fine-tunes (DRIVE in quick, the phantom in smoke)."""
  config.data.in_channels = 3


# The pretraining profiles: `quick` (the 2-core CPU study: one model, view
# size and optimiser for every method), `demo` and `smoke` (the phantom).
PRETRAIN_PROFILES = {
    "quick": (quick_run, study_optimiser),
    "demo": (demo_run,),
    "smoke": (phantom_pool, smoke_views, tiny_run, small_head,
              contrastive_crop_every_step, probe_every_step),
}
# Those of the volume-aware configs (pretrain_volume_supcon, pretrain_macl):
# RGB slices; the method keeps its own optimiser (no study_optimiser) and
# smoke keeps its volume set.
VOLUME_PROFILES = {
    "quick": (rgb_slices, quick_run),
    "smoke": (rgb_slices, smoke_views, tiny_run, small_head,
              probe_every_step),
}


def volume_data(config, *, sources, image_size, sampling):
  """`config.data` of a volume set (pretrain_volume_supcon, pretrain_macl).

  Volume slices have no field of view: the preprocessing fields are dropped.
  `sampling` is 'random' (uniform slices) or 'partition' (one slice from
  each partition of a volume).
  """
  del config.data.normalize
  del config.data.fov_diameter
  config.data.sources = sources
  config.data.image_size = image_size
  config.data.sampling = sampling


def pretrain_args(arg, profiles):
  """The `:arg` of a pretraining config: its profiles and `preset`."""
  return parse_arg(arg, **profile_args(profiles), preset="")


def reference_sgd(config):
  """MoCo v2's and AdCo's published optimiser (their configs say why): SGD
  lr 0.03 at batch 256 scaled linearly, momentum 0.9, coupled weight decay
  1e-4, cosine schedule without warm-up."""
  config.optim = ml_collections.ConfigDict({
      "name": "sgd", "learning_rate": 0.03, "lr_scaling": "linear",
      "momentum": 0.9, "schedule": "cosine", "warmup_steps": 0,
      "weight_decay": 1e-4, "grad_clip_norm": 0.0})
