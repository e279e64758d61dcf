"""Every config file loads for each documented argument and locks its keys;
old names are refused with the new."""
import importlib

import ml_collections
import pytest

from configs import common
from medclr import errors
from medclr.train import renames

CONFIGS = {"pretrain_simclr": ["", "smoke", "quick", "demo",
                               "quick,preset=basic_medical"],
           "pretrain_mocov2": ["", "smoke", "quick"],
           "pretrain_adco": ["", "smoke", "quick"],
           "pretrain_byol": ["", "smoke", "quick"],
           "pretrain_dino": ["", "smoke", "quick", "multicrop=weak"],
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
  renames.check_no_renamed_keys(config)  # no key under an old name


def test_preset_argument_reaches_augment():
  config = importlib.import_module("configs.pretrain_simclr").get_config(
      "quick,preset=basic_medical")
  assert config.augment.preset == "basic_medical"
  assert importlib.import_module("configs.pretrain_simclr").get_config(
      None).augment.preset == "simclr_strong"


def test_unknown_argument_is_named():
  with pytest.raises(ValueError, match="smok"):
    importlib.import_module("configs.pretrain_simclr").get_config("smok")


def test_renamed_config_argument_names_the_new_one():
  with pytest.raises(errors.ConfigError,
                     match=r"config argument 'crops' in 'quick,crops=weak' "
                     r"was renamed to 'multicrop' \(see CHANGELOG.md\)"):
    importlib.import_module("configs.pretrain_dino").get_config(
        "quick,crops=weak")
  # Not renamed for a config without the new argument: unknown there.
  with pytest.raises(errors.ConfigError, match="unknown config argument"):
    importlib.import_module("configs.pretrain_simclr").get_config("crops=a")


@pytest.mark.parametrize("old, new", [
    ("data.crops", "data.crop_site"), ("crop.mode", "contrastive_crop.mode"),
    ("crops", "multicrop"), ("init.pretrain_step",
                             "init.pretrain_checkpoint_step")])
def test_renamed_keys_map_to_their_new_names(old, new):
  assert renames.current_key(old) == new
  assert renames.renamed_key_message(old) == (
      f"config key {old} was renamed to {new} (see CHANGELOG.md)")
  assert renames.current_key(old + ".x") == new + ".x"  # keys in a block
  # Keys that only share a prefix are not renamed.
  for key in ("data.crop_canvas", "crops_x", "initial.pretrain_step"):
    assert renames.current_key(key) == key
  config = ml_collections.ConfigDict({"data": {"crop_canvas": 0}})
  renames.check_no_renamed_keys(config)
  *parents, leaf = old.split(".")
  node = config
  for parent in parents:
    if parent not in node:
      node[parent] = ml_collections.ConfigDict()
    node = node[parent]
  node[leaf] = 1
  # The config names the old block (crop), or the old key in its block.
  block = old if old in renames.RENAMED_KEYS else old.split(".")[0]
  with pytest.raises(errors.ConfigError, match=(
      rf"^config key {block} was renamed to {renames.current_key(block)} ")):
    renames.check_no_renamed_keys(config)
