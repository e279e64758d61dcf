"""The training loop the pretraining and fine-tuning phases share.

State init on the devices, resume-or-init, and the step / log / checkpoint /
preempt loop. Sits above steps.py because it touches the host (data,
checkpoints, logging); phase-specific wiring lives in pretrain.py and
finetune.py. What it guarantees: docs/reliability.md.
"""
import signal
import threading
import time

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from medclr import checkpointing
from medclr import errors
from medclr import models
from medclr import sharding
from medclr.train import steps


def init_state(make_model, tx, mesh, seed, make_aux=None):
  """Builds the model and a replicated train state directly on the devices.

  Shapes first, then one jitted init whose outputs are placed replicated, so
  nothing is built on one device and copied (big_vision / maxtext pattern).

  Args:
    make_model: rngs -> NNX model.
    tx: optax transformation.
    mesh: the run's mesh.
    seed: parameter initialisation seed.
    make_aux: optional (params, batch_stats) -> a method's extra state.

  Returns:
    (graphdef, abstract_state, init_fn) where init_fn() materialises the state.
  """
  def init():
    model = make_model(nnx.Rngs(seed))
    _, params, batch_stats = models.split_model(model)
    aux = None if make_aux is None else make_aux(params, batch_stats)
    return steps.init_state(params, batch_stats, tx, aux)

  graphdef = nnx.graphdef(nnx.eval_shape(lambda: make_model(nnx.Rngs(seed))))
  repl = sharding.replicated(mesh)
  abstract = jax.eval_shape(init)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), abstract)
  init_fn = jax.jit(init, out_shardings=jax.tree.map(lambda _: repl, abstract))
  return graphdef, abstract, init_fn


def restore_or_init(checkpointer, abstract, init_fn, data_iter):
  """Resume order: (1) the workdir's newest readable checkpoint, (2) a fresh
  state.

  A step that fails to read is named in a warning and the next older one is
  tried. Once an older one restores (so the code and model fit, and the
  fault is the newer step's own), each failed step is renamed to
  `<step>.unreadable` (kept for the user, never deleted), so the resumed run
  can save that step number again.

  Raises:
    checkpointing.CheckpointError: no checkpoint could be read (then nothing
      is renamed: the cause may be this code rather than the files).
  """
  failed = []
  for step in reversed(checkpointer.all_steps()):
    try:
      state = checkpointer.restore(step, abstract, data_iter)
    except checkpointing.UnreadableCheckpoint as e:
      logging.warning("%s; trying the previous checkpoint", e)
      failed.append(e)
      continue
    for failure in failed:
      moved = checkpointer.set_aside(failure.step)
      logging.warning("resuming from step %d instead of %d: %s is unreadable "
                      "(%s); it is kept as %s", step, failure.step,
                      failure.path, failure.reason, moved)
    if jax.process_index() == 0:  # progress, so on the console
      print(f"resuming from step {step}", flush=True)
    return state, step
  if failed:
    raise checkpointing.CheckpointError(
        f"no checkpoint in {checkpointer.directory} could be read:\n  " +
        "\n  ".join(str(e) for e in failed) + "\nNothing was renamed or "
        "deleted. If the config or medclr changed, use a new --workdir; if "
        "the files are damaged, move these step directories away to start "
        "over.")
  return init_fn(), None


def to_host_scalars(metrics):
  return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}


@jax.jit
def _all_finite(params):
  return jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))


def params_finite(state):
  """True when every parameter is finite (one host sync).

  One jitted program per parameter tree: op by op, it compiled two small
  programs per distinct leaf shape at a run's first checkpoint.
  """
  return bool(_all_finite(state["params"]))


def diverged(message, checkpointer):
  """errors.Diverged naming the last good checkpoint, which is kept."""
  latest = checkpointer.latest_step()
  # The same command would replay the same steps into the same divergence,
  # and a resume under other settings is refused (check_same_run).
  where = ("no checkpoint was saved yet" if latest is None else
           f"the last good checkpoint, step {latest} "
           f"({checkpointer.directory / str(latest)}), is kept; re-running "
           "the same command diverges again, so change the settings in a new "
           "--workdir")
  return errors.Diverged(f"{message}; {where}")


class Preemption:
  """Stops the loop on SIGTERM (what a preemption sends) at a step every
  process agrees on.

  Several processes: jax.distributed's preemption service catches SIGTERM
  itself (a Python handler would replace it) and Orbax's
  `reached_preemption` names the same step on every process. One process
  has no such service (JAX starts it only with jax.distributed), and SIGTERM
  would kill the run: a handler, installed for the loop's duration, sets a
  flag the loop reads after each step.
  """

  def __init__(self, checkpointer):
    self._checkpointer = checkpointer
    self.signalled = False
    self._previous = None
    self._installed = False

  def __enter__(self):
    if (jax.process_count() == 1 and
        threading.current_thread() is threading.main_thread()):
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self.signalled = True

  def __exit__(self, *exc):
    if self._installed:
      # None: the old handler was not set from Python; the default then.
      signal.signal(signal.SIGTERM, self._previous if self._previous
                    is not None else signal.SIG_DFL)
    return False

  def reached(self, step):
    """True once the run should save `step` and stop."""
    return self._checkpointer.reached_preemption(step) or self.signalled


def _log_step(done, metrics, state, num_steps, writer, checkpointer, guard,
              probe):
  """Logs step `done` (probe, guard, finite check); returns the row."""
  last = to_host_scalars(metrics)
  if probe is not None and probe.due(done, num_steps):
    last.update(probe(state))
  report = guard.observe(done, last) if guard is not None else None
  try:
    writer.write(done, last, check_finite=True)
  except FloatingPointError as e:
    raise diverged(str(e), checkpointer) from e
  writer.progress(done, last)
  if report:
    guard.act(report, checkpointer.latest_step())
  return last


def _announce_preemption(checkpointer, done, num_steps):
  # On disk before the line says so (and before a second signal or the end
  # of the grace period).
  checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    print(f"preempted (SIGTERM): stopped after step {done} of {num_steps}; "
          f"saved {checkpointer.directory}/{done}. Run the same command "
          "again to resume.", flush=True)


def run_loop(*, config, workdir, state, start_step, p_step, learning_rates,
             data_iter, mesh, checkpointer, writer, config_dict,
             before_step=None, extras_fn=None, guard=None, probe=None):
  """The training loop both phases share: step, log, checkpoint, preempt.

  Args:
    p_step: (state, batch, learning rate) -> (state, metrics), jitted.
    learning_rates: the learning rate of every step (host array).
    before_step: optional (step, state, data_iter) -> data_iter, called
      before each step (ContrastiveCrop localisation may rebuild the
      iterator).
    extras_fn: optional () -> JSON-able dict saved with each checkpoint.
    guard: optional `guard.Guard`: adds diagnostic ratios to each logged row
      and warns or stops when the run sits at chance or collapses.
    probe: optional `probe.OnlineProbe`: its accuracy is logged at step 0
      (a fresh run, before any update) and with every row it is due at.
    (the rest: the run's pieces, as built by pretrain.py / finetune.py)

  Returns:
    (final state, last logged metrics dict).
  """
  last = {}
  step = start_step
  t0 = time.time()
  if probe is not None and start_step == 0:
    writer.write(0, probe(state))
  with Preemption(checkpointer) as preemption:
    for step in range(start_step, config.num_steps):
      if before_step is not None:
        data_iter = before_step(step, state, data_iter)
      batch = sharding.to_global(next(data_iter), mesh)
      state, metrics = p_step(state, batch, learning_rates[step])
      done = step + 1
      if guard is not None and step == 0:
        guard.set_reference(to_host_scalars(metrics))  # before any update
      if done % config.log_every == 0 or done == config.num_steps:
        last = _log_step(done, metrics, state, config.num_steps, writer,
                         checkpointer, guard, probe)
      preempted = preemption.reached(done) and done < config.num_steps
      force = preempted or done == config.num_steps
      if (force or checkpointer.should_save(done)) and not params_finite(
          state):
        # Never let a diverged state replace the last good checkpoint.
        raise diverged(f"non-finite parameters after step {done}; training "
                       "diverged (lower the learning rate, or check the "
                       "inputs)", checkpointer)
      checkpointer.save(done, state, data_iter, config_dict, force=force,
                        extras=extras_fn() if extras_fn else None)
      if preempted:
        _announce_preemption(checkpointer, done, config.num_steps)
        break
    # A SIGTERM while the last save is written (still caught here) does not
    # cut it short.
    checkpointer.wait_until_finished()
  logging.info("trained steps %d..%d in %.1fs", start_step, step + 1,
               time.time() - t0)
  return state, last
