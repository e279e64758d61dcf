"""What every launcher shares: distributed flags, start-up and clean errors.

A user error (bad data folder, missing checkpoint, invalid config value) is
printed as one line naming the file or key, without a Python traceback.
Library INFO logs (Orbax's per-save lines, XLA start-up) stay behind
`--verbosity=0`; the console shows progress lines, warnings and results.
"""
import importlib.util
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from medclr import checkpointing
from medclr import errors
from medclr import sharding
from medclr.data import readers

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 for a multi-process run (not needed on Cloud TPU)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "number of processes of the run")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")

USER_ERRORS = (errors.ConfigError, errors.TrainingStalled, errors.Diverged,
               readers.DataError, checkpointing.CheckpointError)


def start_distributed():
  sharding.maybe_initialize_distributed(_COORDINATOR.value,
                                        _NUM_PROCESSES.value, _PROCESS_ID.value)


# Exit status of a run the collapse guard stopped (`config.guard.mode=stop`),
# so a study can tell it from a failure.
EXIT_STALLED = 3


def run_user_errors_clean(fn, *args):
  """Calls fn(*args); a user error exits 1 (stalled: 3), message on stderr."""
  try:
    return fn(*args)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_STALLED if isinstance(e, errors.TrainingStalled) else 1)


def print_result(what, last, workdir, num_steps):
  """Prints '<what> done: {...}' when the run trained all `num_steps`.

  A run the training loop stopped early on SIGTERM returns normally (exit
  status 0) after printing its own 'preempted (SIGTERM): stopped after step
  N of M ...' line; its newest checkpoint is N < M, and nothing more is
  printed, so the last line says what happened. Returns whether the run
  finished.
  """
  latest = checkpointing.latest_complete_step(workdir)
  if latest is None or latest < num_steps:
    return False
  print(f"{what} done: {last}", flush=True)
  return True


def train_main(train_and_evaluate, what):
  """Defines --config and --workdir; returns a training launcher's main.

  Args:
    train_and_evaluate: (config, workdir) -> last logged metrics.
    what: 'pretraining' or 'fine-tuning', for help and the result line.
  """
  config = config_flags.DEFINE_config_file(
      "config", None, f"{what} config file", lock_config=True)
  workdir = flags.DEFINE_string("workdir", None,
                                "checkpoints, config and metrics go here")
  flags.mark_flags_as_required(["config", "workdir"])

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    run_user_errors_clean(start_distributed)
    last = run_user_errors_clean(train_and_evaluate, config.value,
                                 workdir.value)
    if jax.process_index() == 0:
      print_result(what, last, workdir.value, config.value.num_steps)

  return main


def check_config_argument(argv):
  """Exits 1 with one line when `--config=FILE:ARG` is refused by the file.

  absl would report the config file's ConfigError inside a flag-parsing
  traceback; a missing file is left to absl's own message.
  """
  for arg in argv[1:]:
    if not arg.startswith("--config="):
      continue
    path, _, config_arg = arg[len("--config="):].partition(":")
    if not os.path.isfile(path):
      return
    spec = importlib.util.spec_from_file_location("_checked_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
      spec.loader.exec_module(module)
      module.get_config(*([config_arg] if config_arg else []))
    except errors.ConfigError as e:
      print(f"error: --config={path}:{config_arg}: {e}", file=sys.stderr)
      sys.exit(1)


def run(main):
  """app.run with JAX's flags and library INFO logs behind --verbosity."""
  check_config_argument(sys.argv)
  jax.config.config_with_absl()

  def quiet_main(argv):
    # absl's app.run turns INFO on after parsing: undo it unless asked for.
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    return main(argv)

  app.run(quiet_main)
