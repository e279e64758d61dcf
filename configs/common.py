"""Helpers shared by the config files: argument parsing and common blocks.

`parse_arg("smoke,steps=10", smoke=False, steps=100)` turns the string after
the colon in `--config=configs/X.py:ARG` into typed fields (big_vision's
`configs/common.py::parse_arg` idea).
"""
import os

import ml_collections

from medclr import models

# Named model sizes live with the models (unet2d-32 is EVALUATION.md's).
MODEL_PRESETS = models.MODEL_PRESETS


def parse_arg(arg, **defaults):
  """Parses 'flag,key=value,...' into a ConfigDict typed like `defaults`."""
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r} in {arg!r}; known: "
                       f"{sorted(defaults)}")
    if not eq:
      result[key] = True
    elif isinstance(defaults[key], bool):
      result[key] = value.lower() in ("1", "true", "yes")
    else:
      result[key] = type(defaults[key])(value)
  return result


def default_data_dir():
  """Where prepared TFDS records live: $MEDCLR_DATA_DIR or ~/medclr_data."""
  return os.environ.get("MEDCLR_DATA_DIR", os.path.expanduser("~/medclr_data"))


def model_config(preset="unet2d-32", in_channels=3, num_classes=1):
  """The `config.model` block; `preset` fills widths and norm."""
  if preset not in MODEL_PRESETS:
    raise ValueError(f"unknown model preset {preset!r}; known: "
                     f"{sorted(MODEL_PRESETS)}")
  cfg = ml_collections.ConfigDict(dict(MODEL_PRESETS[preset]))
  cfg.preset = preset
  cfg.in_channels = in_channels
  cfg.num_classes = num_classes
  return cfg


def run_block(config, *, num_steps, log_every, checkpoint_every, keep=2):
  """Step counts, intervals and mesh shared by pretraining and fine-tuning."""
  config.seed = 0
  config.num_steps = num_steps
  config.log_every = log_every
  config.checkpoint_every = checkpoint_every
  config.keep_checkpoints = keep
  config.async_checkpoints = True
  config.mesh = ml_collections.ConfigDict({"data": -1})
  return config
