"""TFDS builder that writes in-memory examples as ArrayRecord files.

One builder class, `Medclr2d` (registered as 'medclr2d'), serves every 2D set:
the BuilderConfig name is the dataset name ('drive', 'phantom', a user's
folder name, ...). Records land in `<data_dir>/medclr2d/<name>/2.0.0/` and are
read back with `tfds.data_source`, which needs no TensorFlow.

Version 2.0.0 stores each image encoded (`image_bytes`, `image_format`: the
source JPEG or PNG file as it is, else PNG; `medclr.data.image_codec`);
`sources.open_split` decodes it, so readers still see `record['image']`.
Version 1.0.0 stored the decoded pixels (zlib), about ten times the source
files; sets written so still read, from their 1.0.0 directory.

A set is written into a staging directory inside data_dir and moved into
place only once complete (`write_staged`), so a failed or interrupted write
leaves neither a half-written set nor a hole where the previous version of
the set was: until the move, an existing set of that name stays as it was.
"""
import os
import pathlib
import re
import shutil
import tempfile

import numpy as np
import tensorflow_datasets as tfds

from medclr import console
from medclr.data import image_codec
from medclr.data import readers

BUILDER_NAME = "medclr2d"
VERSION = "2.0.0"
# Record versions a reader opens, newest first. 1.0.0: decoded pixels (and
# the volume sets, whose features never changed).
READABLE_VERSIONS = ("2.0.0", "1.0.0")
_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


def features() -> tfds.features.FeaturesDict:
  """Feature spec shared by all sets (see readers.Example).

  The image is stored encoded (module docstring); masks and FOVs stay zlib
  tensors: a binary map compresses to a few kB either way.
  """
  return tfds.features.FeaturesDict({
      "image_bytes": tfds.features.Tensor(shape=(), dtype=np.object_),
      "image_format": tfds.features.Text(),
      "mask": tfds.features.Tensor(
          shape=(None, None), dtype=np.uint8, encoding="zlib"),
      "fov": tfds.features.Tensor(
          shape=(None, None), dtype=np.uint8, encoding="zlib"),
      "has_mask": tfds.features.Scalar(dtype=np.bool_),
      "stem": tfds.features.Text(),
  })


class Medclr2d(tfds.core.GeneratorBasedBuilder):
  """2D images with optional masks and field-of-view, one config per set."""

  VERSION = tfds.core.Version(VERSION)

  def __init__(self, *, examples_by_split: dict[str, list[readers.Example]]
               | None = None, **kwargs):
    # Examples come in already read and validated: this builder only writes.
    self._examples_by_split = examples_by_split or {}
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # TFDS looks for a url-checksums file beside the builder's source, which
    # for a class inside a package goes through `importlib_resources`, a
    # module newer etils no longer installs. Nothing is downloaded here, so
    # there is no checksums file to find: skip the lookup.
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo is built by hand: dataset_info_from_configs() expects the
    # class to live in a TFDS package directory with a README/checksums.
    return tfds.core.DatasetInfo(builder=self, features=features())

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    return {
        split: self._generate_examples(examples)
        for split, examples in self._examples_by_split.items()
    }

  def _generate_examples(self, examples):
    # Encoded one by one as TFDS writes, not all up front.
    for example in examples:
      yield example["stem"], self._record(example)

  def _record(self, example: readers.Example) -> dict:
    """What is stored for `example` (see `features`)."""
    data, image_format = image_codec.encode(example["image"],
                                            example.get("source_bytes"))
    return {"image_bytes": data, "image_format": image_format,
            "mask": example["mask"], "fov": example["fov"],
            "has_mask": example["has_mask"], "stem": example["stem"]}


def check_name(name: str) -> None:
  """Raises DataError unless `name` is usable as a TFDS config name."""
  if not isinstance(name, str) or not _NAME_PATTERN.match(name):
    raise readers.DataError(
        f"dataset name {name!r} is invalid; use lowercase letters, digits and "
        "underscores, starting with a letter (e.g. 'my_retina')")


def dataset_dir(data_dir: pathlib.Path | str, name: str) -> pathlib.Path:
  """Where the records of set `name` live: <data_dir>/medclr2d/<name>/<v>.

  <v> is the version the set was written with (the newest complete one of
  READABLE_VERSIONS), or VERSION for a set not written yet.
  """
  root = pathlib.Path(data_dir).expanduser() / BUILDER_NAME / name
  for version in READABLE_VERSIONS:
    if (root / version / "dataset_info.json").is_file():
      return root / version
  return root / VERSION


def unreadable_versions(data_dir: pathlib.Path | str, name: str) -> list[str]:
  """Versions of set `name` on disk that this medclr cannot read (a set
  written by a newer medclr)."""
  root = pathlib.Path(data_dir).expanduser() / BUILDER_NAME / name
  if not root.is_dir():
    return []
  return sorted(p.name for p in root.iterdir()
                if (p / "dataset_info.json").is_file()
                and p.name not in READABLE_VERSIONS)


def dataset_exists(data_dir: pathlib.Path | str, name: str) -> bool:
  """True once set `name` was completely written (TFDS writes this last)."""
  return (dataset_dir(data_dir, name) / "dataset_info.json").is_file()


def _check_examples(
    examples_by_split: dict[str, list[readers.Example]]) -> None:
  """Validates what TFDS would otherwise reject halfway through writing."""
  if not examples_by_split:
    raise readers.DataError("no splits to write")
  for split, examples in examples_by_split.items():
    if not re.match(r"^\w+$", split):
      raise readers.DataError(
          f"split name {split!r} is invalid; use letters, digits, underscores")
    if not examples:
      raise readers.DataError(f"split {split!r} has no examples")
    seen = set()
    for example in examples:
      stem = example["stem"]
      if stem in seen:
        raise readers.DataError(f"split {split!r} has two examples with stem "
                                f"{stem!r}; stems must be unique in a split")
      seen.add(stem)
      image, mask, fov = example["image"], example["mask"], example["fov"]
      if (image.dtype != np.uint8 or image.ndim != 3 or
          image.shape[-1] not in (1, 3)):
        raise readers.DataError(
            f"{split}/{stem}: image must be uint8 (H, W, 1|3), got "
            f"{image.dtype} {image.shape}")
      for key, array in (("mask", mask), ("fov", fov)):
        if array.dtype != np.uint8 or array.shape != image.shape[:2]:
          raise readers.DataError(
              f"{split}/{stem}: {key} must be uint8 {image.shape[:2]}, got "
              f"{array.dtype} {array.shape}")


def write_dataset(data_dir: pathlib.Path | str, name: str,
                  examples_by_split: dict[str, list[readers.Example]],
                  description: str = "",
                  overwrite: bool = False) -> pathlib.Path:
  """Writes examples as ArrayRecord records for `tfds.data_source`.

  Args:
    data_dir: root of all prepared sets.
    name: the set's name (TFDS config name).
    examples_by_split: split name -> examples, already validated by a reader.
    description: free text stored in the dataset info.
    overwrite: replace an existing set of this name; otherwise an existing set
      raises DataError.

  Returns:
    The directory holding the records.
  """
  check_name(name)
  _check_examples(examples_by_split)
  target = dataset_dir(data_dir, name)
  if dataset_exists(data_dir, name):
    if not overwrite:
      raise readers.DataError(
          f"dataset {name!r} already exists at {target}; pass overwrite=True "
          "(--overwrite) to replace it")

  def write(staging):
    builder = Medclr2d(
        data_dir=str(staging),
        config=tfds.core.BuilderConfig(name=name, description=description),
        file_format="array_record",
        examples_by_split=examples_by_split)
    # A throwaway download dir, so no empty downloads/ folder is left behind.
    # TFDS prints its progress to stdout: the launcher's log file takes it.
    with tempfile.TemporaryDirectory() as download_dir, \
        console.library_output():
      builder.download_and_prepare(download_dir=download_dir)

  write_staged(data_dir, name, write)
  return dataset_dir(data_dir, name)


def write_staged(data_dir: pathlib.Path | str, name: str, write) -> None:
  """Runs `write(staging_data_dir)`, then moves the set into `data_dir`.

  `write` writes set `name` under a fresh staging directory inside
  `data_dir` (same file system, so the move is a rename). Only when it
  returns does the new set replace `<data_dir>/medclr2d/<name>/` (with any
  previous version and leftovers of interrupted runs). On any failure the
  staging directory is removed, an existing set is left untouched, and a
  `data_dir` this call created is removed again.
  """
  data_dir = pathlib.Path(data_dir).expanduser()
  created = [p for p in (data_dir, *data_dir.parents) if not p.exists()]
  data_dir.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=".medclr-staging-",
                                          dir=data_dir))
  target = data_dir / BUILDER_NAME / name
  try:
    write(staging)
    target.parent.mkdir(exist_ok=True)
    if target.exists():
      os.replace(target, staging / "replaced")
    os.replace(staging / BUILDER_NAME / name, target)
  except BaseException:
    replaced = staging / "replaced"
    if replaced.exists() and not target.exists():
      os.replace(replaced, target)  # the move failed: put the old set back
    shutil.rmtree(staging, ignore_errors=True)
    for path in created:  # innermost first; only directories left empty
      try:
        path.rmdir()
      except OSError:
        break
    raise
  shutil.rmtree(staging, ignore_errors=True)
