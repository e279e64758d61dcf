"""Input intensity normalisation shared by every training and inference path.

An image's normalisation is a per-channel affine map described by a `stats`
array of shape (2, C): row 0 the mean, row 1 the standard deviation; the
model sees (image - mean) / std. The host computes `stats` once per image
(`image_stats`) or once per dataset (`dataset_stats`) and ships them beside
the image, so that augmentation still works on [0, 1] images and the map is
applied last, on device, the same way in fine-tuning, pretraining and
evaluation (`apply`). Mode 'none' is the identity (mean 0, std 1).
"""
from typing import Iterable

import numpy as np

MODES = ("none", "image", "dataset")
# A flat (e.g. fully black) channel has std 0: never divide by less.
_MIN_STD = 1e-3


def check_mode(mode: str, where: str = "config.data.normalize") -> None:
  if mode not in MODES:
    raise ValueError(f"{where}={mode!r}: expected one of {MODES}")


def identity_stats(channels: int) -> np.ndarray:
  return np.stack([np.zeros(channels), np.ones(channels)]).astype(np.float32)


def _fov_pixels(image: np.ndarray, fov: np.ndarray | None) -> np.ndarray:
  """(N, C) float pixels of a float (H, W, C) image inside `fov` (or all)."""
  pixels = image.reshape(-1, image.shape[-1])
  if fov is None:
    return pixels
  inside = np.asarray(fov).reshape(-1) > 0
  # An empty FOV would give NaN statistics: use the whole frame instead.
  return pixels[inside] if inside.any() else pixels


def image_stats(image: np.ndarray, fov: np.ndarray | None = None) -> np.ndarray:
  """Per-channel mean and std of a float (H, W, C) image inside its FOV."""
  pixels = _fov_pixels(image, fov).astype(np.float64)
  std = np.maximum(pixels.std(0), _MIN_STD)
  return np.stack([pixels.mean(0), std]).astype(np.float32)


def dataset_stats(pairs: Iterable[tuple[np.ndarray, np.ndarray | None]]
                  ) -> np.ndarray:
  """Per-channel mean and std over the FOV pixels of all (image, fov) pairs."""
  total, total_sq, count = 0.0, 0.0, 0
  for image, fov in pairs:
    pixels = _fov_pixels(image, fov).astype(np.float64)
    total = total + pixels.sum(0)
    total_sq = total_sq + (pixels**2).sum(0)
    count += pixels.shape[0]
  if not count:
    raise ValueError("dataset_stats needs at least one image")
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
  return np.stack([mean, np.maximum(std, _MIN_STD)]).astype(np.float32)


def stats_for(mode: str, image: np.ndarray, fov: np.ndarray | None,
              dataset: np.ndarray | None = None) -> np.ndarray:
  """The (2, C) stats of `image` under `mode` ('dataset' uses `dataset`)."""
  check_mode(mode)
  if mode == "image":
    return image_stats(image, fov)
  if mode == "dataset":
    if dataset is None:
      raise ValueError("normalize='dataset' needs the dataset statistics")
    return np.asarray(dataset, np.float32)
  return identity_stats(image.shape[-1])


def apply(images, stats):
  """(images - mean) / std for numpy or JAX arrays.

  Args:
    images: (H, W, C) with stats (2, C), or (B, H, W, C) with stats (2, C)
      or (B', 2, C) where B is a multiple of B' (image-major: views or crops
      j of image i sit at i * (B // B') + j, as DINO's local crops do).
    stats: see above.

  Returns:
    Normalised images, same shape.
  """
  if stats.ndim == 2:
    return (images - stats[0]) / stats[1]
  count = stats.shape[0]
  repeats = images.shape[0] // count
  if repeats * count != images.shape[0]:
    raise ValueError(f"{images.shape[0]} images but {count} stats")
  # Group the views of each image instead of repeating the stats: a
  # reshape of the leading (batch-sharded) axis keeps its sharding.
  grouped = images.reshape((count, repeats) + images.shape[1:])
  mean = stats[:, None, None, None, 0, :]
  std = stats[:, None, None, None, 1, :]
  return ((grouped - mean) / std).reshape(images.shape)
