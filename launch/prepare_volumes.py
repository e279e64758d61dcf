r"""Prepare 3D volumes as TFDS records of 2D slices (run once per set).

Each .nii/.nii.gz file and each folder of .dcm files (a DICOM series) in
--manual_dir is a volume; its slices along --axis are stored with volume id
and relative position for the volume-aware methods (chaitanya, pcl configs).

  python -m launch.prepare_volumes --name=acdc --manual_dir=/data/acdc
  python -m launch.prepare_volumes --name=synthetic_volumes --synthetic
"""
from absl import flags
import tensorflow_datasets as tfds

from launch import cli
from medclr.data import sources
from medclr.data import tfds_builder
from medclr.data import volume_builder
from medclr.data import volumes

_NAME = flags.DEFINE_string("name", None, "Name to store the set under.",
                            required=True)
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Folder of .nii/.nii.gz files and/or DICOM series.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", str(sources.default_data_dir()), "Where prepared sets live; "
    f"default ${sources.DATA_DIR_ENV} or ~/medclr_data.")
_SIZE = flags.DEFINE_integer(
    "size", 128, "Pad each slice to a square and resize it to size x size; "
    "0 keeps the native size.")
_AXIS = flags.DEFINE_enum("axis", "axial", sorted(volumes.AXES),
                          "Slicing direction (after reorienting to RAS).")
_NORMALIZATION = flags.DEFINE_enum(
    "normalization", "percentile", list(volumes.NORMALIZATIONS),
    "Per-volume intensity scaling to [0, 1].")
_PERCENTILES = flags.DEFINE_list(
    "percentiles", ["1", "99"], "Low,high for --normalization=percentile.")
_SPLIT = flags.DEFINE_string("split", "train", "Split to write.")
_SYNTHETIC = flags.DEFINE_bool(
    "synthetic", False, "Write the procedural synthetic volumes instead.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Replace the set if it already exists.")


def main(_):
  tfds.disable_progress_bar()
  summary = cli.run_user_errors_clean(
      lambda: volume_builder.prepare_from_flags(
          _MANUAL_DIR.value, _DATA_DIR.value,
          _NAME.value, synthetic=_SYNTHETIC.value, axis=_AXIS.value,
          normalization=_NORMALIZATION.value, percentiles=_PERCENTILES.value,
          size=_SIZE.value, split=_SPLIT.value, overwrite=_OVERWRITE.value))
  if summary:
    print(summary)
  return tfds_builder.dataset_dir(_DATA_DIR.value, _NAME.value)


if __name__ == "__main__":
  cli.run(main, log_dir=lambda: _DATA_DIR.value)
