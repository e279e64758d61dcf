r"""Prepare 3D volumes as TFDS records of 2D slices (run once per set).

Every .nii/.nii.gz file and every sub-folder of .dcm files (one DICOM series)
directly inside --manual_dir becomes one volume; its slices along --axis are
written with their volume id and relative position, for the volume-aware
methods (configs/pretrain_chaitanya.py, configs/pretrain_pcl.py).

Examples:
  python -m launch.prepare_volumes --name=acdc --manual_dir=/data/acdc_nii \
      --size=192
  python -m launch.prepare_volumes --name=synthetic_volumes --synthetic
"""
import sys

from absl import app
from absl import flags
import tensorflow_datasets as tfds

from launch import runner
from medclr.data import readers
from medclr.data import sources
from medclr.data import volume_builder
from medclr.data import volumes

_NAME = flags.DEFINE_string("name", None, "Name to store the set under.",
                            required=True)
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None,
    "Folder of .nii/.nii.gz files and/or DICOM series folders.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None,
    f"Where prepared sets live; default ${sources.DATA_DIR_ENV} or "
    "~/medclr_data.")
_SIZE = flags.DEFINE_integer(
    "size", 128, "Pad each slice to a square and resize it to size x size; "
    "0 keeps the native size.")
_AXIS = flags.DEFINE_enum("axis", "axial", sorted(volumes.AXES),
                          "Slicing direction (after reorienting to RAS).")
_NORMALIZATION = flags.DEFINE_enum(
    "normalization", "percentile", list(volumes.NORMALIZATIONS),
    "Per-volume intensity scaling to [0, 1].")
_PERCENTILES = flags.DEFINE_list(
    "percentiles", ["1", "99"],
    "Low,high percentiles for --normalization=percentile.")
_SPLIT = flags.DEFINE_string("split", "train", "Split to write.")
_SYNTHETIC = flags.DEFINE_bool(
    "synthetic", False, "Write the procedural synthetic volumes instead of "
    "reading --manual_dir.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Replace the set if it already exists.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  tfds.disable_progress_bar()
  data_dir = _DATA_DIR.value or sources.default_data_dir()
  try:
    if _SYNTHETIC.value:
      path = volume_builder.prepare_synthetic(data_dir, _NAME.value,
                                              overwrite=_OVERWRITE.value)
      print(f"prepared synthetic volumes {_NAME.value!r} at {path}")
      return
    if not _MANUAL_DIR.value:
      raise readers.DataError("--manual_dir is required (the folder of "
                              "volumes), or pass --synthetic")
    try:
      percentiles = tuple(float(p) for p in _PERCENTILES.value)
    except ValueError as e:
      raise readers.DataError(f"--percentiles={_PERCENTILES.value}: expected "
                              "two numbers, e.g. 1,99") from e
    if len(percentiles) != 2:
      raise readers.DataError(f"--percentiles={_PERCENTILES.value}: expected "
                              "two numbers, e.g. 1,99")
    options = volumes.VolumeOptions(
        axis=_AXIS.value, normalization=_NORMALIZATION.value,
        percentiles=percentiles, size=_SIZE.value or None)
    volume_builder.prepare_volumes(_MANUAL_DIR.value, data_dir, _NAME.value,
                                   options, split=_SPLIT.value,
                                   overwrite=_OVERWRITE.value)
  except readers.DataError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  runner.run(main)
