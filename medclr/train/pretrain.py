"""Contrastive pretraining loop: `train_and_evaluate(config, workdir)`.

`Pretraining` is the phase `trainer.train` runs: the method's data, model,
extra state and step, with the online probe, the collapse guard and
ContrastiveCrop's box updates as loop hooks.
"""
import jax

from medclr import errors
from medclr import methods
from medclr.data import contrastive_crop
from medclr.data import preprocess
from medclr.data import sources as data_sources
from medclr.evaluate import guard
from medclr.evaluate import probe
from medclr.train import config_checks
from medclr.train import steps
from medclr.train import trainer
from medclr.train import warm_start


def validate_config(config):
  """Checks that fail fast, before any device work or data reading."""
  methods.method_class(config.method)  # unknown names list the known ones
  config_checks.check_common_config(config, "image_size")
  site = config.data.get("crop_site", "host")
  if site not in ("host", "device"):
    raise errors.ConfigError(
        f"config.data.crop_site={site!r}: expected 'host' (Grain cuts the "
        "views) or 'device' (the step cuts them from whole images)")
  canvas = config.data.get("crop_canvas", 0)
  if not isinstance(canvas, int) or canvas < 0:
    raise errors.ConfigError(
        f"config.data.crop_canvas={canvas!r}: expected an integer >= 0 (0: "
        "chosen from the view size and the smallest crop area)")


def uses_contrastive_crop(config):
  settings = config.get("contrastive_crop")
  return settings is not None and settings.mode == "ccrop"


def box_table(config):
  """ContrastiveCrop's box per pool image, all whole images to start."""
  return contrastive_crop.BoxTable(sum(
      data_sources.split_size(config.data.data_dir, *source)
      for source in data_sources.parse_sources(config.data.sources)))


def make_dataset(config, local_batch, method, boxes=None):
  """The method's Grain dataset over the unlabelled pool, this process's part.

  Returns:
    (dataset, the opened sources).
  """
  method.prepare_data(config)
  # Opening the sources here raises a clear error naming a missing dataset.
  opened = data_sources.open_sources(config.data.data_dir, config.data.sources)
  if methods.uses_device_crops(config):
    if not method.device_crops:
      raise errors.ConfigError(
          f"config.data.crop_site='device': method {config.method!r} makes its "
          f"own host crops ({method.host_pipeline!r} pipeline); device crops "
          "work with the methods declaring device_crops: "
          f"{methods.supporting('device_crops')}")
    if boxes is not None:
      raise errors.ConfigError(
          "config.data.crop_site='device' with "
          "config.contrastive_crop.mode='ccrop': "
          "ContrastiveCrop places its crops on the host; use "
          "config.data.crop_site='host'")
  if boxes is None:
    return method.host_dataset(config, local_batch), opened
  if not method.contrastive_crop:
    raise errors.ConfigError(
        f"config.contrastive_crop.mode='ccrop': method {config.method!r} "
        "makes its own host crops; ContrastiveCrop works with the methods "
        "declaring "
        f"contrastive_crop: {methods.supporting('contrastive_crop')}")
  return method.host_dataset(config, local_batch, boxes=boxes,
                             crop_alpha=config.contrastive_crop.alpha), opened


def contrastive_crop_controller(config, graphdef, dataset, opened, table,
                                checkpointer, start, writer):
  """ContrastiveCrop's localisation schedule, boxes restored on resume."""
  if start is not None:
    saved = checkpointer.restore_extras(start)
    if saved and "ccrop" in saved:
      table.load_json(saved["ccrop"])
  loc_size = config.contrastive_crop.loc_size or config.data.image_size
  images = contrastive_crop.pool_images(opened, loc_size,
                                        config.data.in_channels)
  return contrastive_crop.Controller(config.contrastive_crop, graphdef,
                                     images, dataset, table, writer)


def probe_set_of(config):
  """The probe patches of `config.probe`, normalised like the pool, or None."""
  return probe.build_probe_set(
      config.probe, config.data.data_dir, config.data.image_size,
      methods.pretrain_preprocess(config) or preprocess.from_config(
          config.data))


def make_probe(config, graphdef):
  """The online vessel/background probe of `config.probe`, or None."""
  if not config.probe.dataset:
    return None
  probe_set = probe_set_of(config)
  return probe.OnlineProbe(
      probe.make_probe_fn(graphdef, probe_set, config.probe.kind,
                         config.probe.k),
      config.probe.every)


def warm_started(state, abstract, config):
  """A fresh state with `config.init`'s parts loaded (a second stage)."""
  init_cfg = config.get("init")
  if init_cfg and init_cfg.pretrain_dir:
    state, _ = warm_start.init_from_pretrained(state, abstract, init_cfg)
  return state


def make_step(config, graphdef, tx, lr_fn, method):
  """The pretraining step, with `config.init`'s frozen parts."""
  init_cfg = config.get("init")
  return steps.make_pretrain_step(
      graphdef, tx, lr_fn, method, config.seed,
      frozen=warm_start.frozen_parts(init_cfg) if init_cfg else (),
      freeze_steps=init_cfg.get("freeze_steps", 0) if init_cfg else 0)


class Pretraining(trainer.Phase):
  """`config.method` on its unlabelled pool, with the probe and the guard."""

  name = "pretrain"

  def __init__(self, config, workdir):
    self.config = config
    self.workdir = workdir
    self.method = methods.get_method(config)
    self.table = box_table(config) if uses_contrastive_crop(config) else None
    self.dataset = self.opened = None

  def data_iter(self, local_batch):
    self.dataset, self.opened = make_dataset(self.config, local_batch,
                                             self.method, self.table)
    return iter(self.dataset)

  def make_model(self, rngs):
    return self.method.make_model(rngs)

  def make_aux(self):
    return self.method.init_aux

  def make_step(self, graphdef, tx, lr_fn):
    return make_step(self.config, graphdef, tx, lr_fn, self.method)

  def warm_start(self, state, abstract):
    return warm_started(state, abstract, self.config)

  def hooks(self, run):
    config = self.config
    hooks = {"probe": make_probe(config, run.graphdef),
             "guard": guard.Guard(guard.Limits.from_config(config),
                                  self.workdir,
                                  write=jax.process_index() == 0)}
    if self.table is not None:
      controller = contrastive_crop_controller(
          config, run.graphdef, self.dataset, self.opened, self.table,
          run.checkpointer, run.start, run.writer)
      hooks.update(before_step=controller.before_step,
                   extras_fn=lambda: {"ccrop": self.table.to_json()})
    return hooks


def train_and_evaluate(config, workdir):
  """Pretrains `config.method` into `workdir`; resumes if it has checkpoints.

  Returns:
    The last logged metrics (dict of floats).
  """
  validate_config(config)
  return trainer.train(config, workdir, Pretraining(config, workdir))
