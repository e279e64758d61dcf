"""Host-side crops, run per example inside the Grain workers (numpy + Pillow).

(`config.data.crop_site='device'` moves the pretraining crops to the device,
`medclr/augment/crops.py`; the host then only fits each image into a fixed
canvas once, `fit_into`.)

Random cropping changes array shapes, so it happens on the host where shapes
are free; everything shape-preserving (flips, colour, blur) runs later on the
device. All functions are deterministic given the np.random.Generator.
"""
import math
from typing import Mapping

import numpy as np
from PIL import Image

# ITU-R BT.601 luma weights, the usual RGB -> gray conversion.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def to_float(image: np.ndarray, in_channels: int) -> np.ndarray:
  """uint8 (H, W, C) or (H, W) -> float32 [0, 1] (H, W, in_channels).

  Gray -> RGB repeats the channel; RGB -> gray uses BT.601 luma. Float inputs
  are taken to be in [0, 1] already and only get their channels converted.

  Raises:
    ValueError: in_channels or the image's channel count is not 1 or 3.
  """
  if in_channels not in (1, 3):
    raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(
        f"image must be (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")
  if image.dtype == np.uint8:
    image = image.astype(np.float32) / np.float32(255)
  else:
    image = image.astype(np.float32)
  channels = image.shape[-1]
  if channels == in_channels:
    return image
  if in_channels == 3:
    return np.repeat(image, 3, axis=-1)
  return (image @ _LUMA)[..., None]


def _uniform_place(rng, height, width, crop_height, crop_width):
  """RandomResizedCrop's placement: any position where the window fits."""
  return (int(rng.integers(0, height - crop_height + 1)),
          int(rng.integers(0, width - crop_width + 1)))


def sample_crop_window(height: int, width: int, rng: np.random.Generator,
                       area: tuple[float, float] = (0.08, 1.0),
                       aspect: tuple[float, float] = (3 / 4, 4 / 3),
                       attempts: int = 10,
                       place=_uniform_place) -> tuple[int, int, int, int]:
  """Samples a crop window the way torchvision's RandomResizedCrop does.

  The window's area is a uniform fraction in `area` of the whole image and its
  width/height ratio is log-uniform in `aspect`. After `attempts` windows that
  do not fit, falls back to the largest centred window whose aspect ratio is
  clamped into `aspect`.

  `place(rng, height, width, crop_height, crop_width) -> (top, left)` picks
  where a fitting window goes: uniformly by default; ContrastiveCrop passes
  its box-constrained Beta placement.

  Returns:
    (top, left, crop_height, crop_width), all in pixels, inside the image.
  """
  image_area = height * width
  log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
  for _ in range(attempts):
    target_area = image_area * rng.uniform(*area)
    ratio = math.exp(rng.uniform(*log_aspect))
    crop_width = int(round(math.sqrt(target_area * ratio)))
    crop_height = int(round(math.sqrt(target_area / ratio)))
    if 0 < crop_width <= width and 0 < crop_height <= height:
      top, left = place(rng, height, width, crop_height, crop_width)
      return top, left, crop_height, crop_width
  ratio = width / height
  if ratio < aspect[0]:
    crop_width, crop_height = width, int(round(width / aspect[0]))
  elif ratio > aspect[1]:
    crop_height, crop_width = height, int(round(height * aspect[1]))
  else:
    crop_width, crop_height = width, height
  return ((height - crop_height) // 2, (width - crop_width) // 2, crop_height,
          crop_width)


def resize_whole(image: np.ndarray, out_size: int) -> np.ndarray:
  """The whole image resized to (out_size, out_size, C), float32 [0, 1]."""
  return _resize_window(image, (0, 0, image.shape[0], image.shape[1]),
                        out_size)


def _resize_window(image: np.ndarray, window: tuple[int, int, int, int],
                   out_size: int) -> np.ndarray:
  """Bilinear resize of image[window] to (out_size, out_size, C), float32.

  Pillow's bilinear filter widens its support when shrinking, so strong
  downscales are antialiased (like torchvision's antialias=True) instead of
  aliasing thin vessels away.
  """
  top, left, crop_height, crop_width = window
  box = (left, top, left + crop_width, top + crop_height)
  size = (out_size, out_size)
  if image.dtype == np.uint8:
    if image.shape[-1] == 1:
      pil = Image.fromarray(image[..., 0]).resize(
          size, Image.Resampling.BILINEAR, box=box)
      return np.asarray(pil, np.float32)[..., None] / np.float32(255)
    pil = Image.fromarray(image).resize(
        size, Image.Resampling.BILINEAR, box=box)
    return np.asarray(pil, np.float32) / np.float32(255)
  # Pillow has no multi-channel float mode: resize each channel as mode 'F'.
  channels = [
      np.asarray(
          Image.fromarray(np.ascontiguousarray(image[..., c], np.float32))
          .resize(size, Image.Resampling.BILINEAR, box=box))
      for c in range(image.shape[-1])
  ]
  return np.stack(channels, axis=-1).astype(np.float32)


def random_resized_crop(image: np.ndarray, rng: np.random.Generator,
                        out_size: int,
                        area: tuple[float, float] = (0.08, 1.0),
                        aspect: tuple[float, float] = (3 / 4, 4 / 3),
                        place=_uniform_place) -> np.ndarray:
  """SimCLR / torchvision RandomResizedCrop of one image.

  Args:
    image: (H, W, C) uint8 (read as /255) or float32 in [0, 1].
    rng: source of randomness.
    out_size: output height and width.
    area: range of the crop area as a fraction of the whole image.
    aspect: range of the crop's width/height ratio.
    place: window placement (see `sample_crop_window`).

  Returns:
    float32 (out_size, out_size, C) in [0, 1].
  """
  if image.ndim != 3:
    raise ValueError(f"image must be (H, W, C), got shape {image.shape}")
  window = sample_crop_window(image.shape[0], image.shape[1], rng, area, aspect,
                              place=place)
  return _resize_window(image, window, out_size)


def fit_into(image: np.ndarray, size: int,
             in_channels: int) -> tuple[np.ndarray, np.ndarray]:
  """The image scaled to fit a size x size uint8 canvas (device crops).

  The long side becomes `size` (bilinear, antialiased when shrinking), the
  aspect ratio is kept and the canvas is zero-padded at the bottom and
  right. Channels are converted to `in_channels` first; float images are
  quantised to 8 bits, ample for crops that the device then augments.

  Returns:
    (uint8 (size, size, in_channels) canvas, int32 [height, width] of the
    image inside it).
  """
  unit = to_float(image, in_channels)
  height, width = unit.shape[:2]
  scale = size / max(height, width)
  fitted_hw = (max(1, round(height * scale)), max(1, round(width * scale)))
  quantised = np.clip(np.round(unit * 255), 0, 255).astype(np.uint8)
  if fitted_hw != (height, width):
    pil = Image.fromarray(quantised[..., 0] if in_channels == 1
                          else quantised)
    pil = pil.resize(fitted_hw[::-1], Image.Resampling.BILINEAR)
    quantised = np.asarray(pil).reshape(*fitted_hw, in_channels)
  canvas = np.zeros((size, size, in_channels), np.uint8)
  canvas[:fitted_hw[0], :fitted_hw[1]] = quantised
  return canvas, np.array(fitted_hw, np.int32)


def random_crop(arrays: Mapping[str, np.ndarray], rng: np.random.Generator,
                size: int, centre_in: str | None = None,
                attempts: int = 10) -> dict[str, np.ndarray]:
  """Cuts the same random size x size window out of every array.

  Arrays share their leading (H, W) dimensions (e.g. image (H, W, C), mask and
  fov (H, W)). Images smaller than `size` are zero-padded at the bottom and
  right first, so padded pixels have fov/weight 0 and are ignored by the loss.
  With `centre_in` (a key of `arrays`), windows are redrawn, up to `attempts`
  times, until that array is nonzero at the window's centre: patches then
  fall on the field of view rather than on the black border around it.

  Returns:
    A dict with the same keys, each array (size, size, ...).
  """
  shapes = {key: value.shape[:2] for key, value in arrays.items()}
  if len(set(shapes.values())) != 1:
    raise ValueError(f"random_crop needs arrays of one (H, W); got {shapes}")
  height, width = next(iter(shapes.values()))
  for _ in range(attempts if centre_in else 1):
    top = int(rng.integers(0, max(height - size, 0) + 1))
    left = int(rng.integers(0, max(width - size, 0) + 1))
    centre = (min(top + size // 2, height - 1), min(left + size // 2, width - 1))
    if centre_in is None or arrays[centre_in][centre]:
      break
  out = {}
  for key, value in arrays.items():
    window = value[top:top + size, left:left + size]
    pad_rows, pad_cols = size - window.shape[0], size - window.shape[1]
    if pad_rows or pad_cols:
      padding = [(0, pad_rows), (0, pad_cols)] + [(0, 0)] * (value.ndim - 2)
      window = np.pad(window, padding)
    out[key] = np.ascontiguousarray(window)
  return out
