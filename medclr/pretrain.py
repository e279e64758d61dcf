"""Contrastive pretraining loop: `train_and_evaluate(config, workdir)`.

Mesh -> data -> model/optimiser (shapes first, materialised replicated) ->
restore-or-init -> jitted donated step -> loop with logging and checkpoints.
"""
from absl import logging
import jax

from medclr import augment
from medclr import checkpointing
from medclr import errors
from medclr import methods
from medclr import metric_writer
from medclr import optim
from medclr import sharding
from medclr import steps
from medclr import train_utils
from medclr.data import sources as data_sources


def validate_config(config):
  """Checks that fail fast, before any device work or data reading."""
  if config.method not in methods.REGISTRY:
    raise errors.ConfigError(f"config.method={config.method!r}: known methods "
                             f"are {sorted(methods.REGISTRY)}")
  try:
    augment.get_spec(config.augment.preset, config.augment.strength)
  except ValueError as e:
    raise errors.ConfigError(f"config.augment: {e}") from e
  if config.model.in_channels != config.data.in_channels:
    raise errors.ConfigError(
        f"config.model.in_channels={config.model.in_channels} differs from "
        f"config.data.in_channels={config.data.in_channels}")
  levels = len(config.model.widths)
  if config.data.image_size % 2 ** (levels - 1):
    raise errors.ConfigError(
        f"config.data.image_size={config.data.image_size} must be divisible "
        f"by 2**{levels - 1} for a {levels}-level encoder")
  if config.num_steps < 1:
    raise errors.ConfigError(
        f"config.num_steps={config.num_steps}: must be >= 1")


def make_data_iter(config, local_batch, method):
  """The method's Grain iterator over the unlabelled pool, this process's part."""
  names = [s.split(":")[0] for s in config.data.sources.split(",") if s]
  train_utils.ensure_phantom(config.data.data_dir, names)
  # Opening the sources here raises a clear error naming a missing dataset.
  data_sources.open_sources(config.data.data_dir, config.data.sources)
  return iter(method.host_dataset(config, local_batch))


def train_and_evaluate(config, workdir):
  """Pretrains `config.method` into `workdir`; resumes if it has checkpoints.

  Returns:
    The last logged metrics (dict of floats).
  """
  validate_config(config)
  config_dict = config.to_dict()
  if jax.process_index() == 0:
    checkpointing.write_config(workdir, config_dict)
  mesh = sharding.make_mesh(config.mesh.data)
  local_batch = sharding.check_batch_size(config.batch_size, mesh)
  method = methods.get_method(config)
  data_iter = make_data_iter(config, local_batch, method)
  tx, lr_fn = optim.make_optimizer(config.optim, config.num_steps,
                                   config.batch_size)

  with jax.set_mesh(mesh):
    graphdef, abstract, init_fn = train_utils.init_state(
        method.make_model, tx, mesh, config.seed, method.init_aux)
    checkpointer = checkpointing.Checkpointer(
        workdir, save_every=config.checkpoint_every,
        keep=config.keep_checkpoints, async_save=config.async_checkpoints)
    state, start = train_utils.restore_or_init(checkpointer, abstract, init_fn,
                                               data_iter)
    step_fn = steps.make_pretrain_step(graphdef, tx, lr_fn, method,
                                       config.seed)
    # Donate the state: its buffers become the next state's (no second copy).
    p_step = jax.jit(step_fn, donate_argnums=0)
    writer = metric_writer.MetricWriter(
        workdir, enabled=jax.process_index() == 0,
        total_steps=config.num_steps, name="pretrain")
    logging.info("pretraining %s for %d steps, global batch %d on %d devices",
                 config.method, config.num_steps, config.batch_size,
                 mesh.devices.size)
    try:
      state, last = train_utils.run_loop(
          config=config, workdir=workdir, state=state, start_step=start or 0,
          p_step=p_step, data_iter=data_iter, mesh=mesh,
          checkpointer=checkpointer, writer=writer, config_dict=config_dict)
    finally:
      checkpointer.close()
      writer.close()
  return last
