"""The trainer setup that pretraining and fine-tuning share.

`train(config, workdir, phase)` reads top to bottom: same-run check, mesh,
batch check, data, config write, optimiser, state (shapes first, then
restore or init, then the phase's warm start), the jitted step with its
state donated, the metric writer, and the loop. A `Phase` supplies only what
differs: its data, model, extra state, step and loop hooks.
"""
import collections
import dataclasses
import json
from typing import Any

from absl import logging
import jax

from medclr import checkpointing
from medclr import metric_writer
from medclr import optim
from medclr import sharding
from medclr.train import loop
from medclr.train import renames


@dataclasses.dataclass(frozen=True)
class Run:
  """What a phase's loop hooks may need once the state exists."""
  graphdef: Any
  checkpointer: checkpointing.Checkpointer
  start: int | None  # the restored step; None for a fresh run
  writer: metric_writer.MetricWriter


class Phase:
  """One training phase: the parts that differ between phases."""

  name = "train"

  def data_iter(self, local_batch):
    """This process's batches. Called before anything is written."""
    raise NotImplementedError

  def make_model(self, rngs):
    raise NotImplementedError

  def make_aux(self):
    """`(params, batch_stats) -> extra state`, or None for no extra state."""
    return None

  def make_step(self, graphdef, tx, lr_fn):
    """The un-jitted `(state, batch) -> (state, metrics)` step."""
    raise NotImplementedError

  def warm_start(self, state, abstract):
    """A fresh (not resumed) state with another run's weights loaded."""
    del abstract
    return state

  def hooks(self, run: Run) -> dict[str, Any]:
    """Extra keyword arguments of `loop.run_loop` (probe, guard, ...)."""
    del run
    return {}


# Settings that never reach a program: how often to log and checkpoint.
CADENCE = ("log_every", "checkpoint_every", "keep_checkpoints",
           "async_checkpoints")
# The jitted init and step of this process's last runs, by what their
# programs depend on (`program_key`): a run with the same settings (a
# resumed run, a notebook cell run again) reuses them instead of tracing
# and lowering them again.
_PROGRAMS = collections.OrderedDict()
_KEEP_PROGRAMS = 8


def program_key(phase, config_dict):
  """The phase and method classes and every setting but the cadence."""
  settings = {k: v for k, v in config_dict.items() if k not in CADENCE}
  return (type(phase), type(getattr(phase, "method", None)),
          json.dumps(settings, sort_keys=True, default=repr))


def reused(key, build):
  """`build()`, or what it returned for `key` in one of the last runs."""
  if key not in _PROGRAMS:
    _PROGRAMS[key] = build()
    while len(_PROGRAMS) > _KEEP_PROGRAMS:
      _PROGRAMS.popitem(last=False)
  _PROGRAMS.move_to_end(key)
  return _PROGRAMS[key]


def jit_step(phase, graphdef, config):
  """`(state, batch, lr) -> (state, metrics)`: the phase's step, jitted
  with the learning rate as an argument and the state donated.

  The loop passes the schedule's value (`optim.schedule_values`, computed
  once on the host), so the step's program does not depend on the
  learning-rate schedule (base rate, warm-up, run length): runs that differ
  only there share one compiled step through XLA's compilation cache (e.g.
  a run resumed to train longer). The optimiser state is the one the
  schedule itself gives (`optim.transformation`).
  """
  def step(state, batch, lr):
    tx = optim.transformation(config.optim, config.num_steps,
                              lambda count: lr)
    return phase.make_step(graphdef, tx, lambda step: lr)(state, batch)

  # Donate the state: its buffers become the next state's (no second copy).
  return jax.jit(step, donate_argnums=0)


def train(config, workdir, phase: Phase):
  """Trains `phase` into `workdir`; resumes if it has checkpoints.

  Returns:
    The last logged metrics (dict of floats).
  """
  config_dict = config.to_dict()
  # Before anything is written: a refused run leaves no workdir behind.
  checkpointing.check_same_run(workdir, config_dict,
                               rename=renames.current_key)
  mesh = sharding.make_mesh(config.mesh.data)
  local_batch = sharding.check_batch_size(config.batch_size, mesh)
  data_iter = phase.data_iter(local_batch)
  if jax.process_index() == 0:
    checkpointing.write_config(workdir, config_dict)
  tx, lr_fn = optim.make_optimizer(config.optim, config.num_steps,
                                   config.batch_size)
  learning_rates = optim.schedule_values(lr_fn, config.num_steps)
  key = program_key(phase, config_dict)
  with jax.set_mesh(mesh):
    graphdef, abstract, init_fn = reused(("init", key, mesh), lambda: (
        loop.init_state(phase.make_model, tx, mesh, config.seed,
                        phase.make_aux())))
    checkpointer = checkpointing.Checkpointer(
        workdir, save_every=config.checkpoint_every,
        keep=config.keep_checkpoints, async_save=config.async_checkpoints)
    state, start = loop.restore_or_init(checkpointer, abstract, init_fn,
                                        data_iter)
    if start is None:
      state = phase.warm_start(state, abstract)
    p_step = reused(("step", key, graphdef),
                    lambda: jit_step(phase, graphdef, config))
    writer = metric_writer.MetricWriter(
        workdir, enabled=jax.process_index() == 0,
        total_steps=config.num_steps, name=phase.name,
        drop_after=-1 if start is None else start)
    logging.info("%s: %d steps, global batch %d on %d devices", phase.name,
                 config.num_steps, config.batch_size, mesh.devices.size)
    try:
      state, last = loop.run_loop(
          config=config, workdir=workdir, state=state, start_step=start or 0,
          p_step=p_step, learning_rates=learning_rates,
          data_iter=data_iter, mesh=mesh,
          checkpointer=checkpointer, writer=writer, config_dict=config_dict,
          **phase.hooks(Run(graphdef, checkpointer, start, writer)))
    finally:
      checkpointer.close()
      writer.close()
  return last
