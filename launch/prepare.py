"""Prepare a dataset into TFDS ArrayRecord files (run once per dataset).

  python -m launch.prepare --dataset=phantom
  python -m launch.prepare --dataset=drive --manual_dir=../shared/data/drive
  python -m launch.prepare --dataset=folder --name=my_set --manual_dir=/data/set
  python -m launch.prepare --dataset=unlabeled --name=fundus_pool \
      --manual_dir=../shared/data/fundus_pool
"""
from absl import flags
import tensorflow_datasets as tfds

from launch import cli
from medclr.data import prepare as prepare_lib
from medclr.data import sources

_DATASET = flags.DEFINE_enum("dataset", None, prepare_lib.DATASETS,
                             "Which dataset to prepare.", required=True)
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Folder with the raw files (not needed for phantom); "
    "for unlabeled, the folder holding images/.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", str(sources.default_data_dir()), "Where prepared sets live; "
    f"default ${sources.DATA_DIR_ENV} or ~/medclr_data.")
_NAME = flags.DEFINE_string("name", None, "Name to store the set under "
                            "(required for folder and unlabeled).")
_LONG_SIDE = flags.DEFINE_integer(
    "long_side", None,
    "Downscale so max(H, W) equals this; default 584 for hrf, none otherwise; "
    "0 keeps the original size.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing set.")
_ESTIMATE_FOV = flags.DEFINE_bool(
    "estimate_fov", True,
    "Images without an FOV mask (folder sets without fov/, hrf, unlabeled): "
    "estimate the field of view (medclr.data.fov); false: the whole frame.")
_TEST_SLICES = flags.DEFINE_integer("test_slices", 0, "isbi2012: the last N "
                                    "labelled sections become split 'test'.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 24, "phantom: train images.")
_NUM_TEST = flags.DEFINE_integer("num_test", 8, "phantom: test images.")
_SIZE = flags.DEFINE_integer("size", 128, "phantom: image side in pixels.")
_SEED = flags.DEFINE_integer("seed", 0, "phantom: random seed.")


def main(_):
  tfds.disable_progress_bar()  # One summary line per split is enough.
  phantom_kwargs = dict(num_train=_NUM_TRAIN.value, num_test=_NUM_TEST.value,
                        size=_SIZE.value, seed=_SEED.value)
  return cli.run_user_errors_clean(lambda: prepare_lib.prepare(
      _DATASET.value, _MANUAL_DIR.value, _DATA_DIR.value, name=_NAME.value,
      long_side=_LONG_SIDE.value, overwrite=_OVERWRITE.value,
      estimate_fov=_ESTIMATE_FOV.value, test_slices=_TEST_SLICES.value,
      **(phantom_kwargs if _DATASET.value == "phantom" else {})))


if __name__ == "__main__":
  cli.run(main, log_dir=lambda: _DATA_DIR.value)
