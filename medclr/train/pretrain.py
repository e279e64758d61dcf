"""Contrastive pretraining loop: `train_and_evaluate(config, workdir)`.

Mesh -> data -> model/optimiser (shapes first, materialised replicated) ->
restore-or-init -> jitted donated step -> loop with logging and checkpoints.
"""
from absl import logging
import jax

from medclr import checkpointing
from medclr.train import config_checks
from medclr.data import contrastive_crop
from medclr import errors
from medclr.evaluate import guard
from medclr.train import loop
from medclr import methods
from medclr import metric_writer
from medclr import optim
from medclr.evaluate import probe
from medclr import sharding
from medclr.train import steps
from medclr.train import warm_start
from medclr.data import preprocess
from medclr.data import sources as data_sources


def validate_config(config):
  """Checks that fail fast, before any device work or data reading."""
  methods.method_class(config.method)  # unknown names list the known ones
  config_checks.check_common_config(config, "image_size")
  crops = config.data.get("crops", "host")
  if crops not in ("host", "device"):
    raise errors.ConfigError(
        f"config.data.crops={crops!r}: expected 'host' (Grain cuts the views)"
        " or 'device' (the step cuts them from whole images)")
  canvas = config.data.get("crop_canvas", 0)
  if not isinstance(canvas, int) or canvas < 0:
    raise errors.ConfigError(
        f"config.data.crop_canvas={canvas!r}: expected an integer >= 0 (0: "
        "chosen from the view size and the smallest crop area)")


def uses_contrastive_crop(config):
  crop = config.get("crop")
  return crop is not None and crop.mode == "ccrop"


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
          f"config.data.crops='device': method {config.method!r} makes its "
          f"own host crops ({method.host_pipeline!r} pipeline); device crops "
          "work with the methods declaring device_crops: "
          f"{methods.supporting('device_crops')}")
    if boxes is not None:
      raise errors.ConfigError(
          "config.data.crops='device' with config.crop.mode='ccrop': "
          "ContrastiveCrop places its crops on the host; use "
          "config.data.crops='host'")
  if boxes is None:
    return method.host_dataset(config, local_batch), opened
  if not method.contrastive_crop:
    raise errors.ConfigError(
        f"config.crop.mode='ccrop': method {config.method!r} makes its own "
        "host crops; ContrastiveCrop works with the methods declaring "
        f"contrastive_crop: {methods.supporting('contrastive_crop')}")
  return method.host_dataset(config, local_batch, boxes=boxes,
                             crop_alpha=config.crop.alpha), opened


def contrastive_crop_controller(config, graphdef, dataset, opened, table,
                                checkpointer, start, writer):
  """ContrastiveCrop's localisation schedule, boxes restored on resume."""
  if start is not None:
    saved = checkpointer.restore_extras(start)
    if saved and "ccrop" in saved:
      table.load_json(saved["ccrop"])
  loc_size = config.crop.loc_size or config.data.image_size
  images = contrastive_crop.pool_images(opened, loc_size,
                                        config.data.in_channels)
  return contrastive_crop.Controller(config.crop, graphdef, images, dataset,
                                     table, writer)


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


def train_and_evaluate(config, workdir):
  """Pretrains `config.method` into `workdir`; resumes if it has checkpoints.

  Returns:
    The last logged metrics (dict of floats).
  """
  validate_config(config)
  config_dict = config.to_dict()
  checkpointing.check_same_run(workdir, config_dict)
  mesh = sharding.make_mesh(config.mesh.data)
  local_batch = sharding.check_batch_size(config.batch_size, mesh)
  method = methods.get_method(config)
  table = box_table(config) if uses_contrastive_crop(config) else None
  dataset, opened = make_dataset(config, local_batch, method, table)
  # Written only after the checks above: a refused run leaves no workdir.
  if jax.process_index() == 0:
    checkpointing.write_config(workdir, config_dict)
  data_iter = iter(dataset)
  tx, lr_fn = optim.make_optimizer(config.optim, config.num_steps,
                                   config.batch_size)

  with jax.set_mesh(mesh):
    graphdef, abstract, init_fn = loop.init_state(
        method.make_model, tx, mesh, config.seed, method.init_aux)
    checkpointer = checkpointing.Checkpointer(
        workdir, save_every=config.checkpoint_every,
        keep=config.keep_checkpoints, async_save=config.async_checkpoints)
    state, start = loop.restore_or_init(checkpointer, abstract, init_fn,
                                        data_iter)
    if start is None:
      state = warm_started(state, abstract, config)
    # Donate the state: its buffers become the next state's (no second copy).
    p_step = jax.jit(make_step(config, graphdef, tx, lr_fn, method),
                     donate_argnums=0)
    writer = metric_writer.MetricWriter(
        workdir, enabled=jax.process_index() == 0,
        total_steps=config.num_steps, name="pretrain",
        drop_after=-1 if start is None else start)
    logging.info("pretraining %s for %d steps, global batch %d on %d devices",
                 config.method, config.num_steps, config.batch_size,
                 mesh.devices.size)
    hooks = {"probe": make_probe(config, graphdef),
             "guard": guard.Guard(guard.Limits.from_config(config), workdir,
                                  write=jax.process_index() == 0)}
    if table is not None:
      controller = contrastive_crop_controller(
          config, graphdef, dataset, opened, table, checkpointer, start,
          writer)
      hooks.update(before_step=controller.before_step,
                   extras_fn=lambda: {"ccrop": table.to_json()})
    try:
      state, last = loop.run_loop(
          config=config, workdir=workdir, state=state, start_step=start or 0,
          p_step=p_step, data_iter=data_iter, mesh=mesh,
          checkpointer=checkpointer, writer=writer, config_dict=config_dict,
          **hooks)
    finally:
      checkpointer.close()
      writer.close()
  return last
