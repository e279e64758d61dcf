"""User-facing error types: launchers print these without a traceback."""


class ConfigError(ValueError):
  """A config field has a value medclr cannot run with; names the key."""
