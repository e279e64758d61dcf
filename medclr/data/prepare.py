"""Prepare a dataset once: read and validate every split, then write records.

`prepare` is what `python -m launch.prepare` calls. It reads all splits into
memory first (every file decoded, every size checked), and only then writes,
so a bad file stops the run before anything lands in data_dir.
"""
import pathlib
from typing import Any

import numpy as np

from medclr.data import fov as fov_lib
from medclr.data import phantom
from medclr.data import readers
from medclr.data import tfds_builder

DATASETS = ("drive", "hrf", "isbi2012", "folder", "unlabeled", "phantom")
PHANTOM_DEFAULTS = {"num_train": 24, "num_test": 8, "size": 128, "seed": 0}
_DESCRIPTIONS = {
    "drive": "DRIVE retinal vessels (Staal et al., IEEE TMI 2004)",
    "hrf": "HRF fundus photographs, unlabelled (Budai et al. 2013)",
    "isbi2012": "ISBI 2012 EM membranes (Cardona et al. 2010), membrane = 1",
    "phantom": "procedural fundus-like vessel phantom (medclr)",
}


def _default_long_side(dataset: str) -> int | None:
  return readers.HRF_LONG_SIDE if dataset == "hrf" else None


def _read_all(
    dataset: str, manual_dir: pathlib.Path | None, long_side: int | None,
    phantom_kwargs: dict[str, Any], default_fov=None,
    test_slices: int = 0) -> dict[str, list[readers.Example]]:
  """Reads every split of `dataset` into memory (see `prepare`)."""
  if dataset == "phantom":
    options = {**PHANTOM_DEFAULTS, **phantom_kwargs}
    seed, size = options["seed"], options["size"]
    # Different seeds keep train and test images (and stems) distinct.
    return {
        "train": phantom.generate(options["num_train"], size, seed),
        "test": phantom.generate(options["num_test"], size, seed + 1),
    }
  if dataset == "folder":
    return {
        split: readers.read_folder_split(manual_dir, split, long_side,
                                         default_fov=default_fov)
        for split in readers.folder_splits(manual_dir)
    }
  if dataset in ("hrf", "unlabeled"):
    return {"train": readers.read_unlabeled(manual_dir, "train", long_side,
                                            default_fov=default_fov)}
  if test_slices:  # isbi2012 only (`_check_arguments`)
    return {split: readers.read_isbi2012(manual_dir, split, long_side,
                                         test_slices=test_slices)
            for split in ("train", "test", "unlabeled")}
  reader = readers.NAMED_READERS[dataset]
  return {
      split: reader(manual_dir, split, long_side=long_side)
      for split in readers.NAMED_SPLITS[dataset]
  }


def _summary(name: str, path: pathlib.Path,
             examples_by_split: dict[str, list[readers.Example]]) -> str:
  """Short human summary: sizes, labelled count, foreground fraction."""
  stored = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
  lines = [f"prepared {name!r} at {path} ({stored / 2**20:.1f} MB)"]
  for split, examples in examples_by_split.items():
    shapes = sorted({"x".join(map(str, e["image"].shape)) for e in examples})
    shown = ", ".join(shapes[:3]) + (", ..." if len(shapes) > 3 else "")
    labeled = [e for e in examples if e["has_mask"]]
    line = (f"  {split}: {len(examples)} images (HxWxC {shown}), "
            f"{len(labeled)} labelled")
    if labeled:
      fraction = np.mean([(e["mask"] > 0).mean() for e in labeled])
      line += f", foreground fraction {100 * fraction:.2f}%"
    lines.append(line)
  return "\n".join(lines)


def _check_arguments(dataset, manual_dir, name, phantom_kwargs, long_side):
  """(name to store under, manual_dir as a Path or None); DataError if bad."""
  if dataset not in DATASETS:
    raise readers.DataError(
        f"--dataset={dataset!r} is unknown; expected one of {DATASETS}")
  if dataset in ("folder", "unlabeled") and not name:
    raise readers.DataError(
        f"--name is required with --dataset={dataset} (the name to store it "
        "as)")
  unknown = set(phantom_kwargs) - set(PHANTOM_DEFAULTS)
  if unknown or (phantom_kwargs and dataset != "phantom"):
    raise readers.DataError(
        f"options {sorted(phantom_kwargs)} only apply to --dataset=phantom "
        f"(known: {sorted(PHANTOM_DEFAULTS)})")
  for key, low in (("num_train", 1), ("num_test", 1), ("size", 16),
                   ("seed", 0)):
    value = phantom_kwargs.get(key, PHANTOM_DEFAULTS[key])
    if not isinstance(value, int) or value < low:
      raise readers.DataError(f"--{key}={value!r}: expected an integer >= "
                              f"{low}")
  if long_side is not None and long_side < 0:
    raise readers.DataError(
        f"--long_side={long_side}: expected a positive size in pixels, or 0 "
        "to keep the original size")
  name = name or dataset
  tfds_builder.check_name(name)
  if dataset == "phantom":
    return name, None
  if not manual_dir:
    raise readers.DataError(
        f"--manual_dir is required for --dataset={dataset} (the folder "
        "holding the raw files)")
  manual_dir = pathlib.Path(manual_dir).expanduser()
  if not manual_dir.is_dir():
    raise readers.DataError(f"--manual_dir {manual_dir} is not a directory")
  return name, manual_dir


def prepare(dataset: str, manual_dir: pathlib.Path | str | None,
            data_dir: pathlib.Path | str, name: str | None = None,
            long_side: int | None = None, overwrite: bool = False,
            estimate_fov: bool = True, test_slices: int = 0,
            **phantom_kwargs) -> pathlib.Path:
  """Reads, validates and writes one dataset; prints a short summary.

  Args:
    dataset: one of DATASETS ('folder' is a user's own
      <root>/<split>/{images,masks,fov}/ set, 'unlabeled' a folder
      <root>/images/ of unlabelled images such as a pretraining pool, stored
      as split 'train').
    manual_dir: where the raw files are (unused for 'phantom').
    data_dir: root of the prepared sets.
    name: name to store the set under; required for 'folder' and
      'unlabeled', defaults to
      `dataset` otherwise.
    long_side: downscale so max(H, W) == long_side; None uses the set's
      default (584 for hrf, none otherwise); 0 keeps the original size.
    overwrite: replace an existing set of this name.
    estimate_fov: for images without an FOV file ('folder' without `fov/`,
      'hrf', 'unlabeled'), estimate the field of view (`medclr.data.fov`);
      False takes the whole frame.
    test_slices: 'isbi2012' only: hold out the last n labelled sections as
      a labelled 'test' split (the challenge's test labels are not public).
    **phantom_kwargs: for 'phantom' only: num_train, num_test, size, seed.

  Returns:
    The directory holding the set's records.

  Raises:
    DataError: any problem with the arguments or input files.
  """
  name, manual_dir = _check_arguments(dataset, manual_dir, name,
                                     phantom_kwargs, long_side)
  if test_slices and dataset != "isbi2012":
    raise readers.DataError(
        f"--test_slices={test_slices} only applies to --dataset=isbi2012")
  path = tfds_builder.dataset_dir(data_dir, name)
  if tfds_builder.dataset_exists(data_dir, name) and not overwrite:
    older = ("" if path.name == tfds_builder.VERSION else
             f"; its records (version {path.name}) hold decoded pixels: "
             "--overwrite rewrites them encoded (a JPEG set about ten "
             "times smaller)")
    print(f"dataset {name!r} already prepared at {path}; nothing to do "
          f"(pass --overwrite to rewrite it){older}")
    return path
  if long_side is None:
    long_side = _default_long_side(dataset)
  examples_by_split = _read_all(
      dataset, manual_dir, long_side or None, phantom_kwargs,
      default_fov=fov_lib.estimate_fov if estimate_fov else None,
      test_slices=test_slices)
  description = _DESCRIPTIONS.get(dataset, f"user folder set from {manual_dir}")
  path = tfds_builder.write_dataset(data_dir, name, examples_by_split,
                                    description, overwrite=overwrite)
  print(_summary(name, path, examples_by_split))
  return path


def ensure_phantom(data_dir, names) -> None:
  """Writes the embedded phantom dataset on first use (it needs no download).

  Args:
    data_dir: root of the prepared sets.
    names: dataset names a run is about to read; only 'phantom' is made.
  """
  from medclr.data import sources  # pylint: disable=g-import-not-at-top
  if "phantom" in names and not sources.is_prepared(data_dir, "phantom"):
    prepare("phantom", None, data_dir)
