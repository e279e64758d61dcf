"""Config checks the pretraining and fine-tuning phases share.

Kept low (imports only augment, errors and renames) so configs and loops can
both use them; each check raises errors.ConfigError naming the offending key.
"""
from medclr import errors
from medclr.augment import ops as augment
from medclr.train import renames


def check_common_config(config, size_key):
  """Config checks both phases share; `size_key` names the input size field.

  Raises:
    errors.ConfigError naming the offending key.
  """
  # A key under its old name would otherwise be ignored, or fail later as
  # a missing field.
  renames.check_no_renamed_keys(config)
  try:
    augment.get_spec(config.augment.preset, config.augment.strength)
  except ValueError as e:
    raise errors.ConfigError(f"config.augment: {e}") from e
  if config.model.in_channels != config.data.in_channels:
    raise errors.ConfigError(
        f"config.model.in_channels={config.model.in_channels} differs from "
        f"config.data.in_channels={config.data.in_channels}")
  levels = len(config.model.widths)
  size = config.data[size_key]
  if size % 2 ** (levels - 1):
    raise errors.ConfigError(
        f"config.data.{size_key}={size} must be divisible by "
        f"2**{levels - 1} for a {levels}-level encoder")
  if config.num_steps < 1:
    raise errors.ConfigError(
        f"config.num_steps={config.num_steps}: must be >= 1")
