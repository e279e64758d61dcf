"""Pretraining methods as plug-ins of one train step.

May import: medclr infrastructure, data, augment, models, evaluate (guard).

A method is a module with a `Method` subclass instance registered here. The
generic step (`steps.make_pretrain_step`) owns what all methods share:
device augmentation keys, the optimizer update, BatchNorm statistics,
donation and sharding. A method only says what is special about it:

  prepare_data(config)      writes embedded/synthetic sets the run reads
                            (default: the phantom, if named in data.sources).
  host_dataset(config, local_batch, boxes=None, crop_alpha=1.0)
                            the Grain pipeline of host crops (default: two
                            random resized crops per image, `pretrain_dataset`;
                            `boxes` only when `contrastive_crop` is True).
  make_model(rngs)          the trainable (online) model; holds `encoder`
                            so its weights hand over to the U-Net by path.
  init_aux(params, stats)   non-parameter state kept in the train state and
                            checkpointed: EMA targets, queues, centres, banks.
  device_views(key, batch)  the views from the host crops (dm-pix on device);
                            with `data.crop_site='device'` the step first cuts
                            them from whole images (`crop_spec()`).
  loss(model, aux, views, step) -> (loss, (aux, metrics))
                            inside jit, differentiated w.r.t. the model.
  update_aux(aux, params, batch_stats, step) -> aux
                            after the optimizer step (e.g. EMA updates).
"""
import importlib

import jax

from medclr.augment import ops as augment
from medclr.augment import crops as device_crops
from medclr import errors
from medclr.data import pipeline
from medclr.data import prepare as data_prepare
from medclr.data import preprocess
from medclr.data import sources as data_sources

# name -> module path; each module exposes `make(config) -> Method`.
REGISTRY = {
    "simclr": "medclr.methods.simclr",
    "mocov2": "medclr.methods.moco",
    "adco": "medclr.methods.adco",
    "byol": "medclr.methods.byol",
    "dino": "medclr.methods.dino",
    "volume_supcon": "medclr.methods.volume_supcon",
    "chaitanya_local": "medclr.methods.chaitanya_local",
    "macl": "medclr.methods.macl",
    "dira": "medclr.methods.dira",
}


class Method:
  """Base class with the defaults most contrastive methods use."""

  name = "base"
  # Whether `host_dataset` takes ContrastiveCrop boxes (two-view methods do;
  # methods with their own host crops, DINO's multi-crop or volume slices,
  # do not).
  contrastive_crop = True
  # Whether the views come from the shared two-view pipeline, so their crops
  # can move onto the device (`config.data.crop_site='device'`).
  device_crops = True
  # Host crops per image: 1 for methods that view one crop twice.
  host_views = 2

  def __init__(self, config):
    self.config = config
    self.spec = augment.get_spec(config.augment.preset,
                                 config.augment.strength)

  def prepare_data(self, config):
    """Creates the embedded datasets `config.data.sources` names, if absent."""
    names = [name for name, _ in
             data_sources.parse_sources(config.data.sources)]
    data_prepare.ensure_phantom(config.data.data_dir, names)

  def host_dataset(self, config, local_batch, boxes=None, crop_alpha=1.0):
    """Grain IterDataset of host crops for this process (see module doc).

    `boxes`/`crop_alpha` switch the crops to ContrastiveCrop (see
    `medclr.data.contrastive_crop`); methods with their own host pipeline do not
    take them.
    """
    return pipeline.pretrain_dataset(
        config.data.data_dir, config.data.sources,
        image_size=config.data.image_size,
        in_channels=config.data.in_channels, area=self.spec.crop_area,
        aspect=self.spec.crop_aspect, local_batch=local_batch,
        seed=config.seed, process_index=jax.process_index(),
        process_count=jax.process_count(),
        worker_count=config.data.worker_count, boxes=boxes,
        crop_alpha=crop_alpha, preprocess=pretrain_preprocess(config),
        device_crops=self.canvas_side() if uses_device_crops(config) else 0,
        num_views=self.host_views)

  def crop_spec(self):
    """The device crops' `CropSpec` (`config.data.crop_site='device'`)."""
    return device_crops.CropSpec(self.config.data.image_size,
                                 tuple(self.spec.crop_area),
                                 tuple(self.spec.crop_aspect))

  def canvas_side(self):
    """Side of the canvas the host fits each image into for device crops."""
    return device_crops.canvas_side(self.config.data.image_size,
                                    self.spec.crop_area,
                                    self.config.data.get("crop_canvas", 0))

  def make_model(self, rngs):
    raise NotImplementedError

  def init_aux(self, params, batch_stats):
    del params, batch_stats  # no extra state by default
    return {}

  def device_views(self, key, batch):
    return list(augment.two_views(key, batch["view1"], batch["view2"],
                                  self.spec))

  def loss(self, model, aux, views, step):
    raise NotImplementedError

  def update_aux(self, aux, params, batch_stats, step):
    del params, batch_stats, step
    return aux


def uses_device_crops(config):
  """Whether `config.data.crop_site` moves the two-view crops onto the
  device."""
  return config.data.get("crop_site", "host") == "device"


def pretrain_preprocess(config):
  """The pool's `Preprocess` (normalisation, FOV scale), or None."""
  return preprocess.build(
      config.data, data_sources.open_sources(config.data.data_dir,
                                             config.data.sources))


def get_method(config):
  """The `Method` for `config.method`; unknown names list the known ones."""
  name = config.method
  if name not in REGISTRY:
    raise errors.ConfigError(
        f"config.method={name!r}: known methods are "
        f"{sorted(REGISTRY)}")
  return importlib.import_module(REGISTRY[name]).make(config)
