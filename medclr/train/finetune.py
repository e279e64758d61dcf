"""Few-label U-Net fine-tuning loop: `train_and_evaluate(config, workdir)`.

Resume order (big_vision's "Load Checkpoint" order):
  (1) this workdir's latest checkpoint (an interrupted fine-tune),
  (2) `config.init.pretrain_dir`: encoder (and decoder) from pretraining,
      restored by parameter path, which is identical in both models,
  (3) random initialisation (training from scratch).
"""
import dataclasses
import json
import math

from etils import epath
import jax
import numpy as np

from medclr import checkpointing
from medclr import errors
from medclr import models
from medclr.augment import ops as augment
from medclr.data import pipeline
from medclr.data import prepare as data_prepare
from medclr.data import preprocess
from medclr.data import sources as data_sources
from medclr.evaluate import inference
from medclr.train import config_checks
from medclr.train import steps
from medclr.train import trainer
from medclr.train import warm_start
from medclr.train.arco import sampling as pixel_sampling
from medclr.train.arco import step as semi_steps

LOADABLE_PARTS = ("encoder", "decoder")
LABELED_FILE = "labeled.json"


def validate_config(config):
  """Checks that fail fast, before any device work or training."""
  config_checks.check_common_config(config, "crop_size")
  dice_weight = config.loss.dice_weight
  if not (math.isfinite(dice_weight) and dice_weight >= 0):
    raise errors.ConfigError(
        f"config.loss.dice_weight={dice_weight}: must be a finite number "
        ">= 0")
  ema_decay = config.optim.get("ema_decay", 0.0)
  if not 0.0 <= ema_decay < 1.0:
    raise errors.ConfigError(
        f"config.optim.ema_decay={ema_decay}: must be in [0, 1) (0: "
        "evaluate the trained weights themselves)")
  if config.data.patch_sampling not in pipeline.PATCH_SAMPLING:
    raise errors.ConfigError(
        f"config.data.patch_sampling={config.data.patch_sampling!r}: must be "
        f"one of {pipeline.PATCH_SAMPLING}")
  for part in warm_start.load_parts(config.init):
    if part not in LOADABLE_PARTS:
      raise errors.ConfigError(
          f"config.init.load={config.init.load!r}: parts must be among "
          f"{LOADABLE_PARTS}")
  for part in warm_start.frozen_parts(config.init):
    if part not in LOADABLE_PARTS + ("head",):
      raise errors.ConfigError(
          f"config.init.freeze={config.init.freeze!r}: parts must be among "
          f"{LOADABLE_PARTS + ('head',)}")
  if config.init.get("freeze_steps", 0) < -1:
    raise errors.ConfigError(
        f"config.init.freeze_steps={config.init.freeze_steps}: must be >= 0, "
        "or -1 for the whole run")
  validate_semi(config)
  inference.check_scales(config.eval.get("scales", "1"))
  if config.init.pretrain_dir:
    # Fails now, naming the directory, rather than after data loading.
    checkpointing.saved_tree_shapes(
        config.init.pretrain_dir,
        warm_start.pretrained_checkpoint_step(config.init))


SEMI_MODES = ("", "arco")


def semi_enabled(config):
  return bool(config.get("semi") and config.semi.mode)


def validate_semi(config):
  """Checks of `config.semi` (see configs/finetune_unet.py)."""
  if "semi" not in config:
    return
  semi = config.semi
  if semi.mode not in SEMI_MODES:
    raise errors.ConfigError(
        f"config.semi.mode={semi.mode!r}: expected one of {SEMI_MODES}")
  if not semi.mode:
    return
  checks = [
      ("teacher_decay", 0.0 <= semi.teacher_decay < 1.0, "in [0, 1)"),
      ("confidence", 0.5 <= semi.confidence <= 1.0, "in [0.5, 1]"),
      ("temperature", semi.temperature > 0, "> 0"),
      ("sampler", semi.sampler in pixel_sampling.SAMPLERS,
       f"one of {pixel_sampling.SAMPLERS}"),
      ("num_queries", semi.num_queries >= 2 and semi.num_queries % 2 == 0,
       "an even number >= 2"),
      ("num_negatives", semi.num_negatives >= 2 and
       semi.num_negatives % 2 == 0, "an even number >= 2"),
      ("representation_dim", semi.representation_dim >= 1, ">= 1"),
      ("grid", semi.grid >= 1, ">= 1"),
      ("rampup_steps", semi.rampup_steps >= 0, ">= 0"),
  ]
  for key, ok, expected in checks:
    if not ok:
      raise errors.ConfigError(
          f"config.semi.{key}={semi[key]!r}: must be {expected}")
  if config.model.get("num_classes", 1) != 1:
    raise errors.ConfigError(
        "config.semi.mode='arco' supports binary segmentation only "
        f"(config.model.num_classes=1), got {config.model.num_classes}")
  if config.optim.get("ema_decay", 0.0):
    raise errors.ConfigError(
        "config.optim.ema_decay and config.semi.mode are exclusive: the "
        "semi-supervised run keeps its own EMA teacher")
  try:
    augment.get_spec(semi.strong_preset)
  except ValueError as e:
    raise errors.ConfigError(f"config.semi.strong_preset: {e}") from e


def model_config(config):
  """`config.model`, with the pixel embedding head semi-supervised
  training needs."""
  model_cfg = config.model.to_dict()
  if semi_enabled(config):
    model_cfg["representation_dim"] = config.semi.representation_dim
  return model_cfg


def check_aperture(config, source, indices):
  """Refuses FOV resampling of images that have no field of view (EM,
  endoscopy, MRI: their FOV mask is the whole frame), which it would blow
  up or shrink to the fundus diameter for no reason."""
  diameter = config.data.get("fov_diameter", 0)
  if diameter and all(np.asarray(source[i]["fov"]).all() for i in indices):
    raise errors.ConfigError(
        f"config.data.fov_diameter={diameter} resamples images by their "
        f"field of view, but the labelled images of {config.data.dataset}:"
        f"{config.data.train_split} have none (their FOV is the whole "
        "frame): pass --config.data.fov_diameter=0 to keep their resolution"
        + (", and --config.data.channels=rgb if their colour matters (the "
           "green channel alone is the fundus default)"
           if config.data.get("channels") == "green" else ""))


def labeled_subset(config, workdir, source):
  """The labelled images: `data.labeled` names, else k drawn by seed.

  Writes their stems to `<workdir>/labeled.json` (any epath: a local
  directory or gs://...) and prints them.
  """
  names = [n.strip() for n in config.data.labeled.split(",") if n.strip()]
  if names:
    indices = pipeline.labeled_by_name(source, names)
  else:
    indices = pipeline.choose_labeled(source, config.data.num_labeled,
                                      config.data.label_seed,
                                      key="config.data.num_labeled")
  pipeline.check_mask_classes(
      source, indices, config.model.get("num_classes", 1),
      f"{config.data.dataset}:{config.data.train_split}")
  check_aperture(config, source, indices)
  stems = data_sources.stems(source)
  chosen = [stems[i] for i in indices]
  if jax.process_index() == 0:
    # Through epath, so a gs://bucket/run workdir works.
    root = epath.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    (root / LABELED_FILE).write_text(json.dumps(
        {"dataset": config.data.dataset,
         "seed": None if names else config.data.label_seed,
         "stems": chosen}, indent=2))
    print(f"fine-tuning on {len(chosen)} labelled "
          f"{config.data.dataset}:{config.data.train_split} images: "
          f"{', '.join(chosen)}", flush=True)
  return indices


def make_preprocess(config, workdir, source, indices):
  """The run's `Preprocess`, with its labelled images' FOV diameter (for
  test-time scales), saved to the workdir for evaluation."""
  spec = preprocess.build(config.data, [source]) or preprocess.from_config(
      config.data)
  fovs = [np.asarray(source[i]["fov"]) for i in indices]
  spec = dataclasses.replace(
      spec, train_fov_diameter=preprocess.median_fov_diameter(fovs))
  if jax.process_index() == 0:
    preprocess.save(workdir, spec)
  return spec


def make_data_iter(config, workdir, local_batch):
  data_prepare.ensure_phantom(config.data.data_dir, [config.data.dataset])
  source = data_sources.open_split(config.data.data_dir, config.data.dataset,
                                   config.data.train_split)
  indices = labeled_subset(config, workdir, source)
  kwargs = dict(
      indices=indices, crop_size=config.data.crop_size,
      in_channels=config.data.in_channels, local_batch=local_batch,
      seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count(),
      worker_count=config.data.worker_count,
      preprocess=make_preprocess(config, workdir, source, indices),
      patch_sampling=config.data.patch_sampling)
  where = (config.data.data_dir, config.data.dataset, config.data.train_split)
  if not semi_enabled(config):
    return iter(pipeline.finetune_dataset(*where, **kwargs))
  unlabeled = [i for i in range(len(source)) if i not in set(indices)]
  if jax.process_index() == 0:
    print(f"semi-supervised: {len(unlabeled)} unlabelled "
          f"{config.data.dataset}:{config.data.train_split} images",
          flush=True)
  return iter(pipeline.semi_supervised_dataset(
      *where, unlabeled_indices=unlabeled, **kwargs))


def make_step(config, graphdef, tx, lr_fn, spec):
  """The run's fine-tuning step (loss weights, weight average, freezing)."""
  if semi_enabled(config):
    return semi_steps.make_semi_step(
        graphdef, tx, lr_fn, spec, config.seed,
        semi_steps.spec_from_config(config.semi),
        dice_weight=config.loss.dice_weight,
        frozen=warm_start.frozen_parts(config.init),
        freeze_steps=config.init.get("freeze_steps", 0))
  return steps.make_finetune_step(
      graphdef, tx, lr_fn, spec, config.seed,
      dice_weight=config.loss.dice_weight,
      ema_decay=config.optim.get("ema_decay", 0.0),
      frozen=warm_start.frozen_parts(config.init),
      freeze_steps=config.init.get("freeze_steps", 0))


class FineTuning(trainer.Phase):
  """The U-Net on `config.data.num_labeled` labelled images (and, with
  `config.semi`, the unlabelled rest)."""

  name = "finetune"

  def __init__(self, config, workdir):
    self.config = config
    self.workdir = workdir
    self.model_cfg = model_config(config)
    self.spec = augment.get_spec(config.augment.preset,
                                 config.augment.strength)

  def data_iter(self, local_batch):
    return make_data_iter(self.config, self.workdir, local_batch)

  def make_model(self, rngs):
    return models.make_unet(self.model_cfg, rngs)

  def make_aux(self):
    if self.config.optim.get("ema_decay", 0.0):
      return lambda params, _: {"ema_params": params}
    if semi_enabled(self.config):
      return lambda params, _: {"teacher": params}
    return None

  def make_step(self, graphdef, tx, lr_fn):
    return make_step(self.config, graphdef, tx, lr_fn, self.spec)

  def warm_start(self, state, abstract):
    if self.config.init.pretrain_dir:
      state, _ = warm_start.init_from_pretrained(state, abstract,
                                                 self.config.init)
    return state


def train_and_evaluate(config, workdir):
  """Fine-tunes the U-Net into `workdir`. Returns the last logged metrics."""
  validate_config(config)
  return trainer.train(config, workdir, FineTuning(config, workdir))
