"""The launchers' command line: distributed flags, start-up, clean errors.

A user error (a mistyped flag, unknown config key, bad data folder, missing
checkpoint, invalid config value) is printed as one `error:` line naming
the flag, file or key, without a Python traceback, and exits non-zero.
The console shows medclr's own lines (a start line, progress, warnings, an
end line naming every output); library logs (Orbax, TFDS, absl, JAX) go to
`log.txt` in the run's directory, and with `--verbosity=N` (absl's flag:
-1 warnings, 0 info, 1 debug) to stderr as well (`medclr.console`).

JAX, Orbax and the training code are imported after the flags are parsed
(in the functions that use them, `train_main` by module name, and
`launch.evaluate` in its main): a mistyped flag or config key is then
reported in a fraction of a second instead of after two seconds of imports.
"""
import gc
import importlib
import os
import sys

from absl import app
from absl import flags
from absl.logging import converter
from ml_collections import config_flags

from launch import flag_errors
from medclr import console
from medclr import errors

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 for a multi-process run (not needed on Cloud TPU)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "number of processes of the run")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")


def import_module(name):
  """`importlib.import_module(name)`, with Python's cyclic GC off meanwhile.

  What the launchers import late (JAX, Flax, Orbax, the training code)
  builds objects that live all run: collecting during the imports is
  wasted (about 0.2 of 1.5 CPU seconds), and frozen afterwards they stay
  out of the run's later collections.
  """
  gc.disable()
  try:
    return importlib.import_module(name)
  finally:
    gc.freeze()
    gc.enable()


def start_distributed():
  from medclr import sharding  # pylint: disable=g-import-not-at-top
  sharding.maybe_initialize_distributed(_COORDINATOR.value,
                                        _NUM_PROCESSES.value, _PROCESS_ID.value)


# Exit status of a run the collapse guard stopped (`config.guard.mode=stop`),
# so a study can tell it from a failure.
EXIT_STALLED = 3


def run_user_errors_clean(fn, *args):
  """Calls fn(*args); a user error exits 1 (stalled: 3), message on stderr."""
  try:
    return fn(*args)
  except errors.USER_ERRORS as e:
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
  from medclr import checkpointing  # pylint: disable=g-import-not-at-top
  latest = checkpointing.latest_complete_step(workdir)
  if latest is None or latest < num_steps:
    return False
  print(f"{what} done: {last}", flush=True)
  return True


def train_main(module, what):
  """Defines --config and --workdir; returns a training launcher's main.

  Args:
    module: name of the module whose `train_and_evaluate(config, workdir)`
      (-> last logged metrics) runs; imported once the flags are parsed.
    what: 'pretraining' or 'fine-tuning', for help and the result line.
  """
  config = config_flags.DEFINE_config_file(
      "config", None, f"{what} config file", lock_config=True)
  workdir = flags.DEFINE_string("workdir", None,
                                "checkpoints, config and metrics go here")
  flags.mark_flags_as_required(["config", "workdir"])

  def main(argv):
    del argv  # flag_errors.parse refuses positional arguments
    jax = import_module("jax")
    run_user_errors_clean(start_distributed)
    train = import_module(module).train_and_evaluate
    last = run_user_errors_clean(train, config.value, workdir.value)
    if jax.process_index() == 0 and print_result(
        what, last, workdir.value, config.value.num_steps):
      return workdir.value
    return None

  main.log_dir = lambda: workdir.value  # read by `run`
  return main


def _process_id():
  """This process's index as given (flag or environment), 0 if not given.

  Read before JAX starts: the log file and the start line come first.
  """
  given = _PROCESS_ID.value
  if given is None:
    given = os.environ.get("MEDCLR_PROCESS_ID") or 0
  # A malformed value is refused with its own message at start_distributed.
  return int(given) if str(given).isdigit() else 0


def _library_level():
  """The Python level of an explicit --verbosity (absl: -1 warnings, 0 info,
  1 debug), or None: library logs then stay in the log file."""
  verbosity = flags.FLAGS["verbosity"]
  if not verbosity.present:
    return None
  if verbosity.value > converter.ABSL_DEBUG:
    return converter.STANDARD_DEBUG - (verbosity.value - 1)
  return converter.absl_to_standard(max(verbosity.value, converter.ABSL_FATAL))


def _define_jax_flags_if_given(args):
  """JAX's own flags (`--jax_platforms=cpu`, `--jax_debug_nans`, ...) as
  absl flags, when the command line gives one: defining them imports JAX."""
  if any(arg.lstrip("-").startswith(("jax_", "nojax_")) for arg in args):
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.config_with_absl()


def run(main, log_dir=None):
  """app.run with one-line command-line errors and the quiet console.

  Flags are parsed by `flag_errors.parse` (a mistake is one `error:` line,
  exit 1, before anything is written). The console shows medclr's own lines;
  library logs go to `<log_dir()>/log.txt` (`medclr.console`), or to stderr
  too with an explicit --verbosity. A start line names the directory; when
  `main` returns what it wrote (a directory, whose entries are named, or a
  list of paths) an end line names every output.

  Args:
    main: the launcher's main(argv) -> outputs, or None (nothing to name,
      e.g. a run stopped early).
    log_dir: () -> the directory the run writes to, called after flags are
      parsed (default: `main.log_dir`, which `train_main` sets); without
      one library warnings stay on the console.
  """
  console.hold()
  _define_jax_flags_if_given(sys.argv[1:])
  tag = os.path.splitext(os.path.basename(sys.argv[0]))[0]
  log_dir = log_dir or getattr(main, "log_dir", None)

  def quiet_main(argv):
    directory = log_dir() if log_dir else None
    log = console.to_file(directory, process_id=_process_id(),
                          library_level=_library_level())
    if directory is not None and _process_id() == 0:
      print(f"[{tag}] starting in {directory}; library logs go to {log}",
            flush=True)
    outputs = main(argv)
    if outputs is not None and _process_id() == 0:
      print(console.outputs_line(tag, outputs), flush=True)

  def parse_flags(argv):
    console.hold()  # app.run has just added absl's handler: out again
    return flag_errors.parse(argv)

  app.run(quiet_main, flags_parser=parse_flags)
