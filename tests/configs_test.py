"""Every config file loads for each documented argument and locks its keys."""
import importlib

import ml_collections
import pytest

from configs import common

CONFIGS = {"pretrain_simclr": ["", "smoke", "quick", "demo",
                               "quick,preset=basic_medical"],
           "pretrain_mocov2": ["", "smoke", "quick"],
           "pretrain_adco": ["", "smoke", "quick"],
           "pretrain_byol": ["", "smoke", "quick"],
           "pretrain_dino": ["", "smoke", "quick", "crops=weak"],
           "pretrain_chaitanya": ["", "smoke", "quick"],
           "pretrain_pcl": ["", "smoke", "quick"],
           "finetune_unet": ["", "smoke", "quick", "demo"]}


@pytest.mark.parametrize("module,arg", [(m, a) for m, args in CONFIGS.items()
                                        for a in args])
def test_config_loads_and_locks(module, arg):
  config = importlib.import_module(f"configs.{module}").get_config(arg or None)
  assert isinstance(config, ml_collections.ConfigDict)
  config.lock()
  with pytest.raises(AttributeError):
    config.optim.learning_rat = 0.1  # a typo must not create a new field
  assert config.model.widths == common.MODEL_PRESETS[config.model.preset][
      "widths"]
  if "smoke" in arg:
    assert config.num_steps <= 2 and config.model.preset == "tiny"


def test_preset_argument_reaches_augment():
  config = importlib.import_module("configs.pretrain_simclr").get_config(
      "quick,preset=basic_medical")
  assert config.augment.preset == "basic_medical"
  assert importlib.import_module("configs.pretrain_simclr").get_config(
      None).augment.preset == "simclr_strong"


def test_unknown_argument_is_named():
  with pytest.raises(ValueError, match="smok"):
    importlib.import_module("configs.pretrain_simclr").get_config("smok")
