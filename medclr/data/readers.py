"""Readers that turn image folders on disk into in-memory examples.

Every reader validates all of its inputs (existence, decodability, matching
sizes) and returns a complete list of examples, so that nothing is written to
a dataset until the whole split is known to be good.

An example is a plain dict (see `Example`):
  image: uint8 (H, W, C), C in {1, 3}.
  mask: uint8 (H, W) class indices (binary sets: 0 background, 1 foreground).
  fov: uint8 (H, W) in {0, 1}; 1 where pixels belong to the field of view.
  has_mask: bool, False for unlabelled images (mask is then all zeros).
  stem: str, the image file name without extension.
  source_bytes (optional): the image file's bytes, present when `image` is
    that JPEG or PNG file decoded and not resized; the record writer then
    stores these bytes rather than re-encoding the pixels
    (`medclr.data.image_codec`).

How pixel values become uint8 (`load_image`):
  8-bit grayscale/RGB: as stored. Palette images are mapped to RGB.
  Transparency (RGBA, LA, palette with a transparent index): composited over
    black, so a transparent pixel reads as background (0) whatever colour it
    carries.
  16-bit grayscale (and 32-bit integer images holding values 0..65535):
    scaled by the bit depth, round(v * 255 / 65535), the same mapping for
    every image of a set. Images whose values all lie below 4096 are taken
    as 12-bit data in a 16-bit container (common for X-ray/CT exports) and
    scaled by round(v * 255 / 4095). 16-bit RGB TIFFs (fundus cameras)
    are decoded by Pillow, which keeps each value's high byte, v // 256.
  Signed integer images with negative values or values above 65535: their own
    [min, max] is mapped onto [0, 255] (there is no fixed range to scale by).
  32-bit float: values in [0, 1] are scaled by 255; any other range is mapped
    from the image's own [min, max]. NaN or infinite pixels are refused.
  Multi-frame files (multi-page TIFF, animated GIF) are refused: a 2D set
    holds one image per file (stacks of slices go to launch.prepare_volumes).

Masks (`load_mask`) hold 0/255 or 0/1 binary values or class indices
0..MAX_CLASS_INDEX, in a grayscale or palette file; grey levels beyond that
(an anti-aliased, interpolated or lossy-saved mask) and colour masks are
refused with the file named, since no rule recovers class indices from them.
"""
import pathlib
import re
from typing import Callable, NotRequired, TypedDict

import numpy as np
from PIL import Image
from PIL import ImageFile

from medclr import errors

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".ppm")
_LOSSY_EXTENSIONS = (".jpg", ".jpeg")
# Formats whose file bytes a record may store as they are (image_codec).
_KEPT_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Highest class index a mask may hold (besides a 0/255 binary mask): above
# it, values are grey levels rather than classes.
MAX_CLASS_INDEX = 63
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


DataError = errors.DataError


class Example(TypedDict):
  image: np.ndarray
  mask: np.ndarray
  fov: np.ndarray
  has_mask: bool
  stem: str
  source_bytes: NotRequired[bytes]


# ---------------------------------------------------------------------------
# Single files.


def _open(path: pathlib.Path,
          draft_size: tuple[int, int] | None = None) -> Image.Image:
  """Opens and fully decodes `path`, turning any decoder failure into DataError.

  Args:
    path: the file.
    draft_size: (W, H) the caller will downscale to. JPEG can then decode at
      1/2, 1/4 or 1/8 scale in the DCT domain, which makes reading HRF's
      3504x2336 photos several times faster.
  """
  # A truncated file must fail, even if something in the process (e.g.
  # TFDS's thumbnail code) told Pillow to fill missing data with grey.
  allow_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
  ImageFile.LOAD_TRUNCATED_IMAGES = False
  try:
    image = Image.open(path)
    if draft_size is not None and image.format == "JPEG":
      image.draft(image.mode, draft_size)
    image.load()
  except FileNotFoundError as e:
    raise DataError(f"file not found: {path}") from e
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    hint = ""
    if path.suffix.lower() in (".tif", ".tiff"):
      hint = (" (readable TIFFs: 8/16-bit integer or 32-bit float grayscale, "
              "8/16-bit RGB(A); not 64-bit or multi-channel float)")
    raise DataError(
        f"cannot decode {path} as an image ({type(e).__name__}: {e}); "
        f"expected a readable png/jpg/tif/gif/ppm file{hint}") from e
  finally:
    ImageFile.LOAD_TRUNCATED_IMAGES = allow_truncated
  frames = getattr(image, "n_frames", 1)
  # MPO (multi-picture JPEG from some cameras): frame 0 is the photo, the
  # others previews; Pillow reads frame 0.
  if frames > 1 and image.format != "MPO":
    raise DataError(
        f"{path} holds {frames} frames (a multi-page or animated file); "
        "expected one 2D image per file (a stack of slices is prepared with "
        "launch.prepare_volumes)")
  return image


def _rescale_to_uint8(array: np.ndarray) -> np.ndarray:
  """Linearly maps an array's own [min, max] onto [0, 255] (constant: 0)."""
  array = array.astype(np.float64)
  low, high = float(array.min()), float(array.max())
  if high <= low:
    return np.zeros(array.shape, np.uint8)
  return np.round((array - low) * (255.0 / (high - low))).astype(np.uint8)


def check_finite(array: np.ndarray, path: pathlib.Path, unit: str = "pixel",
                 fill: str = "0") -> np.ndarray:
  """`array`, or DataError naming `path` when it holds NaN/inf values
  (rescaling would silently turn the image to garbage)."""
  bad = ~np.isfinite(array)
  if bad.any():
    raise DataError(
        f"{path} has {int(bad.sum())} NaN or infinite {unit}(s) (of "
        f"{array.size}); expected finite values (replace them, e.g. with "
        f"{fill}, before preparing)")
  return array


def _deep_to_uint8(array: np.ndarray) -> np.ndarray:
  """uint8 from 16-bit (or wider integer) values; see the module docstring."""
  low, high = int(array.min()), int(array.max())
  if low < 0 or high > 65535:
    return _rescale_to_uint8(array)
  depth = 4095 if high < 4096 else 65535  # 12-bit data in a 16-bit file
  return np.round(array.astype(np.float64) * (255.0 / depth)).astype(np.uint8)


def _float_to_uint8(array: np.ndarray, path: pathlib.Path) -> np.ndarray:
  """uint8 from float pixels: [0, 1] scaled by 255, else own [min, max]."""
  check_finite(array, path)
  if array.size and array.min() >= 0.0 and array.max() <= 1.0:
    return np.round(array.astype(np.float64) * 255.0).astype(np.uint8)
  return _rescale_to_uint8(array)


def _has_alpha(image: Image.Image) -> bool:
  return (image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or
          (image.mode in ("P", "L", "RGB") and "transparency" in image.info))


def _over_black(image: Image.Image) -> np.ndarray:
  """uint8 (H, W, 1|3) of an image with transparency composited over black:
  a transparent pixel is background (0), a half-transparent one half as
  bright, whatever colour the file stores under it."""
  mode = "LA" if image.mode in ("L", "LA", "La") else "RGBA"
  array = np.asarray(image.convert(mode)).astype(np.float64)
  return np.round(array[..., :-1] * (array[..., -1:] / 255.0)).astype(np.uint8)


def image_to_array(image: Image.Image, path: pathlib.Path | str) -> np.ndarray:
  """uint8 (H, W, 1) for grayscale images, (H, W, 3) for colour (see the
  module docstring); `path` names the file in errors."""
  if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
    return _deep_to_uint8(np.asarray(image))[..., None]
  if image.mode == "F":
    return _float_to_uint8(np.asarray(image), path)[..., None]
  if _has_alpha(image):
    return _over_black(image)
  if image.mode in ("1", "L"):
    return np.asarray(image.convert("L"))[..., None]
  if image.mode == "RGB":
    # As stored: convert() would only copy it, a sixth of the time of
    # reading a pool JPEG back from its record.
    return np.asarray(image)
  # Palette, CMYK, YCbCr, ...: Pillow knows how to map them to RGB.
  return np.asarray(image.convert("RGB"))


def _label_to_array(image: Image.Image, path: pathlib.Path) -> np.ndarray:
  """Returns the raw label values of a mask file as uint8 (H, W).

  Raises:
    DataError: a colour mask (other than a lossy JPEG of a grey one),
      values outside 0..255, non-integer or non-finite float values.
  """
  lossy = path.suffix.lower() in _LOSSY_EXTENSIONS
  if image.mode == "P":
    # Palette masks store class indices directly (DRIVE's 2nd_manual is {0,1}).
    return np.asarray(image).astype(np.uint8)
  if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
    array = np.asarray(image)
    if image.mode == "F":
      check_finite(array, path)
      if (array != np.round(array)).any():
        raise DataError(
            f"mask {path} holds non-integer values (e.g. "
            f"{array[array != np.round(array)].flat[0]:g}); expected class "
            f"indices 0..{MAX_CLASS_INDEX} or a 0/255 or 0/1 binary mask")
    if array.min() < 0 or array.max() > 255:
      raise DataError(
          f"mask {path} has values in [{array.min():g}, {array.max():g}]; "
          f"expected class indices 0..{MAX_CLASS_INDEX} (or a 0/255 or 0/1 "
          "binary mask)")
    return array.astype(np.uint8)
  if _has_alpha(image):
    array = _over_black(image)  # transparent pixels are background
  elif image.mode in ("1", "L"):
    return np.asarray(image.convert("L"))
  else:
    array = np.asarray(image.convert("RGB"))
  if array.shape[-1] == 1 or (array == array[..., :1]).all():
    return array[..., 0].copy()
  if lossy:  # a grey mask saved as colour JPEG: channels differ slightly
    return np.round(array.mean(-1)).astype(np.uint8)
  raise DataError(
      f"mask {path} is a colour image (its R, G and B differ); expected a "
      "grayscale or palette mask of class indices (0/255, 0/1 or "
      f"0..{MAX_CLASS_INDEX}): map each colour to a class index first")


def labels_to_classes(values: np.ndarray, lossy: bool = False,
                      path: pathlib.Path | None = None) -> np.ndarray:
  """Maps raw mask values to class indices.

  Args:
    values: uint8 (H, W) raw mask values.
    lossy: the file was JPEG-compressed, so a binary mask holds values near
      0 and 255 rather than exactly; it is thresholded at 127.
    path: the file, named in errors.

  Returns:
    uint8 (H, W): {0,255} -> {0,1}; {0,1} unchanged; values up to
    MAX_CLASS_INDEX are taken as class indices and kept as is.

  Raises:
    DataError: values above MAX_CLASS_INDEX other than a 0/255 binary mask:
      grey levels (an anti-aliased or interpolated mask), not classes.
  """
  present = np.unique(values)
  if lossy:
    return (values > 127).astype(np.uint8)
  if np.isin(present, (0, 255)).all():
    return (values == 255).astype(np.uint8)
  if present.max() > MAX_CLASS_INDEX:
    grey = int(((values > 0) & (values < 255)).sum())
    shown = ", ".join(str(v) for v in present[:6])
    raise DataError(
        f"mask {path or ''} holds {len(present)} distinct values ({shown}"
        f"{', ...' if len(present) > 6 else ''}; {grey} pixel(s) strictly "
        "between 0 and 255); expected a binary mask (0/255 or 0/1) or class "
        f"indices 0..{MAX_CLASS_INDEX}. Grey levels (anti-aliased edges, a "
        "mask resized with interpolation or saved lossily) must be "
        "thresholded or mapped to class indices first")
  return values.astype(np.uint8)


def load_image(path: pathlib.Path, long_side: int | None = None) -> np.ndarray:
  """Reads an image as uint8 (H, W, C), C in {1, 3}.

  Args:
    path: image file.
    long_side: if given and smaller than max(H, W), the image is downscaled
      (Lanczos) so that max(H, W) == long_side.

  Returns:
    The decoded image.

  Raises:
    DataError: the file is missing, cannot be decoded, holds several frames
      or NaN/infinite pixels.
  """
  path = pathlib.Path(path)
  draft_size = None
  if long_side:
    draft_size = _target_size(_size_hw(path)[::-1], long_side)
  image = _open(path, draft_size)
  array = image_to_array(image, path)
  return resize_image(array, long_side)


def load_mask(path: pathlib.Path) -> np.ndarray:
  """Reads a mask file as uint8 (H, W) class indices (see labels_to_classes)."""
  path = pathlib.Path(path)
  values = _label_to_array(_open(path), path)
  return labels_to_classes(
      values, lossy=path.suffix.lower() in _LOSSY_EXTENSIONS, path=path)


def load_binary(path: pathlib.Path) -> np.ndarray:
  """Reads a binary mask (vessels, FOV) as uint8 {0,1}: values > 127 are 1.

  Files that only hold {0,1} (e.g. palette GIFs) are taken as they are.
  """
  path = pathlib.Path(path)
  values = _label_to_array(_open(path), path)
  if values.max() <= 1:
    return values.astype(np.uint8)
  return (values > 127).astype(np.uint8)


# ---------------------------------------------------------------------------
# Resizing.


def _target_size(size_wh: tuple[int, int], long_side: int) -> tuple[int, int]:
  """(W, H) after scaling so that max(W, H) == long_side (never upscales)."""
  width, height = size_wh
  longest = max(width, height)
  if long_side >= longest:
    return width, height
  scale = long_side / longest
  return (max(1, round(width * scale)), max(1, round(height * scale)))


def resize_image(image: np.ndarray, long_side: int | None) -> np.ndarray:
  """Downscales uint8 (H, W, C) with Lanczos so that max(H, W) <= long_side."""
  if not long_side:
    return image
  height, width = image.shape[:2]
  target = _target_size((width, height), long_side)
  if target == (width, height):
    return image
  channels = image.shape[2]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  resized = np.asarray(pil.resize(target, Image.Resampling.LANCZOS))
  return resized[..., None] if channels == 1 else resized


def resize_labels(labels: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
  """Resizes uint8 (H, W) labels to `size_hw` with nearest neighbour."""
  if labels.shape == tuple(size_hw):
    return labels
  pil = Image.fromarray(labels)
  return np.asarray(pil.resize(size_hw[::-1], Image.Resampling.NEAREST))


# ---------------------------------------------------------------------------
# One example from its files.


def _size_hw(path: pathlib.Path) -> tuple[int, int]:
  """(H, W) from the file header; full decoding (and its errors) comes later."""
  try:
    with Image.open(path) as image:
      width, height = image.size
  except FileNotFoundError as e:
    raise DataError(f"file not found: {path}") from e
  except (OSError, SyntaxError, ValueError) as e:
    raise DataError(
        f"cannot decode {path} as an image ({type(e).__name__}: {e}); "
        "expected a readable png/jpg/tif/gif/ppm file") from e
  return height, width


def _load_labels(image_path, original_hw, mask_path, fov_path, binary_mask):
  """{'mask': ..., 'fov': ...} of the files given, checked against the image."""
  labels = {}
  for kind, path in (("mask", mask_path), ("fov", fov_path)):
    if path is None:
      continue
    path = pathlib.Path(path)
    hw = _size_hw(path)
    if hw != original_hw:
      raise DataError(
          f"{kind} {path} is {hw[1]}x{hw[0]} (WxH) but its image {image_path} "
          f"is {original_hw[1]}x{original_hw[0]}; they must have the same size")
    if kind == "mask" and not binary_mask:
      labels[kind] = load_mask(path)
    else:
      labels[kind] = load_binary(path)
  return labels


def load_example(image_path: pathlib.Path,
                 mask_path: pathlib.Path | None = None,
                 fov_path: pathlib.Path | None = None,
                 *,
                 long_side: int | None = None,
                 binary_mask: bool = False,
                 stem: str | None = None,
                 default_fov: Callable[[np.ndarray], np.ndarray] | None = None
                 ) -> Example:
  """Reads an image with its optional mask and field-of-view files.

  Args:
    image_path: the image file.
    mask_path: its mask (None: unlabelled, mask all zeros, has_mask False).
    fov_path: its field-of-view mask (None: `default_fov(image)`, or the
      whole image).
    long_side: optional downscale of the longest side (see load_image).
    binary_mask: threshold the mask at 127 instead of the generic
      0/255-0/1-class-index rule (for sets whose masks are known to be binary).
    stem: the example's name; default the image file name without extension.
    default_fov: estimates the FOV from the (resized) image when there is no
      FOV file (`medclr.data.fov.estimate_fov`, passed in by prepare).

  Returns:
    The example, all arrays at the (possibly resized) image size.

  Raises:
    DataError: a file is missing or corrupt, or a mask/FOV size differs from
      the image size (the message names both files and both sizes).
  """
  image_path = pathlib.Path(image_path)
  original_hw = _size_hw(image_path)
  labels = _load_labels(image_path, original_hw, mask_path, fov_path,
                        binary_mask)
  image = load_image(image_path, long_side)
  size_hw = image.shape[:2]
  mask = labels.get("mask", np.zeros(original_hw, np.uint8))
  if "fov" in labels:
    fov = labels["fov"]
  elif default_fov is not None:
    fov = default_fov(image)
  else:
    fov = np.ones(original_hw, np.uint8)
  example = Example(
      image=image,
      mask=resize_labels(mask, size_hw),
      fov=resize_labels(fov, size_hw),
      has_mask=mask_path is not None,
      stem=stem if stem is not None else image_path.stem)
  if (size_hw == original_hw and
      image_path.suffix.lower() in _KEPT_EXTENSIONS):
    example["source_bytes"] = image_path.read_bytes()
  return example


# ---------------------------------------------------------------------------
# Folders.


def _require_dir(path: pathlib.Path, what: str) -> None:
  if not path.is_dir():
    raise DataError(f"{what} directory not found: {path}")


def list_images(directory: pathlib.Path) -> dict[str, pathlib.Path]:
  """Maps stem -> file for every supported image file in `directory`.

  Raises:
    DataError: the directory is missing, holds no supported files, or two
      files share a stem (e.g. a.png and a.jpg).
  """
  directory = pathlib.Path(directory)
  _require_dir(directory, "image")
  files = sorted(p for p in directory.iterdir() if p.is_file())
  supported = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
  if not supported:
    others = ", ".join(p.name for p in files[:5]) or "nothing"
    raise DataError(
        f"no image files in {directory} (found {others}); expected files "
        f"ending in {', '.join(IMAGE_EXTENSIONS)} (any case)")
  by_stem: dict[str, pathlib.Path] = {}
  for path in supported:
    if path.stem in by_stem:
      raise DataError(f"two files share the stem {path.stem!r} in {directory}: "
                      f"{by_stem[path.stem].name} and {path.name}")
    by_stem[path.stem] = path
  return by_stem


def _match(images: dict[str, pathlib.Path], labels: dict[str, pathlib.Path],
           directory: pathlib.Path, kind: str) -> None:
  """Requires a one-to-one stem match between image files and label files."""
  missing = sorted(set(images) - set(labels))
  extra = sorted(set(labels) - set(images))
  if missing:
    shown = ", ".join(images[s].name for s in missing[:5])
    raise DataError(
        f"{len(missing)} image(s) have no {kind} file in {directory}: {shown}; "
        f"each {kind} must have the same stem as its image (any extension)")
  if extra:
    shown = ", ".join(labels[s].name for s in extra[:5])
    raise DataError(
        f"{len(extra)} {kind} file(s) in {directory} match no image: {shown}; "
        f"each {kind} must have the same stem as its image (any extension)")


def read_folder_split(root: pathlib.Path | str, split: str,
                      long_side: int | None = None,
                      default_fov=None) -> list[Example]:
  """Reads a user's 2D set laid out as `<root>/<split>/{images,masks,fov}/`.

  `masks/` is optional (unlabelled split) and so is `fov/` (FOV =
  `default_fov(image)`, or the whole image). Masks and FOV files share the
  stem of their image; extensions may differ.

  Args:
    root: the dataset folder.
    split: sub-folder name, e.g. 'train'.
    long_side: optional downscale of the longest side.
    default_fov: FOV estimator for images without an FOV file.

  Returns:
    Examples sorted by stem.

  Raises:
    DataError: on any missing, unmatched, mis-sized or corrupt file.
  """
  split_dir = pathlib.Path(root) / split
  _require_dir(split_dir, f"split {split!r}")
  images = list_images(split_dir / "images")
  labels = {}
  for kind, folder in (("mask", "masks"), ("fov", "fov")):
    if (split_dir / folder).exists():
      labels[kind] = list_images(split_dir / folder)
      _match(images, labels[kind], split_dir / folder, kind)
  return [
      load_example(images[stem],
                   labels["mask"][stem] if "mask" in labels else None,
                   labels["fov"][stem] if "fov" in labels else None,
                   long_side=long_side, default_fov=default_fov)
      for stem in sorted(images)
  ]


def folder_splits(root: pathlib.Path | str) -> list[str]:
  """Splits of a folder set: sub-folders of `root` that contain `images/`."""
  root = pathlib.Path(root)
  _require_dir(root, "dataset")
  splits = sorted(p.name for p in root.iterdir() if (p / "images").is_dir())
  for folder in sorted(p for p in root.iterdir() if p.name not in splits):
    labels = [f"{sub}/" for sub in ("masks", "fov") if (folder / sub).is_dir()]
    if labels:
      raise DataError(
          f"split folder {folder} has {' and '.join(labels)} but no images/; "
          "expected <root>/<split>/images/ beside its masks/ and fov/")
  if not splits:
    raise DataError(
        f"no split folders in {root}; expected <root>/<split>/images/ with "
        "optional <root>/<split>/masks/ and <root>/<split>/fov/")
  return splits


# ---------------------------------------------------------------------------
# Named public datasets in their official layouts.


def _one_file(directory: pathlib.Path, name: str) -> pathlib.Path:
  path = directory / name
  if not path.is_file():
    raise DataError(f"expected file {path} is missing")
  return path


def read_drive(root: pathlib.Path | str, split: str,
               long_side: int | None = None) -> list[Example]:
  """DRIVE (Staal et al. 2004) as distributed.

  Layout: training/images/NN_training.tif, training/1st_manual/NN_manual1.gif,
  training/mask/NN_training_mask.gif, and the same under test/ with `test`.

  Args:
    root: the DRIVE folder (holding training/ and test/).
    split: 'train' (from training/) or 'test' (from test/).
    long_side: optional downscale of the longest side.

  Returns:
    Examples sorted by stem ('21_training', ...), vessels = 1.
  """
  folders = {"train": "training", "test": "test"}
  if split not in folders:
    raise DataError(f"DRIVE has splits {sorted(folders)}, not {split!r}")
  base = pathlib.Path(root) / folders[split]
  images = list_images(base / "images")
  _require_dir(base / "1st_manual", "DRIVE manual annotation")
  _require_dir(base / "mask", "DRIVE FOV mask")
  examples = []
  for stem in sorted(images):
    number = stem.split("_")[0]
    examples.append(
        load_example(images[stem],
                     _one_file(base / "1st_manual", f"{number}_manual1.gif"),
                     _one_file(base / "mask", f"{stem}_mask.gif"),
                     long_side=long_side,
                     binary_mask=True))
  return examples


HRF_LONG_SIDE = 584  # DRIVE's long side: HRF's FOV then matches DRIVE's scale.


def read_unlabeled(root: pathlib.Path | str, split: str = "train",
                   long_side: int | None = None,
                   default_fov=None) -> list[Example]:
  """A folder of unlabelled images, e.g. a pretraining pool: images/*.

  Only split 'train' exists. Such folders ship no FOV masks: `default_fov`
  estimates them (None: the whole frame).
  """
  if split != "train":
    raise DataError(f"an unlabelled image folder has only split 'train', "
                    f"not {split!r}")
  images = list_images(pathlib.Path(root) / "images")
  return [load_example(images[s], long_side=long_side, default_fov=default_fov)
          for s in sorted(images)]


def read_hrf(root: pathlib.Path | str, split: str = "train",
             long_side: int | None = HRF_LONG_SIDE,
             default_fov=None) -> list[Example]:
  """HRF fundus photographs (Budai et al. 2013), images only, unlabelled.

  Layout: images/NN_{h,g,dr}.{jpg,JPG}, read by `read_unlabeled`.
  """
  return read_unlabeled(root, split, long_side, default_fov)


def natural_key(name: str) -> list:
  """Sort key that orders digit runs by value: 's2' before 's10'."""
  return [(0, int(t), "") if t.isdigit() else (1, 0, t)
          for t in re.split(r"(\d+)", name)]


def read_isbi2012(root: pathlib.Path | str, split: str,
                  long_side: int | None = None,
                  test_slices: int = 0) -> list[Example]:
  """ISBI 2012 EM membranes (Cardona et al. 2010), PNG slices.

  Layout: train/image/N.png + train/label/N.png (255 = cell interior,
  0 = membrane), test/image/N.png unlabelled. Split 'train' has masks with
  membrane = 1; split 'unlabeled' holds the test images without masks. The
  challenge's test labels are not public, so with `test_slices` = n > 0 the
  last n labelled sections become split 'test' and 'train' keeps the others
  (a contiguous block: neighbouring sections look alike, so only the one
  boundary pair is adjacent across the splits).
  """
  base = pathlib.Path(root)
  if split == "unlabeled":
    images = list_images(base / "test" / "image")
    return [
        load_example(images[s], long_side=long_side) for s in sorted(images)
    ]
  splits = ("train", "test", "unlabeled") if test_slices else (
      "train", "unlabeled")
  if split not in splits:
    raise DataError(
        f"ISBI 2012 has splits {list(splits)}, not {split!r}"
        + ("" if test_slices else " (a 'test' split needs test_slices > 0)"))
  images = list_images(base / "train" / "image")
  labels = list_images(base / "train" / "label")
  _match(images, labels, base / "train" / "label", "label")
  stems = sorted(images, key=natural_key)
  if test_slices:
    if not 0 < test_slices < len(stems):
      raise DataError(
          f"test_slices={test_slices}: {base / 'train'} has {len(stems)} "
          f"labelled sections; expected 1 to {len(stems) - 1}")
    stems = (stems[-test_slices:] if split == "test" else
             stems[:-test_slices])
  examples = []
  for stem in stems:
    example = load_example(images[stem], labels[stem], long_side=long_side,
                           binary_mask=True)
    # load_binary marks cell interior (255) as 1; the target is the membrane.
    example["mask"] = (1 - example["mask"]).astype(np.uint8)
    examples.append(example)
  return examples


NAMED_READERS: dict[str, Callable[..., list[Example]]] = {
    "drive": read_drive,
    "hrf": read_hrf,
    "isbi2012": read_isbi2012,
}
NAMED_SPLITS: dict[str, tuple[str, ...]] = {
    "drive": ("train", "test"),
    "hrf": ("train",),
    "isbi2012": ("train", "unlabeled"),
}
