"""Field-of-view (FOV) masks estimated from the image itself.

A colour fundus photograph shows the retina through a round aperture on a dark
frame. DRIVE and STARE ship the FOV as a mask; HRF, the fundus pool and most
other sets do not. `estimate_fov` recovers the mask from the pixels and
`fov_diameter` measures it, e.g. to resample every set to one FOV diameter.
See docs/fov.md for the method and its accuracy against the official masks.
"""
import logging

import numpy as np
from PIL import Image
from PIL import ImageDraw
from scipy import ndimage
from scipy import spatial

from medclr.data import readers

# Images are analysed at most this large (longest side, px); bigger ones (HRF
# is 3504x2336) are box-downscaled first and the mask is scaled back up.
_WORK_LONG_SIDE = 1024
# Side of the mean filter that takes sensor and JPEG noise off the channel.
_SMOOTH_SIZE = 5
# The dark level is the 1st percentile of the smoothed channel (the frame);
# the bright level its 90th percentile (inside the FOV whenever the FOV covers
# more than a tenth of the image).
_DARK_PERCENTILE = 1.0
_BRIGHT_PERCENTILE = 90.0
# Threshold = dark + fraction * (bright - dark). Low on purpose: the rim of a
# fundus FOV is dim (vignetting), and the frame is far darker still.
_THRESHOLD_FRACTION = 0.16
# Below this bright - dark spread (0..255 scale) the image has no structure
# to separate.
_MIN_SPREAD = 4.0
# Radius (px) of the opening that detaches noise and thin bright bridges.
_OPEN_RADIUS = 2
# Dark bays reaching into the FOV from its rim (dark lesions, a shadowed
# sector) are filled when they are deeper than this fraction of the FOV
# diameter; shallower concavities are the camera's own notch or tab and stay.
_BAY_DEPTH_FRACTION = 0.02
# Pixels taken off the rim at the end: the official masks exclude the last,
# half-lit pixel ring.
_RIM_EROSION = 1
# An estimate smaller than this fraction of the image is taken as a failure.
_MIN_AREA_FRACTION = 0.05
# The frame: its median brightness is at most this fraction of the FOV's,
# and between _FRAME_RING px (distance outside the rim) the median brightness
# is at most _MAX_RISE of the way from the frame's level to the threshold
# (DRIVE, STARE, fundus pool: <= 0.27; vignetted images without a frame:
# >= 0.5).
_MAX_FRAME_RATIO = 0.3
_FRAME_RING = (8, 12)
_MAX_RISE = 0.4

_logger = logging.getLogger(__name__)


def _brightness(image: np.ndarray) -> np.ndarray:
  """Validates `image` and returns its brightness channel as uint8 (H, W).

  Raises:
    readers.DataError: unsupported shape, dtype or value range.
  """
  image = np.asarray(image)
  shape_ok = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))
  if not shape_ok or min(image.shape[:2], default=0) < 1:
    raise readers.DataError(
        f"estimate_fov got an array of shape {image.shape}; expected an image "
        "(H, W), (H, W, 1) or (H, W, 3) with H, W >= 1")
  if image.dtype == np.uint8:
    pass
  elif np.issubdtype(image.dtype, np.floating):
    low, high = float(np.min(image)), float(np.max(image))
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > 1:
      raise readers.DataError(
          f"estimate_fov got a float image with values in [{low}, {high}]; "
          "float images must be finite and in [0, 1]")
    image = np.round(image * 255.0).astype(np.uint8)
  else:
    raise readers.DataError(
        f"estimate_fov got dtype {image.dtype}; expected uint8 or float in "
        "[0, 1]")
  if image.ndim == 2:
    return image
  # (H, W, 1): the only channel. (H, W, 3): red, the brightest channel of a
  # fundus photo, so the dim rim stays well above the frame there (green and
  # blue fade into it).
  return image[..., 0]


def _disc(radius: int) -> np.ndarray:
  y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
  return x * x + y * y <= radius * radius


def _largest_component(mask: np.ndarray) -> np.ndarray:
  labels, count = ndimage.label(mask)
  if count <= 1:
    return mask
  sizes = np.bincount(labels.ravel())
  sizes[0] = 0
  return labels == np.argmax(sizes)


def _convex_hull(mask: np.ndarray) -> np.ndarray:
  """The filled convex hull of a non-empty mask's pixel centres."""
  boundary = mask & ~ndimage.binary_erosion(mask)
  ys, xs = np.nonzero(boundary)
  points = np.stack([xs, ys], axis=1).astype(np.float64)
  try:
    vertices = points[spatial.ConvexHull(points).vertices]
  except spatial.QhullError:  # A line or a point: nothing to fill.
    return mask
  canvas = Image.new("L", (mask.shape[1], mask.shape[0]), 0)
  polygon = [tuple(v) for v in vertices.tolist()]
  ImageDraw.Draw(canvas).polygon(polygon, fill=1, outline=1)
  return np.asarray(canvas).astype(bool) | mask


def _fill_deep_bays(mask: np.ndarray) -> np.ndarray:
  """Adds the parts of the convex hull deeper than _BAY_DEPTH_FRACTION."""
  bays = _convex_hull(mask) & ~mask
  if not bays.any():
    return mask
  depth = ndimage.distance_transform_edt(bays)
  labels, count = ndimage.label(bays)
  deepest = ndimage.maximum(depth, labels, np.arange(1, count + 1))
  min_depth = _BAY_DEPTH_FRACTION * 2.0 * np.sqrt(mask.sum() / np.pi)
  keep = np.flatnonzero(np.asarray(deepest) >= min_depth) + 1
  return mask | np.isin(labels, keep)


def _segment(channel: np.ndarray) -> tuple[np.ndarray | None, str]:
  """Estimates the FOV on a uint8 (h, w) brightness channel.

  Returns:
    (mask, "") on success, or (None, reason) when there is no usable FOV.
  """
  smooth = ndimage.uniform_filter(channel.astype(np.float32), _SMOOTH_SIZE)
  dark, bright = np.percentile(smooth, (_DARK_PERCENTILE, _BRIGHT_PERCENTILE))
  if bright - dark < _MIN_SPREAD:
    return None, (f"the image is nearly uniform (brightness spread "
                  f"{bright - dark:.1f} < {_MIN_SPREAD} of 255)")
  threshold = dark + _THRESHOLD_FRACTION * (bright - dark)
  mask = ndimage.binary_opening(smooth > threshold, _disc(_OPEN_RADIUS))
  mask = ndimage.binary_fill_holes(_largest_component(mask))
  fraction = mask.mean()
  if fraction < _MIN_AREA_FRACTION:
    return None, (f"the bright region covers only {fraction:.1%} of the image "
                  f"(< {_MIN_AREA_FRACTION:.0%})")
  # A camera frame is dark, and the image falls to the frame's level within
  # a few pixels of the rim. A shaded, vignetted or natural image (no frame)
  # fails one of the two: its "outside" is not much darker than the inside,
  # or the brightness fades into it gradually.
  if not mask.all():
    frame_level = float(np.median(smooth[~mask]))
    fov_level = float(np.median(smooth[mask]))
    if frame_level > _MAX_FRAME_RATIO * fov_level:
      return None, (f"no dark frame: the region outside the FOV is "
                    f"{frame_level / fov_level:.0%} as bright as the inside "
                    f"(> {_MAX_FRAME_RATIO:.0%})")
    distance = ndimage.distance_transform_edt(~mask)
    near, far = _FRAME_RING
    ring = (distance > near) & (distance <= far)
    if ring.any():
      rise = ((float(np.median(smooth[ring])) - frame_level) /
              max(threshold - frame_level, 1e-6))
      if rise > _MAX_RISE:
        return None, (
            f"no sharp FOV edge: {near}-{far} px outside the rim the image is "
            f"still {rise:.0%} of the way from the frame level to the "
            f"threshold (> {_MAX_RISE:.0%})")
  mask = _fill_deep_bays(mask)
  mask = ndimage.binary_erosion(mask, iterations=_RIM_EROSION, border_value=1)
  if mask.all():
    return None, "the image has no dark border"
  return mask, ""


def estimate_fov(image: np.ndarray) -> np.ndarray:
  """Estimates the field of view of an image that ships without an FOV mask.

  Method (tuned on DRIVE and STARE, see docs/fov.md):
    1. Brightness channel: red for RGB (the brightest channel of a fundus
       photo, so the dim FOV rim stays clearly above the frame), the only
       channel for grayscale. Images longer than 1024 px are analysed at
       1024 px and the mask is scaled back.
    2. A 5x5 mean filter, then the threshold dark + 0.16 (bright - dark), with
       dark and bright the 1st and 90th percentiles of the image, so it
       adapts to exposure.
    3. Morphology: an opening (disc of radius 2) detaches noise and bright
       specks of the frame, the largest connected component is kept and its
       holes are filled; dark bays that reach in from the rim (lesions, a
       shadowed sector) are filled from the convex hull when they are deeper
       than 2% of the FOV diameter, so the camera's small notch or tab is
       kept; finally one pixel is eroded off the rim (the official masks
       leave out the half-lit last ring; edges cut by the frame stay).
    4. Fallback to the whole image, with a `logging` warning (logger
       `medclr.data.fov`) that says why, when there is no frame to find: the
       image is nearly uniform; the estimate covers less than 5% of it; the
       region outside is not dark (median above 30% of the FOV's: e.g. EM
       or natural images) or is not reached within 12 px of the rim (a
       vignetted or shaded image fades out slowly; a camera's rim is a
       step); or nothing of the frame is left. Callers that need to know test `fov.all()`.

  Args:
    image: uint8 (H, W), (H, W, 1) or (H, W, 3), or float in [0, 1].

  Returns:
    uint8 (H, W) in {0, 1}: 1 inside the field of view.

  Raises:
    readers.DataError: unsupported shape, dtype or value range.
  """
  channel = _brightness(image)
  height, width = channel.shape
  scale = min(1.0, _WORK_LONG_SIDE / max(height, width))
  work = channel
  if scale < 1.0:
    work_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    work = np.asarray(
        Image.fromarray(channel).resize(work_size, Image.Resampling.BOX))
  mask, reason = _segment(work)
  if mask is None:
    _logger.warning("estimate_fov: %s; using the whole %dx%d (WxH) frame as "
                    "the field of view", reason, width, height)
    return np.ones((height, width), np.uint8)
  if scale < 1.0:
    mask = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (width, height), Image.Resampling.BILINEAR)
    mask = np.asarray(mask) > 127
  return mask.astype(np.uint8)


def _widest_extent(mask: np.ndarray) -> float:
  return float(max(mask.sum(axis=1).max(), mask.sum(axis=0).max()))


def _fit_circle(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
  """Least-squares circle (centre x, centre y, radius) through the points."""
  # x^2 + y^2 = 2 a x + 2 b y + c is linear in (a, b, c); r^2 = c + a^2 + b^2.
  design = np.stack([2.0 * x, 2.0 * y, np.ones_like(x)], axis=1)
  (a, b, c), *_ = np.linalg.lstsq(design, x * x + y * y, rcond=None)
  return a, b, float(np.sqrt(max(c + a * a + b * b, 0.0)))


def fov_diameter(fov: np.ndarray) -> float:
  """The diameter of a (round) field of view, in pixels.

  A circle is fitted to the FOV's rim, ignoring the rim pixels on the image
  border and, by a trimmed fit, the straight cuts and the camera's notch or
  tab: the fit is repeated on the half of the rim pixels closest to the last
  circle until it settles, then refitted on every rim pixel within 2 px (or 1%
  of the radius) of it. Unlike the widest row or 2 sqrt(area / pi), this is
  unaffected by the frame or a dark strip cutting the disc, on any side
  (STARE is cut at the top and bottom, some fundus cameras on all four
  sides). When the rim is not a circular arc (fewer than 30% of the rim
  pixels fit, or they span less than a quarter turn: e.g. a rectangular FOV
  or the whole-frame fallback), the widest row or column of the mask is
  returned instead.

  Args:
    fov: (H, W) mask, nonzero inside the FOV (uint8 {0, 1} or bool).

  Returns:
    The diameter in pixels, counted edge to edge (a digital disc of radius r
    about its centre pixel measures 2r + 1).

  Raises:
    readers.DataError: `fov` is not 2-D or has no FOV pixel.
  """
  fov = np.asarray(fov)
  if fov.ndim != 2 or fov.size == 0:
    raise readers.DataError(
        f"fov_diameter got an array of shape {fov.shape}; expected a 2-D "
        "(H, W) mask")
  mask = fov != 0
  if not mask.any():
    raise readers.DataError("fov_diameter got an empty mask (no FOV pixels)")
  rim = mask & ~ndimage.binary_erosion(mask, border_value=0)
  rim[0, :] = rim[-1, :] = rim[:, 0] = rim[:, -1] = False
  ys, xs = np.nonzero(rim)
  if len(xs) < 20:
    return _widest_extent(mask)
  x, y = xs.astype(np.float64), ys.astype(np.float64)
  keep = np.ones(len(x), bool)
  for _ in range(20):
    a, b, radius = _fit_circle(x[keep], y[keep])
    residual = np.abs(np.hypot(x - a, y - b) - radius)
    closest = residual <= np.median(residual)
    if closest.sum() < 3 or np.array_equal(closest, keep):
      break
    keep = closest
  inliers = residual <= max(2.0, 0.01 * radius)
  if inliers.sum() < max(20, 0.3 * len(x)):
    return _widest_extent(mask)
  a, b, radius = _fit_circle(x[inliers], y[inliers])
  angles = np.arctan2(y[inliers] - b, x[inliers] - a)
  turns = np.unique(np.floor((angles + np.pi) / (2 * np.pi) * 36)).size / 36
  if turns < 0.25:
    return _widest_extent(mask)
  # Rim pixel centres lie half a pixel inside the mask's edge.
  return float(2.0 * radius + 1.0)
