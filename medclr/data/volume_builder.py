"""TFDS records of volume slices, written beside the 2D sets, and read back.

A volume set is written with the same layout as every other prepared set
(`<data_dir>/medclr2d/<name>/<version>/`, tfds_builder.dataset_dir), so the
shared readers (`sources.open_split`, `is_prepared`, `available_datasets`)
and the ordinary pipelines work on it: SimCLR can pretrain on MRI slices
unchanged. Only the features differ (see `features`): besides the slice
`image` and `stem`, each record carries `volume`, `volume_id`,
`slice_index`, `num_slices` and `position`. `tfds.builder_from_directory`
reads each set's own features back, so both kinds decode correctly.

TFDS stores records in its own (hashed) order. The volume-aware pipeline
needs to know which record holds which slice without decoding every image,
so `write_volume_dataset` also saves `slice_table_<split>.npy` next to the
records: one row (volume_id, slice_index, num_slices) per record index.
`slice_table` rebuilds it by scanning the records if it is missing.
"""
import pathlib
import tempfile

import numpy as np
import tensorflow_datasets as tfds

from medclr import console
from medclr.data import readers
from medclr.data import sources
from medclr.data import tfds_builder
from medclr.data import volumes

SYNTHETIC_NAME = "synthetic_volumes"
# Small enough to write in a few seconds; 128 px leaves room for the
# Chaitanya-style 27%-area crops of the CPU profiles.
SYNTHETIC_DEFAULTS = {"num_volumes": 12, "num_slices": 24, "size": 128,
                      "seed": 0}
_TABLE_COLUMNS = ("volume_id", "slice_index", "num_slices")
VOLUME_KEYS = ("volume", "volume_id", "slice_index", "num_slices", "position")


def features() -> tfds.features.FeaturesDict:
  """Feature spec of volume slices (see volumes.Slice)."""
  scalar = tfds.features.Scalar
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(
          shape=(None, None, None), dtype=np.uint8, encoding="zlib"),
      "stem": tfds.features.Text(),
      "volume": tfds.features.Text(),
      "volume_id": scalar(dtype=np.int32),
      "slice_index": scalar(dtype=np.int32),
      "num_slices": scalar(dtype=np.int32),
      "position": scalar(dtype=np.float32),
  })


class MedclrVolumeSlices(tfds_builder.Medclr2d, skip_registration=True):
  """Slices of 3D volumes; written into the 2D sets' directory layout.

  Not registered: it shares the name (hence the directory) of `Medclr2d`,
  and reading goes through `tfds.builder_from_directory`, never the
  registry.
  """

  name = tfds_builder.BUILDER_NAME

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=features())

  def _record(self, example: volumes.Slice) -> dict:
    # Slices stay uint8 zlib tensors (not the 2D sets' encoded images):
    # they are windowed from float or 16-bit volumes, so there is no source
    # file to keep, and zlib already packs their dark background.
    return dict(example)


def table_path(data_dir: pathlib.Path | str, name: str,
               split: str) -> pathlib.Path:
  return tfds_builder.dataset_dir(data_dir, name) / f"slice_table_{split}.npy"


def _check_slices(slices_by_split: dict[str, list[volumes.Slice]]) -> None:
  """Validates what TFDS would otherwise reject halfway through writing."""
  if not slices_by_split:
    raise readers.DataError("no splits to write")
  for split, slices in slices_by_split.items():
    if not slices:
      raise readers.DataError(f"split {split!r} has no slices")
    stems = [s["stem"] for s in slices]
    if len(set(stems)) != len(stems):
      dup = next(s for s in stems if stems.count(s) > 1)
      raise readers.DataError(f"split {split!r} has two slices with stem "
                              f"{dup!r}; stems must be unique in a split")
    for s in slices:
      image = s["image"]
      if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 1:
        raise readers.DataError(
            f"{split}/{s['stem']}: image must be uint8 (H, W, 1), got "
            f"{image.dtype} {image.shape}")
      if not 0 <= s["slice_index"] < s["num_slices"] or s["volume_id"] < 0:
        raise readers.DataError(
            f"{split}/{s['stem']}: slice_index {s['slice_index']} not in "
            f"[0, {s['num_slices']}) or volume_id {s['volume_id']} < 0")
      if not 0.0 <= s["position"] <= 1.0:
        raise readers.DataError(f"{split}/{s['stem']}: position "
                                f"{s['position']} not in [0, 1]")


def _scan_table(source) -> np.ndarray:
  table = np.empty((len(source), len(_TABLE_COLUMNS)), np.int32)
  for index in range(len(source)):
    record = source[index]
    table[index] = [int(record[key]) for key in _TABLE_COLUMNS]
  return table


def write_volume_dataset(data_dir: pathlib.Path | str, name: str,
                         slices_by_split: dict[str, list[volumes.Slice]],
                         description: str = "",
                         overwrite: bool = False) -> pathlib.Path:
  """Writes slices as ArrayRecord records plus one slice table per split.

  Args:
    data_dir: root of all prepared sets.
    name: the set's name (shares the namespace of the 2D sets).
    slices_by_split: split name -> slices (uint8 images).
    description: free text stored in the dataset info.
    overwrite: replace an existing set of this name; otherwise an existing
      set raises DataError.

  Returns:
    The directory holding the records.
  """
  tfds_builder.check_name(name)
  _check_slices(slices_by_split)
  target = tfds_builder.dataset_dir(data_dir, name)
  if tfds_builder.dataset_exists(data_dir, name) and not overwrite:
    raise readers.DataError(
        f"dataset {name!r} already exists at {target}; pass overwrite=True "
        "(--overwrite) to replace it")

  def write(staging):
    builder = MedclrVolumeSlices(
        data_dir=str(staging),
        config=tfds.core.BuilderConfig(name=name, description=description),
        file_format="array_record",
        examples_by_split=slices_by_split)
    # TFDS prints its progress to stdout: the launcher's log file takes it.
    with tempfile.TemporaryDirectory() as download_dir, \
        console.library_output():
      builder.download_and_prepare(download_dir=download_dir)
    for split in slices_by_split:
      np.save(table_path(staging, name, split),
              _scan_table(sources.open_split(staging, name, split)))

  # Staged: a failed write leaves an existing set of this name untouched.
  tfds_builder.write_staged(data_dir, name, write)
  return tfds_builder.dataset_dir(data_dir, name)  # the version written


def is_volume_source(source) -> bool:
  """True if a `sources.open_split` source holds volume slices."""
  return "volume_id" in source.dataset_info.features.keys()


def open_volume_split(data_dir: pathlib.Path | str, name: str, split: str):
  """`sources.open_split`, checking that the set holds volume slices.

  Raises:
    DataError: not prepared (message says how), or a 2D set.
  """
  source = sources.open_split(data_dir, name, split)
  if not is_volume_source(source):
    raise readers.DataError(
        f"dataset {name!r} in {data_dir} is a 2D image set without volume "
        "ids and slice positions; prepare a volume set with `python -m "
        f"launch.prepare_volumes --name=<name> --manual_dir=<folder of "
        ".nii.gz files or DICOM series folders>`")
  return source


def slice_table(data_dir: pathlib.Path | str, name: str, split: str,
                source=None) -> np.ndarray:
  """int32 (num_records, 3): volume_id, slice_index, num_slices per record.

  Read from the table written with the records; rebuilt by decoding every
  record when the file is missing or stale (e.g. copied without it).
  """
  source = source if source is not None else open_volume_split(
      data_dir, name, split)
  path = table_path(data_dir, name, split)
  if path.is_file():
    table = np.load(path)
    if table.shape == (len(source), len(_TABLE_COLUMNS)):
      return table
  return _scan_table(source)


def _summary(name: str, path: pathlib.Path,
             slices_by_split: dict[str, list[volumes.Slice]]) -> str:
  lines = [f"prepared volume set {name!r} at {path}"]
  for split, slices in slices_by_split.items():
    counts = {}
    for s in slices:
      counts[s["volume"]] = s["num_slices"]
    shapes = sorted({"x".join(map(str, s["image"].shape[:2])) for s in slices})
    lines.append(
        f"  {split}: {len(counts)} volumes, {len(slices)} slices (slices per "
        f"volume {min(counts.values())}..{max(counts.values())}; HxW "
        f"{', '.join(shapes[:3])}{', ...' if len(shapes) > 3 else ''})")
  return "\n".join(lines)


def prepare_volumes(manual_dir: pathlib.Path | str,
                    data_dir: pathlib.Path | str, name: str,
                    options: volumes.VolumeOptions = volumes.VolumeOptions(),
                    split: str = "train", overwrite: bool = False,
                    quiet: bool = False) -> pathlib.Path:
  """Reads every volume of `manual_dir` and writes its slices as set `name`.

  Args:
    manual_dir: folder of .nii/.nii.gz files and/or DICOM series folders.
    data_dir: root of the prepared sets.
    name: the set's name.
    options: slicing axis, normalisation, size (uint8 is forced).
    split: the split to write the slices into.
    overwrite: replace an existing set of this name.
    quiet: do not print the summary.

  Returns:
    The directory holding the records.

  Raises:
    DataError: any problem with the arguments or the volumes.
  """
  tfds_builder.check_name(name)
  path = tfds_builder.dataset_dir(data_dir, name)
  if tfds_builder.dataset_exists(data_dir, name) and not overwrite:
    if not quiet:
      print(f"dataset {name!r} already prepared at {path}; nothing to do "
            "(pass --overwrite to rewrite it)")
    return path
  if options.dtype != "uint8":
    raise readers.DataError("volume records store uint8 slices; use "
                            "VolumeOptions(dtype='uint8')")
  slices_by_split = {split: volumes.read_volume_folder(manual_dir, options)}
  description = (f"volume slices from {manual_dir} (axis {options.axis}, "
                 f"{options.normalization} {options.percentiles}, size "
                 f"{options.size})")
  path = write_volume_dataset(data_dir, name, slices_by_split, description,
                              overwrite=overwrite)
  if not quiet:
    print(_summary(name, path, slices_by_split))
  return path


def prepare_synthetic(data_dir: pathlib.Path | str,
                      name: str = SYNTHETIC_NAME, overwrite: bool = False,
                      **kwargs) -> pathlib.Path:
  """Writes `volumes.synthetic_volumes(**kwargs)` as volume set `name`.

  Args:
    data_dir: root of the prepared sets.
    name: the set's name.
    overwrite: replace an existing set of this name.
    **kwargs: overrides of SYNTHETIC_DEFAULTS (num_volumes, num_slices, size,
      seed).
  """
  unknown = set(kwargs) - set(SYNTHETIC_DEFAULTS)
  if unknown:
    raise readers.DataError(f"unknown synthetic volume options "
                            f"{sorted(unknown)}; known: "
                            f"{sorted(SYNTHETIC_DEFAULTS)}")
  options = {**SYNTHETIC_DEFAULTS, **kwargs}
  slices = []
  for volume_id, volume in enumerate(volumes.synthetic_volumes(**options)):
    slices += volumes.volume_slices(volume, f"synthetic_{volume_id:03d}",
                                    volume_id)
  return write_volume_dataset(
      data_dir, name, {"train": slices},
      f"procedural torso-like volumes (medclr) {options}", overwrite)


def ensure_synthetic_volumes(data_dir: pathlib.Path | str,
                             names: list[str]) -> None:
  """Writes the synthetic volume set on first use (it needs no download)."""
  if SYNTHETIC_NAME in names and not sources.is_prepared(data_dir,
                                                         SYNTHETIC_NAME):
    prepare_synthetic(data_dir)


def parse_percentiles(values) -> tuple[float, float]:
  """['1', '99'] -> (1.0, 99.0); DataError naming --percentiles otherwise."""
  try:
    percentiles = tuple(float(p) for p in values)
  except ValueError as e:
    raise readers.DataError(f"--percentiles={values}: expected two numbers, "
                            "e.g. 1,99") from e
  if len(percentiles) != 2:
    raise readers.DataError(f"--percentiles={values}: expected two numbers, "
                            "e.g. 1,99")
  return percentiles


def prepare_from_flags(manual_dir, data_dir, name, *, synthetic, axis,
                       normalization, percentiles, size, split,
                       overwrite) -> str | None:
  """What `launch.prepare_volumes` runs; a summary line for the synthetic set
  (`prepare_volumes` prints its own). `percentiles` as given on the command
  line (['1', '99']); `size` 0 keeps the native size."""
  if synthetic:
    path = prepare_synthetic(data_dir, name, overwrite=overwrite)
    return f"prepared synthetic volumes {name!r} at {path}"
  if not manual_dir:
    raise readers.DataError("--manual_dir is required (the folder of "
                            "volumes), or pass --synthetic")
  options = volumes.VolumeOptions(
      axis=axis, normalization=normalization,
      percentiles=parse_percentiles(percentiles), size=size or None)
  prepare_volumes(manual_dir, data_dir, name, options, split=split,
                  overwrite=overwrite)
  return None
