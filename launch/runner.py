"""What every launcher shares: distributed flags, start-up and clean errors.

A user error (bad data folder, missing checkpoint, invalid config value) is
printed as one line naming the file or key, without a Python traceback.
"""
import sys

from absl import flags
from absl import logging

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

USER_ERRORS = (errors.ConfigError, errors.TrainingStalled,
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
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_STALLED if isinstance(e, errors.TrainingStalled) else 1)
