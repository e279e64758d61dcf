"""User-facing error types: launchers print these without a traceback."""


class ConfigError(ValueError):
  """A config field has a value medclr cannot run with; names the key."""


class TrainingStalled(RuntimeError):
  """A run sat at chance or collapsed; names the step, cause and checkpoint."""


class Diverged(RuntimeError):
  """Loss or parameters became NaN/inf; names the step and the checkpoint."""


class DataError(ValueError):
  """Bad or missing input data; the message names the file and the problem.

  Also `medclr.data.readers.DataError`.
  """


class CheckpointError(ValueError):
  """A checkpoint directory is missing, empty or does not fit the model.

  Also `medclr.checkpointing.CheckpointError`.
  """


# What a launcher reports as one `error:` line: every type above.
USER_ERRORS = (ConfigError, TrainingStalled, Diverged, DataError,
               CheckpointError)
