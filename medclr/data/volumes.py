"""3D volumes (NIfTI, DICOM series) read into 2D slices with their position.

Volume-aware contrastive methods (Chaitanya et al. 2020's G^D partitions,
PCL/MACL's slice-position threshold; docs/methods/volume_supcon.md) need to
know, for every 2D slice, which volume it came from and where in that volume
it lies.
This module turns volumes on disk into such slices:

  NIfTI file (.nii / .nii.gz, nibabel)  \
                                         > RAS-oriented float32 volume
  DICOM series folder (.dcm, pydicom)   /
    -> per-volume intensity normalisation to [0, 1]
    -> slices along the chosen axis (axial by default)
    -> optional pad-to-square + resize to a fixed size
    -> `Slice` dicts: image, stem, volume, volume_id, slice_index, num_slices,
       position = slice_index / (num_slices - 1) in [0, 1].

Every volume is reoriented to the closest RAS orientation first
(`nibabel.as_closest_canonical`), so "axial" means the inferior-to-superior
axis whatever the voxel order on disk, and position 0 is the same end of
every volume: inferior (axial), left (sagittal) or posterior (coronal).
DICOM series are turned into a NIfTI-style RAS affine from
ImagePositionPatient / ImageOrientationPatient / PixelSpacing; a series
without that geometry is stacked by InstanceNumber and its stacking axis is
taken as axial.

`synthetic_volumes` makes small procedural torso-like volumes whose content
changes with the slice position (the smoke and CPU profiles train on them; no
download needed), and `write_nifti` saves volumes as .nii.gz files.
"""
import dataclasses
import pathlib
from typing import TypedDict

import nibabel as nib
import numpy as np
from PIL import Image
import pydicom
from pydicom import errors as dicom_errors

from medclr.data import readers

DataError = readers.DataError

# Array axis of each anatomical slicing direction in RAS voxel order.
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
NORMALIZATIONS = ("percentile", "minmax")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIX = ".dcm"
# LPS (DICOM patient coordinates) -> RAS (NIfTI world coordinates).
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class Slice(TypedDict):
  """One 2D slice of a volume, as written to the records."""
  image: np.ndarray  # uint8 (H, W, 1), or float32 (H, W, 1) in [0, 1]
  stem: str  # '<volume>_<slice_index:04d>', unique in a split
  volume: str  # the volume's file (or DICOM folder) name without suffix
  volume_id: int  # index of the volume in the prepared split
  slice_index: int  # 0 .. num_slices - 1 along the slicing axis
  num_slices: int
  position: float  # slice_index / (num_slices - 1); 0 when num_slices == 1


@dataclasses.dataclass(frozen=True)
class VolumeOptions:
  """How volumes become slices.

  Attributes:
    axis: slicing direction, one of AXES ('axial' default).
    normalization: 'percentile' clips each volume to its `percentiles` and
      scales that range to [0, 1]; 'minmax' scales [min, max] to [0, 1].
    percentiles: (low, high) percentiles for 'percentile'. (1, 99) is
      krishnabits001/domain_specific_cl dataloaders.normalize_minmax_data;
      they do not clip (their augmentation clips to [0, 1.5]), here values
      are clipped to [0, 1] because slices are stored as uint8.
    size: if set, each slice is zero-padded to a square (centred) and resized
      to size x size (bilinear, antialiased); None keeps the native size.
      In-plane voxel spacing is not resampled: prepare isotropic data if the
      aspect ratio matters.
    dtype: 'uint8' (what the records store) or 'float32'.
  """
  axis: str = "axial"
  normalization: str = "percentile"
  percentiles: tuple[float, float] = (1.0, 99.0)
  size: int | None = None
  dtype: str = "uint8"

  def __post_init__(self):
    if self.axis not in AXES:
      raise DataError(f"volume axis {self.axis!r} is unknown; expected one of "
                      f"{sorted(AXES)}")
    if self.normalization not in NORMALIZATIONS:
      raise DataError(f"volume normalization {self.normalization!r} is "
                      f"unknown; expected one of {NORMALIZATIONS}")
    low, high = (float(p) for p in self.percentiles)
    if not 0.0 <= low < high <= 100.0:
      raise DataError(f"volume percentiles must be (low, high) with 0 <= low "
                      f"< high <= 100, got {self.percentiles}")
    object.__setattr__(self, "percentiles", (low, high))
    if self.size is not None and self.size < 1:
      raise DataError(f"slice size must be >= 1 or None, got {self.size}")
    if self.dtype not in ("uint8", "float32"):
      raise DataError(f"slice dtype must be 'uint8' or 'float32', got "
                      f"{self.dtype!r}")


# ---------------------------------------------------------------------------
# Slice bookkeeping shared by readers, records and the pipeline.


def slice_position(slice_index: int, num_slices: int) -> float:
  """Relative position in [0, 1]: index / (num_slices - 1), 0 for 1 slice.

  PCL's code (dewenzeng/positional_cl dataset/chd.py) uses (index + 1) / n;
  index / (n - 1) spans exactly [0, 1], so the two ends of every volume get
  the same positions whatever its length.
  """
  if num_slices < 1 or not 0 <= slice_index < num_slices:
    raise ValueError(f"slice_index {slice_index} is not in [0, {num_slices})")
  return 0.0 if num_slices == 1 else slice_index / (num_slices - 1)


def partition_of(slice_index, num_slices, partitions: int):
  """Which of `partitions` equal parts of its volume a slice lies in.

  floor(partitions * index / num_slices), so part p holds the indices in
  [p * n / S, (p + 1) * n / S). Chaitanya's sampler
  (domain_specific_cl utils.sample_minibatch_for_global_loss_opti) uses parts
  of int(n / S) slices and never samples the n mod S last slices; here every
  slice belongs to a part. Works on ints and numpy arrays.
  """
  if partitions < 1:
    raise ValueError(f"partitions must be >= 1, got {partitions}")
  return np.minimum((np.asarray(slice_index) * partitions) //
                    np.asarray(num_slices), partitions - 1).astype(np.int32)


# ---------------------------------------------------------------------------
# Readers.


def _as_3d(image, source: pathlib.Path):
  """Drops a trailing singleton 4th axis; raises unless the image is 3D."""
  shape = image.shape
  if len(shape) == 4 and shape[3] == 1:
    image = image.slicer[..., 0]
    shape = image.shape
  if len(shape) != 3:
    raise DataError(f"{source} has shape {tuple(shape)} ({len(shape)}D); "
                    "expected a 3D volume (x, y, z)")
  return image


def read_nifti(path: pathlib.Path | str) -> nib.Nifti1Image:
  """Loads a .nii / .nii.gz file as a 3D image (header and data checked).

  Raises:
    DataError: missing, unreadable or corrupt file, not a 3D volume, or a
      voxel-to-world affine that is not finite and invertible.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"NIfTI file not found: {path}")
  try:
    image = nib.load(str(path))
    image = _as_3d(image, path)
    # Decode now: a truncated .gz only fails when the data is read.
    data = np.asarray(image.dataobj, dtype=np.float32)
    affine = np.asarray(image.affine, np.float64)
  except DataError:
    raise
  except Exception as e:  # nibabel raises many types for corrupt files
    raise DataError(f"cannot read {path} as NIfTI ({type(e).__name__}: {e}); "
                    "expected a readable .nii or .nii.gz volume") from e
  _check_affine(affine, path)
  return nib.Nifti1Image(data, affine)


def _check_affine(affine: np.ndarray, path: pathlib.Path) -> None:
  """DataError unless the voxel-to-world affine is finite and invertible.

  Reorientation to RAS reads the voxel axes' directions off the affine; a
  singular one (a zero or repeated axis, e.g. a zero pixdim in the sform)
  names no direction for some axis, and nibabel then fails obscurely or
  picks an arbitrary axis order.
  """
  linear = affine[:3, :3]
  norms = np.linalg.norm(linear, axis=0)
  singular = (not np.isfinite(affine).all() or not norms.all() or
              abs(np.linalg.det(linear)) <= 1e-6 * np.prod(norms))
  if singular:
    shown = np.array2string(linear, precision=3, separator=", ",
                            suppress_small=True).replace("\n", "")
    raise DataError(
        f"{path}: its voxel-to-world affine (sform/qform) is not finite and "
        f"invertible (3x3 part {shown}); expected three independent voxel "
        "axes with non-zero spacing: fix the header's sform/qform (e.g. with "
        "nibabel) before preparing")


def _read_dicom_file(path: pathlib.Path):
  try:
    dataset = pydicom.dcmread(str(path))
  except (dicom_errors.InvalidDicomError, OSError, ValueError, EOFError) as e:
    raise DataError(f"cannot read {path} as DICOM ({type(e).__name__}: "
                    f"{e})") from e
  if "PixelData" not in dataset:
    raise DataError(f"{path} has no pixel data (not an image slice)")
  return dataset


def _has_geometry(dataset) -> bool:
  return all(key in dataset for key in ("ImagePositionPatient",
                                        "ImageOrientationPatient"))


def _orientation(datasets, paths, folder: pathlib.Path) -> np.ndarray:
  """The series' ImageOrientationPatient: two unit, orthogonal cosines,
  the same for every slice (DataError naming the file otherwise)."""
  first = np.asarray(datasets[0].ImageOrientationPatient, np.float64)
  row, col = first[:3], first[3:]
  if (first.shape != (6,) or not np.isfinite(first).all() or
      abs(np.linalg.norm(row) - 1) > 1e-3 or
      abs(np.linalg.norm(col) - 1) > 1e-3 or abs(np.dot(row, col)) > 1e-3):
    raise DataError(
        f"DICOM series {folder}: {paths[0].name} has ImageOrientationPatient "
        f"{first.tolist()}; expected two orthogonal unit direction cosines")
  for dataset, path in zip(datasets, paths):
    other = np.asarray(dataset.ImageOrientationPatient, np.float64)
    if other.shape != first.shape or np.abs(other - first).max() > 1e-3:
      raise DataError(
          f"DICOM series {folder} mixes slice orientations: {path.name} has "
          f"ImageOrientationPatient {other.tolist()} but {paths[0].name} "
          f"{first.tolist()}; expected the parallel slices of one series")
  return first


def _check_even(values: np.ndarray, names: list[str], folder: pathlib.Path,
                unit: str, along: str) -> None:
  """DataError naming the gap when sorted slice coordinates are not evenly
  spaced (a missing slice: positions would be wrong for every later one)."""
  if len(values) < 3:
    return
  steps = np.diff(values)
  typical = float(np.median(steps))
  worst = int(np.argmax(np.abs(steps - typical)))
  if abs(steps[worst] - typical) > 0.1 * typical:
    raise DataError(
        f"DICOM series {folder}: its slices are {typical:g}{unit} apart "
        f"{along}, but {names[worst]} and {names[worst + 1]} are "
        f"{steps[worst]:g}{unit} apart; expected evenly spaced slices (is a "
        "slice missing?)")


def _slice_order(datasets, paths, folder: pathlib.Path):
  """Indices sorting the slices along the slice normal (or InstanceNumber).

  Returns:
    (order, geometry): geometry is (normal, row_cosine, col_cosine) when
    every slice has ImagePositionPatient/ImageOrientationPatient, else None.
  """
  if all(_has_geometry(d) for d in datasets):
    orientation = _orientation(datasets, paths, folder)
    # IOP = (direction of increasing column index; of increasing row index).
    row_cosine, col_cosine = orientation[:3], orientation[3:]
    normal = np.cross(row_cosine, col_cosine)
    distance = [float(np.dot(np.asarray(d.ImagePositionPatient, np.float64),
                             normal)) for d in datasets]
    order = list(np.argsort(distance, kind="stable"))
    sorted_distance = np.asarray(distance)[order]
    if len(order) > 1 and np.min(np.diff(sorted_distance)) < 1e-6:
      dup = int(np.argmin(np.diff(sorted_distance)))
      raise DataError(
          f"DICOM series {folder}: {paths[order[dup]].name} and "
          f"{paths[order[dup + 1]].name} lie at the same position along the "
          "slice normal; expected one slice per position")
    _check_even(sorted_distance, [paths[i].name for i in order], folder,
                " mm", "along the slice normal")
    return order, (normal, row_cosine, col_cosine)
  if all("InstanceNumber" in d for d in datasets):
    numbers = [int(d.InstanceNumber) for d in datasets]
    if len(set(numbers)) != len(numbers):
      raise DataError(f"DICOM series {folder} has no slice geometry and "
                      "repeated InstanceNumbers; cannot order its slices")
    order = list(np.argsort(numbers, kind="stable"))
    _check_even(np.asarray(numbers, np.float64)[order],
                [paths[i].name for i in order], folder, "",
                "in InstanceNumber")
    return order, None
  raise DataError(
      f"DICOM series {folder}: slices have neither ImagePositionPatient + "
      "ImageOrientationPatient nor InstanceNumber; cannot order them")


def _dicom_pixels(dataset, path: pathlib.Path) -> np.ndarray:
  try:
    pixels = dataset.pixel_array.astype(np.float32)
  except Exception as e:  # missing codec, corrupt pixel data, ...
    raise DataError(f"cannot decode the pixel data of {path} "
                    f"({type(e).__name__}: {e})") from e
  if pixels.ndim != 2:
    raise DataError(f"{path} holds pixel data of shape {pixels.shape}; "
                    "expected one 2D grayscale slice per file")
  slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
  intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
  return pixels * slope + intercept


def _dicom_affine(datasets, geometry) -> np.ndarray:
  """RAS affine of the (row, col, slice) voxel array of a sorted series."""
  if geometry is None:
    return np.eye(4)  # no geometry: the stacking axis is taken as axial
  normal, row_cosine, col_cosine = geometry
  first = np.asarray(datasets[0].ImagePositionPatient, np.float64)
  spacing = [float(s) for s in datasets[0].get("PixelSpacing", (1.0, 1.0))]
  if len(datasets) > 1:
    last = np.asarray(datasets[-1].ImagePositionPatient, np.float64)
    step = (last - first) / (len(datasets) - 1)
  else:
    step = normal * float(datasets[0].get("SliceThickness", 1.0) or 1.0)
  affine = np.eye(4)
  # Row index r moves along the column cosine by PixelSpacing[0] (the
  # distance between rows), column index c along the row cosine.
  affine[:3, 0] = col_cosine * spacing[0]
  affine[:3, 1] = row_cosine * spacing[1]
  affine[:3, 2] = step
  affine[:3, 3] = first
  return _LPS_TO_RAS @ affine


def read_dicom_series(folder: pathlib.Path | str) -> nib.Nifti1Image:
  """Reads a folder of .dcm files of ONE series into a 3D image.

  Slices are ordered by ImagePositionPatient projected on the slice normal
  (the cross product of the ImageOrientationPatient cosines), or by
  InstanceNumber when the geometry tags are missing. Pixel values get
  RescaleSlope/RescaleIntercept applied (e.g. CT Hounsfield units).

  Raises:
    DataError: no .dcm files, an unreadable file, mixed SeriesInstanceUIDs,
      slices of different sizes or orientations, slices that cannot be
      ordered, or unevenly spaced slices (a gap: a missing file would shift
      the position of every later slice).
  """
  folder = pathlib.Path(folder)
  paths = sorted(p for p in folder.iterdir()
                 if p.is_file() and p.name.lower().endswith(DICOM_SUFFIX))
  if not paths:
    raise DataError(f"DICOM series folder {folder} holds no {DICOM_SUFFIX} "
                    "files; expected the slices of one series")
  datasets = [_read_dicom_file(p) for p in paths]
  uids = sorted({str(d.get("SeriesInstanceUID", "")) for d in datasets})
  if len(uids) > 1:
    raise DataError(
        f"DICOM folder {folder} mixes {len(uids)} series (SeriesInstanceUID "
        f"{', '.join(uids[:3])}{', ...' if len(uids) > 3 else ''}); put each "
        "series in its own folder")
  order, geometry = _slice_order(datasets, paths, folder)
  datasets = [datasets[i] for i in order]
  paths = [paths[i] for i in order]
  pixels = [_dicom_pixels(d, p) for d, p in zip(datasets, paths)]
  shapes = {p.shape for p in pixels}
  if len(shapes) > 1:
    odd = next(i for i, p in enumerate(pixels) if p.shape != pixels[0].shape)
    raise DataError(f"DICOM series {folder}: {paths[odd].name} has size "
                    f"{pixels[odd].shape} but {paths[0].name} has "
                    f"{pixels[0].shape}; all slices must have the same size")
  volume = np.stack(pixels, axis=-1)  # (rows, cols, slices)
  return nib.Nifti1Image(volume, _dicom_affine(datasets, geometry))


def is_nifti(path: pathlib.Path) -> bool:
  return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


# 2D image files that a folder may stack into one volume (serial sections).
STACK_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def stack_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """The 2D image files directly in `folder`, in natural order (2 < 10)."""
  files = [p for p in folder.iterdir()
           if p.is_file() and p.name.lower().endswith(STACK_SUFFIXES)]
  return sorted(files, key=lambda p: readers.natural_key(p.stem))


def read_image_stack(folder: pathlib.Path) -> np.ndarray:
  """A folder of equally sized 2D images as float32 (H, W, slices); the
  file order (natural sort of the names) is the slice order. 16-bit and
  float images keep their values (the volume's normalisation scales them);
  colour images become luminance."""
  images = []
  for path in stack_files(folder):
    image = readers._open(path)  # pylint: disable=protected-access
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
      # Raw values: the volume's own normalisation scales them (Pillow's
      # convert("L") would clip 16-bit values at 255).
      images.append(np.asarray(image, np.float32))
    else:
      images.append(np.asarray(image.convert("L"), np.float32))
  shapes = sorted({im.shape for im in images})
  if len(shapes) != 1:
    raise DataError(f"{folder}: stacked images must share one size, found "
                    f"{shapes[:3]}")
  return np.stack(images, axis=-1)


def is_dicom_series(path: pathlib.Path) -> bool:
  return path.is_dir() and any(
      p.is_file() and p.name.lower().endswith(DICOM_SUFFIX)
      for p in path.iterdir())


def volume_name(path: pathlib.Path) -> str:
  """File name without .nii/.nii.gz, or the DICOM folder's name."""
  name = path.name
  for suffix in NIFTI_SUFFIXES:
    if name.lower().endswith(suffix):
      return name[:-len(suffix)]
  return name


def load_volume(path: pathlib.Path | str) -> np.ndarray:
  """A NIfTI file or DICOM series folder as float32 (x, y, z) in RAS order.

  Raises:
    DataError: see `read_nifti` and `read_dicom_series`; `path` is neither
      a NIfTI file nor a folder of .dcm files; or the volume holds NaN or
      infinite voxels.
  """
  path = pathlib.Path(path)
  if is_nifti(path):
    image = read_nifti(path)
  elif path.is_dir() and not is_dicom_series(path) and stack_files(path):
    # Serial sections carry no orientation: (H, W) in plane, then order.
    return _finite(read_image_stack(path), path)
  elif path.is_dir():
    image = read_dicom_series(path)
  else:
    raise DataError(f"{path} is neither a .nii/.nii.gz file nor a folder of "
                    f"{DICOM_SUFFIX} files")
  canonical = nib.as_closest_canonical(image)
  return _finite(np.asarray(canonical.dataobj, dtype=np.float32), path)


def _finite(volume: np.ndarray, path: pathlib.Path) -> np.ndarray:
  """`volume`, or DataError when it holds NaN/inf voxels."""
  return readers.check_finite(volume, path, unit="voxel",
                              fill="the background value")


def find_volumes(manual_dir: pathlib.Path | str) -> list[pathlib.Path]:
  """The volumes directly inside `manual_dir`, sorted by name.

  A volume is a .nii / .nii.gz file or a sub-folder holding .dcm files (one
  DICOM series). Other files are ignored. A folder of 2D images and no
  volumes (serial sections, e.g. the ISBI 2012 EM stack) is one volume,
  its slices in the natural order of the file names (`read_image_stack`).

  Raises:
    DataError: `manual_dir` is not a folder, holds no volume, or two volumes
      have the same name (e.g. a.nii and a.nii.gz).
  """
  manual_dir = pathlib.Path(manual_dir).expanduser()
  if not manual_dir.is_dir():
    raise DataError(f"volume folder {manual_dir} is not a directory")
  found = sorted(p for p in manual_dir.iterdir()
                 if is_nifti(p) or is_dicom_series(p))
  if not found and len(stack_files(manual_dir)) > 1:
    return [manual_dir]  # the folder itself is one stack of sections
  if not found:
    raise DataError(
        f"no volumes in {manual_dir}: expected .nii/.nii.gz files or "
        f"sub-folders of {DICOM_SUFFIX} files (one DICOM series each)")
  names = [volume_name(p) for p in found]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise DataError(f"{manual_dir} has several volumes named "
                    f"{duplicates[:3]}; volume names must be unique")
  return found


# ---------------------------------------------------------------------------
# Volume -> slices.


def normalize(volume: np.ndarray, method: str = "percentile",
              percentiles: tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
  """Per-volume intensity normalisation to float32 [0, 1] (see VolumeOptions).

  A constant volume maps to zeros.
  """
  volume = np.asarray(volume, np.float32)
  if method == "percentile":
    low, high = np.percentile(volume, percentiles)
  elif method == "minmax":
    low, high = float(volume.min()), float(volume.max())
  else:
    raise DataError(f"volume normalization {method!r} is unknown; expected "
                    f"one of {NORMALIZATIONS}")
  if high <= low:
    return np.zeros_like(volume)
  return np.clip((volume - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _oriented_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
  # rot90 puts the higher coordinate of the slice's second axis at the top
  # (anterior for axial, superior for sagittal/coronal), the usual display.
  return np.rot90(np.take(volume, index, axis=axis))


def _pad_to_square(image: np.ndarray) -> np.ndarray:
  height, width = image.shape
  side = max(height, width)
  top, left = (side - height) // 2, (side - width) // 2
  padded = np.zeros((side, side), image.dtype)
  padded[top:top + height, left:left + width] = image
  return padded


def resize_slice(image: np.ndarray, size: int) -> np.ndarray:
  """Zero-pads a float (H, W) slice to a centred square, resizes to size^2."""
  square = _pad_to_square(np.asarray(image, np.float32))
  if square.shape[0] == size:
    return square
  resized = Image.fromarray(square, mode="F").resize((size, size),
                                                     Image.BILINEAR)
  return np.asarray(resized, np.float32)


def _to_dtype(image: np.ndarray, dtype: str) -> np.ndarray:
  image = np.clip(image, 0.0, 1.0)[..., None]
  if dtype == "uint8":
    return np.round(image * 255.0).astype(np.uint8)
  return image.astype(np.float32)


def volume_slices(volume: np.ndarray, name: str, volume_id: int,
                  options: VolumeOptions = VolumeOptions()) -> list[Slice]:
  """Normalises a RAS (x, y, z) volume and cuts it into `Slice`s.

  Args:
    volume: 3D array, e.g. from `load_volume`.
    name: the volume's name (stems are '<name>_<index:04d>').
    volume_id: the id written into every slice.
    options: axis, normalisation, size, dtype.

  Returns:
    One Slice per index along `options.axis`, in order.

  Raises:
    DataError: the volume is not 3D or has fewer than 2 slices on the axis.
  """
  volume = np.asarray(volume)
  if volume.ndim != 3:
    raise DataError(f"volume {name!r} has shape {volume.shape}; expected 3D")
  axis = AXES[options.axis]
  num_slices = volume.shape[axis]
  if num_slices < 2:
    raise DataError(
        f"volume {name!r} has {num_slices} slice along the {options.axis} "
        f"axis (shape {volume.shape}); expected a 3D volume with >= 2 slices")
  volume = normalize(volume, options.normalization, options.percentiles)
  slices = []
  for index in range(num_slices):
    image = _oriented_slice(volume, axis, index)
    if options.size:
      image = resize_slice(image, options.size)
    slices.append(Slice(
        image=_to_dtype(image, options.dtype),
        stem=f"{name}_{index:04d}", volume=name, volume_id=int(volume_id),
        slice_index=index, num_slices=num_slices,
        position=slice_position(index, num_slices)))
  return slices


def read_volume_folder(manual_dir: pathlib.Path | str,
                       options: VolumeOptions = VolumeOptions()
                       ) -> list[Slice]:
  """All volumes of `manual_dir` (see find_volumes) as slices.

  Volume ids follow the sorted volume names: 0, 1, 2, ...
  """
  slices = []
  for volume_id, path in enumerate(find_volumes(manual_dir)):
    slices += volume_slices(load_volume(path), volume_name(path), volume_id,
                            options)
  return slices


# ---------------------------------------------------------------------------
# Synthetic volumes.


def _disc(yy, xx, cy, cx, radius):
  return ((yy - cy) ** 2 + (xx - cx) ** 2) <= radius ** 2


def synthetic_volumes(num_volumes: int = 12, num_slices: int = 24,
                      size: int = 64, seed: int = 0) -> list[np.ndarray]:
  """Procedural torso-like volumes, float32 (x, y, z) in arbitrary units.

  Each axial slice shows an elliptical body whose width swells towards the
  middle of the volume, a bright "spine" disc near the back, an "organ A"
  disc on the left in the lower part (relative position 0.1-0.45), and an
  "organ B" ring on the right in the upper part (0.55-0.9). Per volume the
  body size, organ positions and extents, intensity scale/offset and noise
  are jittered. So slices at the same relative position of different volumes
  look alike (what G^D and PCL treat as positives) and position is visible.

  Args:
    num_volumes: how many volumes.
    num_slices: slices along z (axial) per volume.
    size: in-plane side (x and y) in voxels.
    seed: numpy seed; the same arguments give the same volumes.

  Returns:
    List of `num_volumes` arrays of shape (size, size, num_slices).
  """
  if num_volumes < 1 or num_slices < 2 or size < 8:
    raise ValueError("synthetic_volumes needs num_volumes >= 1, num_slices >= "
                     f"2 and size >= 8; got {num_volumes}, {num_slices}, "
                     f"{size}")
  rng = np.random.default_rng(seed)
  # Display coordinates (row = anterior -> posterior, col = x) of one slice.
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  volumes = []
  for _ in range(num_volumes):
    body_scale = rng.uniform(0.85, 1.1)
    centre = 0.5 + rng.uniform(-0.04, 0.04, size=2)
    organ_a = (rng.uniform(0.08, 0.14), rng.uniform(0.42, 0.48))
    organ_b = (rng.uniform(0.52, 0.58), rng.uniform(0.86, 0.92))
    gain, offset = rng.uniform(600, 1400), rng.uniform(-200, 200)
    volume = np.empty((size, size, num_slices), np.float32)
    for k in range(num_slices):
      t = k / (num_slices - 1)
      radius_x = body_scale * (0.28 + 0.12 * np.sin(np.pi * t))
      radius_y = 0.75 * radius_x
      body = (((xx - centre[1]) / radius_x) ** 2 +
              ((yy - centre[0]) / radius_y) ** 2) <= 1.0
      image = 0.3 * body.astype(np.float32)
      image[_disc(yy, xx, centre[0] + 0.6 * radius_y, centre[1], 0.05)] = 1.0
      if organ_a[0] <= t <= organ_a[1]:
        image[_disc(yy, xx, centre[0], centre[1] - 0.45 * radius_x,
                    0.35 * radius_y)] = 0.7
      if organ_b[0] <= t <= organ_b[1]:
        ring = _disc(yy, xx, centre[0], centre[1] + 0.45 * radius_x,
                     0.35 * radius_y) & ~_disc(
                         yy, xx, centre[0], centre[1] + 0.45 * radius_x,
                         0.2 * radius_y)
        image[ring] = 0.55
      image += rng.normal(0.0, 0.03, image.shape).astype(np.float32)
      # Undo the display rotation of _oriented_slice: rows run anterior ->
      # posterior there, i.e. display = rot90(volume[:, :, k]).
      volume[:, :, k] = np.rot90(image, k=-1)
    volumes.append(gain * volume + offset)
  return volumes


def write_nifti(folder: pathlib.Path | str, volumes: list[np.ndarray],
                prefix: str = "volume",
                spacing: tuple[float, float, float] = (1.0, 1.0, 2.0)
                ) -> list[pathlib.Path]:
  """Saves RAS (x, y, z) arrays as <folder>/<prefix>_<i:03d>.nii.gz."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  affine = np.diag(list(spacing) + [1.0])
  paths = []
  for index, volume in enumerate(volumes):
    path = folder / f"{prefix}_{index:03d}.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(volume, np.float32), affine),
             str(path))
    paths.append(path)
  return paths
