"""Pretraining methods as plug-ins of one train step.

A method is a module with a `Method` subclass instance registered here. The
generic step (`steps.make_pretrain_step`) owns what all methods share:
device augmentation keys, the optimizer update, BatchNorm statistics,
donation and sharding. A method only says what is special about it:

  make_model(rngs)          the trainable (online) model; holds `encoder`
                            so its weights hand over to the U-Net by path.
  init_aux(params, stats)   non-parameter state kept in the train state and
                            checkpointed: EMA targets, queues, centres, banks.
  device_views(key, batch)  the views from the host crops (dm-pix on device).
  loss(model, aux, views, step) -> (loss, (aux, metrics))
                            inside jit, differentiated w.r.t. the model.
  update_aux(aux, params, batch_stats, step) -> aux
                            after the optimizer step (e.g. EMA updates).
"""
import importlib

from medclr import augment

# name -> module path; each module exposes `make(config) -> Method`.
REGISTRY = {
    "simclr": "medclr.methods.simclr",
}


class Method:
  """Base class with the defaults most contrastive methods use."""

  name = "base"

  def __init__(self, config):
    self.config = config
    self.spec = augment.get_spec(config.augment.preset,
                                 config.augment.strength)

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


def get_method(config):
  """The `Method` for `config.method`; unknown names list the known ones."""
  name = config.method
  if name not in REGISTRY:
    raise ValueError(f"config.method={name!r}: known methods are "
                     f"{sorted(REGISTRY)}")
  return importlib.import_module(REGISTRY[name]).make(config)
