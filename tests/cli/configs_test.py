"""Every config file loads for each documented argument and locks its keys;
the profile tables apply in order; old names are refused with the new."""
import importlib
import pathlib

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
           "pretrain_volume_supcon": ["chaitanya", "chaitanya,smoke",
                                      "chaitanya,quick", "pcl", "pcl,smoke",
                                      "pcl,quick"],
           "pretrain_chaitanya_local": ["", "smoke", "quick"],
           "pretrain_dira": ["", "smoke", "quick", "demo"],
           "pretrain_macl": ["", "smoke", "quick", "quick,volumes=0"],
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


def test_every_config_file_is_tested():
  files = {p.stem for p in (pathlib.Path(common.__file__).parent).glob(
      "*.py")} - {"__init__", "common", "study_drive", "study_em",
                  "study_recipe"}
  assert files == set(CONFIGS)


def test_preset_argument_reaches_augment():
  config = importlib.import_module("configs.pretrain_simclr").get_config(
      "quick,preset=basic_medical")
  assert config.augment.preset == "basic_medical"
  assert importlib.import_module("configs.pretrain_simclr").get_config(
      None).augment.preset == "simclr_strong"


def test_unknown_argument_is_named():
  with pytest.raises(ValueError, match="smok"):
    importlib.import_module("configs.pretrain_simclr").get_config("smok")


def test_profiles_run_in_table_order_with_combinations_and_default():
  ran = []
  table = {"a": (lambda c: ran.append("a"),),
           "b": (lambda c: ran.append("b1"), lambda c: ran.append("b2")),
           "a+b": (lambda c: ran.append("a+b"),),
           common.DEFAULT: (lambda c: ran.append("default"),)}
  assert common.profile_args(table) == {"a": False, "b": False}
  for arg, want in [("b,a", ["a", "b1", "b2", "a+b"]), ("b", ["b1", "b2"]),
                    ("", ["default"])]:
    ran.clear()
    common.apply_profiles(None, common.parse_arg(
        arg, **common.profile_args(table)), table)
    assert ran == want, arg


def test_extend_appends_overrides_and_keeps_only_the_named():
  first, second, third = (lambda c: None for _ in range(3))
  table = common.extend({"quick": (first,), "demo": (second,)},
                        only=("quick",), quick=(third,), smoke=(second,))
  assert table == {"quick": (first, third), "smoke": (second,)}


def test_setting_override_sets_a_dotted_field():
  config = ml_collections.ConfigDict({"moco": {"queue_size": 4096}})
  common.setting("moco.queue_size", 16)(config)
  assert config.moco.queue_size == 16


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


def test_renamed_config_files_name_the_new_file_and_argument():
  assert renames.renamed_file_message(
      "configs/pretrain_chaitanya.py", "quick") == (
          "config file configs/pretrain_chaitanya.py was renamed to "
          "configs/pretrain_volume_supcon.py:chaitanya,quick "
          "(see CHANGELOG.md)")
  assert renames.renamed_file_message("/x/configs/pretrain_pcl.py").endswith(
      "renamed to /x/configs/pretrain_volume_supcon.py:pcl (see CHANGELOG.md)")
  assert renames.renamed_file_message("configs/pretrain_simclr.py") is None
