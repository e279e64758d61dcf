"""Random-access sources over prepared sets (TFDS ArrayRecord, no TensorFlow).

A source is a sequence of decoded examples: `len(source)` records, and
`source[i]` is a dict of numpy arrays (image, mask, fov), has_mask and stem
(bytes). Grain reads from these directly. Records store the image encoded
(`tfds_builder`, version 2.0.0); `DecodedSource` decodes it on every read,
here and nowhere else, so all consumers see `record['image']` as uint8
(H, W, C) exactly as the reader produced it at prepare time. Sets prepared
before (version 1.0.0, decoded pixels) read as they are.
"""
import os
import pathlib
from typing import Any, Sequence

import tensorflow_datasets as tfds

from medclr.data import image_codec
from medclr.data import readers
from medclr.data import tfds_builder

DATA_DIR_ENV = "MEDCLR_DATA_DIR"


def default_data_dir() -> pathlib.Path:
  """$MEDCLR_DATA_DIR if set, else ~/medclr_data."""
  return pathlib.Path(
      os.environ.get(DATA_DIR_ENV) or "~/medclr_data").expanduser()


def _dataset_flag(name: str) -> str:
  """What follows `launch.prepare --dataset=` to prepare set `name`."""
  return name if name in ("drive", "hrf", "isbi2012", "phantom") else (
      f"folder (or unlabeled) --name={name}")


def _prepare_hint(name: str) -> str:
  dataset = _dataset_flag(name)
  return (f"run `python -m launch.prepare --dataset={dataset} ...` (2D images) "
          f"or `python -m launch.prepare_volumes --name={name} ...` (3D "
          "volumes) first")


def _builder(data_dir: pathlib.Path | str, name: str):
  """Read-only TFDS builder of a prepared set, with clear errors if absent."""
  data_dir = pathlib.Path(data_dir).expanduser()
  if not data_dir.is_dir() or not any(data_dir.iterdir()):
    raise readers.DataError(
        f"data_dir {data_dir} is missing or empty; {_prepare_hint(name)}")
  newer = tfds_builder.unreadable_versions(data_dir, name)
  if newer and not tfds_builder.dataset_exists(data_dir, name):
    raise readers.DataError(
        f"dataset {name!r} in {data_dir} has record version {newer[-1]}, "
        f"written by a newer medclr (this one reads "
        f"{', '.join(tfds_builder.READABLE_VERSIONS)}); upgrade medclr or "
        f"re-prepare it: `python -m launch.prepare --dataset="
        f"{_dataset_flag(name)} ... --overwrite`")
  if not tfds_builder.dataset_exists(data_dir, name):
    prepared = available_datasets(data_dir)
    raise readers.DataError(
        f"dataset {name!r} is not prepared in {data_dir} (prepared: "
        f"{prepared or 'none'}); {_prepare_hint(name)}")
  # From the directory rather than the registry: works whether or not the
  # builder class was imported, and never instantiates it for writing.
  return tfds.builder_from_directory(
      str(tfds_builder.dataset_dir(data_dir, name)))


def is_prepared(data_dir: pathlib.Path | str, name: str) -> bool:
  """True if set `name` was completely written into `data_dir`."""
  return tfds_builder.dataset_exists(data_dir, name)


def available_datasets(data_dir: pathlib.Path | str) -> list[str]:
  """Names of the sets completely prepared in `data_dir`."""
  root = pathlib.Path(data_dir).expanduser() / tfds_builder.BUILDER_NAME
  if not root.is_dir():
    return []
  return sorted(p.name for p in root.iterdir()
                if tfds_builder.dataset_exists(data_dir, p.name))


def available_splits(data_dir: pathlib.Path | str, name: str) -> list[str]:
  """Split names of a prepared set."""
  return sorted(_builder(data_dir, name).info.splits.keys())


def _check_split(builder, name: str, split: str) -> None:
  splits = sorted(builder.info.splits.keys())
  if split not in splits:
    raise readers.DataError(
        f"dataset {name!r} has no split {split!r}; available: {splits}")


def open_split(data_dir: pathlib.Path | str, name: str, split: str):
  """Random-access source over one split of a prepared set.

  Raises:
    DataError: data_dir missing/empty, the set is not prepared (the message
      says how to prepare it), or the split does not exist (lists the splits).
  """
  builder = _builder(data_dir, name)
  _check_split(builder, name, split)
  source = builder.as_data_source(split=split)
  if "image_bytes" in builder.info.features.keys():
    return DecodedSource(source, f"{name}:{split}")
  return source  # decoded pixels (version 1.0.0) or volume slices


class DecodedSource:
  """A split's records with the stored image decoded (`image_codec.decode`).

  `source[i]` is the record with `image` uint8 (H, W, C) in place of
  `image_bytes` and `image_format`; `records` is the undecoded source
  (for what needs no pixels, e.g. stems). Picklable, for Grain workers.
  """

  def __init__(self, records, where: str):
    self.records = records
    self.dataset_info = records.dataset_info
    self._where = where

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._decoded(self.records[index], index)

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [self._decoded(record, index) for record, index in
            zip(self.records.__getitems__(indices), indices)]

  def __repr__(self) -> str:
    return f"DecodedSource({self._where}, {len(self)} records)"

  def _decoded(self, record: dict[str, Any], index: int) -> dict[str, Any]:
    image_format = record.pop("image_format")
    if isinstance(image_format, bytes):
      image_format = image_format.decode("utf-8")
    record["image"] = image_codec.decode(
        record.pop("image_bytes"), image_format,
        f"record {index} ({stem_of(record)}) of {self._where}")
    return record


def split_size(data_dir: pathlib.Path | str, name: str, split: str) -> int:
  """Number of records in one split, read from the dataset info only."""
  builder = _builder(data_dir, name)
  _check_split(builder, name, split)
  return builder.info.splits[split].num_examples


def parse_sources(sources: str) -> list[tuple[str, str]]:
  """'drive:train, hrf:train' -> [('drive', 'train'), ('hrf', 'train')].

  Raises:
    DataError: an entry is not exactly `name:split` (names the string).
  """
  parsed = []
  for entry in sources.split(","):
    parts = [p.strip() for p in entry.split(":")]
    if len(parts) != 2 or not all(parts):
      raise readers.DataError(
          f"bad data sources string {sources!r}: entry {entry.strip()!r} is "
          "not 'name:split'; expected e.g. 'drive:train,hrf:train'")
    parsed.append((parts[0], parts[1]))
  return parsed


def open_sources(data_dir: pathlib.Path | str, sources: str) -> list[Any]:
  """Opens every `name:split` of a comma-separated list, in order."""
  return [open_split(data_dir, name, split)
          for name, split in parse_sources(sources)]


def stem_of(record: dict[str, Any]) -> str:
  """A record's stem as str (TFDS Text decodes to bytes)."""
  stem = record["stem"]
  return stem.decode("utf-8") if isinstance(stem, bytes) else str(stem)


def stems(source: Sequence[dict[str, Any]]) -> list[str]:
  """Stem of every record, by record index.

  Reads each record once without decoding its image (`DecodedSource`);
  a set prepared before that (decoded pixels) costs a few ms a record.
  """
  records = getattr(source, "records", source)
  return [stem_of(records[i]) for i in range(len(records))]
