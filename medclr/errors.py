"""User-facing error types: launchers print these without a traceback."""


class ConfigError(ValueError):
  """A config field has a value medclr cannot run with; names the key."""


class TrainingStalled(RuntimeError):
  """A run sat at chance or collapsed; names the step, cause and checkpoint."""


class Diverged(RuntimeError):
  """Loss or parameters became NaN/inf; names the step and the checkpoint."""
