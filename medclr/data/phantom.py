"""Procedural fundus-like phantom: labelled vessel images without any download.

Each image is a reddish-orange retina inside a circular field of view on black,
with smooth illumination fall-off, noise, a bright optic-disc-like spot, and a
tree of thin dark vessels grown from that spot by a branching random walk. The
mask is the vessels inside the FOV. Used for tests, demos and smoke runs; it is
not meant to be realistic beyond having the same data shape and statistics
class (thin curvilinear foreground, ~5-15% of pixels) as DRIVE.

All randomness comes from `np.random.default_rng([seed, index])`, so a given
(seed, index) always yields the same image regardless of how many are drawn.
"""
import math

import numpy as np

from medclr.data import readers

_FOV_RADIUS = 0.46  # Of the image size: the disc nearly touches the borders.
_DISC_RADIUS = 0.07
_BACKGROUND_RGB = np.array([0.82, 0.40, 0.16], np.float32)
_VESSEL_RGB = np.array([0.45, 0.10, 0.06], np.float32)
_DISC_RGB = np.array([1.0, 0.92, 0.62], np.float32)
# Rasterising by splatting densely sampled centre-line points: at 0.3 px
# spacing the distance to the nearest sample is within 0.02 px of the true
# distance to the polyline, far below what the anti-aliasing resolves.
_SAMPLE_SPACING = 0.3


def _vessel_tree(rng: np.random.Generator, size: int,
                 disc_yx: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
  """Grows a branching random-walk tree; returns (points (n,2), widths (n,))."""
  scale = size / 128.0
  fov_center = np.array([size / 2, size / 2])
  fov_radius = _FOV_RADIUS * size
  step = 1.5 * scale
  branches = []
  num_trunks = int(rng.integers(5, 7))
  angles = rng.uniform(0, 2 * math.pi) + np.linspace(
      0, 2 * math.pi, num_trunks, endpoint=False)
  # Stack of pending branches: (start, angle, width, depth).
  stack = [(disc_yx.copy(), a + rng.normal(0, 0.2), rng.uniform(2.8, 4.0), 0)
           for a in angles]
  while stack:
    start, angle, width, depth = stack.pop()
    points, widths = [start], [width]
    position = start.copy()
    next_split = rng.uniform(12, 30) * scale
    travelled = 0.0
    curvature = rng.normal(0, 0.02)
    max_length = rng.uniform(0.4, 0.8) * size * (0.8**depth)
    while travelled < max_length:
      angle += curvature + rng.normal(0, 0.08)
      position = position + step * np.array([math.sin(angle), math.cos(angle)])
      travelled += step
      if np.linalg.norm(position - fov_center) > fov_radius + 2 * scale:
        break
      points.append(position)
      widths.append(width)
      if travelled >= next_split and width > 1.2 and depth < 6:
        side = rng.choice((-1.0, 1.0))
        child_width = max(1.0, width * rng.uniform(0.5, 0.75))
        stack.append((position.copy(), angle + side * rng.uniform(0.4, 1.0),
                      child_width, depth + 1))
        width = max(1.0, width * rng.uniform(0.8, 0.95))
        next_split = travelled + rng.uniform(15, 35) * scale
    if len(points) > 1:
      branches.append((np.array(points), np.array(widths) * scale))
  return branches


def _densify(points: np.ndarray,
             widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Resamples a polyline at _SAMPLE_SPACING, interpolating the widths."""
  lengths = np.linalg.norm(np.diff(points, axis=0), axis=1)
  arc = np.concatenate([[0.0], np.cumsum(lengths)])
  samples = np.arange(0.0, arc[-1], _SAMPLE_SPACING)
  dense = np.stack([np.interp(samples, arc, points[:, i]) for i in (0, 1)], -1)
  return dense, np.interp(samples, arc, widths)


def _coverage(size: int, centres: np.ndarray, widths: np.ndarray) -> np.ndarray:
  """Anti-aliased vessel coverage in [0, 1]: 1 within width/2 of the centre.

  Coverage falls linearly from 1 to 0 over one pixel around the vessel edge,
  so a pixel centre exactly at distance width/2 has coverage 0.5.
  """
  reach = int(math.ceil(widths.max() / 2 + 1))
  offsets = np.arange(-reach, reach + 1)
  dy, dx = [o.ravel() for o in np.meshgrid(offsets, offsets, indexing="ij")]
  base = np.round(centres).astype(np.int64)
  pixel_y = base[:, :1] + dy[None]
  pixel_x = base[:, 1:] + dx[None]
  distance = np.hypot(pixel_y - centres[:, :1], pixel_x - centres[:, 1:])
  alpha = np.clip(widths[:, None] / 2 + 0.5 - distance, 0.0, 1.0)
  inside = ((pixel_y >= 0) & (pixel_y < size) & (pixel_x >= 0) &
            (pixel_x < size) & (alpha > 0))
  flat = pixel_y[inside] * size + pixel_x[inside]
  coverage = np.zeros(size * size, np.float32)
  np.maximum.at(coverage, flat, alpha[inside].astype(np.float32))
  return coverage.reshape(size, size)


def _smooth_field(rng: np.random.Generator, size: int,
                  cells: int) -> np.ndarray:
  """Low-frequency random field in about [-1, 1] by bilinear grid upsampling."""
  grid = rng.uniform(-1, 1, (cells + 1, cells + 1))
  coords = np.linspace(0, cells, size)
  low = np.floor(coords).astype(int).clip(0, cells - 1)
  frac = coords - low
  rows = grid[low] * (1 - frac)[:, None] + grid[low + 1] * frac[:, None]
  return rows[:, low] * (1 - frac) + rows[:, low + 1] * frac


def _one_image(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  centre = size / 2
  radius = np.hypot(yy - centre, xx - centre) / (_FOV_RADIUS * size)
  fov = radius <= 1.0

  # The optic disc sits left or right of centre, like left/right eyes.
  side = rng.choice((-1.0, 1.0))
  disc_yx = np.array([centre + rng.uniform(-0.05, 0.05) * size,
                      centre + side * rng.uniform(0.22, 0.3) * size])
  disc_distance = np.hypot(yy - disc_yx[0], xx - disc_yx[1])
  disc = np.exp(-0.5 * (disc_distance / (_DISC_RADIUS * size))**4)

  illumination = (1.0 - 0.45 * radius**2 + 0.12 * _smooth_field(rng, size, 3))
  colour = _BACKGROUND_RGB * rng.uniform(0.85, 1.1, 3).astype(np.float32)
  image = illumination[..., None] * colour
  image = image * (1 - disc[..., None]) + _DISC_RGB * disc[..., None]

  centres, widths = zip(*(_densify(p, w) for p, w in
                          _vessel_tree(rng, size, disc_yx)))
  coverage = _coverage(size, np.concatenate(centres), np.concatenate(widths))
  vessel = illumination[..., None] * _VESSEL_RGB
  image = image * (1 - coverage[..., None]) + vessel * coverage[..., None]

  image = image + rng.normal(0, 0.02, image.shape)
  image = np.where(fov[..., None], image, 0.0)
  return dict(
      image=np.round(np.clip(image, 0, 1) * 255).astype(np.uint8),
      mask=((coverage >= 0.5) & fov).astype(np.uint8),
      fov=fov.astype(np.uint8))


def generate(num_images: int, size: int, seed: int) -> list[readers.Example]:
  """Generates `num_images` labelled phantom examples.

  Args:
    num_images: how many examples.
    size: image height and width in pixels (vessel widths scale with
      size / 128, i.e. 1-4 px at 128).
    seed: base seed; example i uses rng([seed, i]).

  Returns:
    Examples with RGB uint8 images, binary vessel masks, disc FOVs, and stems
    'phantom<seed>_<i>' (unique across seeds, so splits never share stems).
  """
  if num_images < 0:
    raise ValueError(f"num_images must be >= 0, got {num_images}")
  if size < 16:
    raise ValueError(f"phantom size must be >= 16 pixels, got {size}")
  examples = []
  for index in range(num_images):
    arrays = _one_image(np.random.default_rng([seed, index]), size)
    examples.append(readers.Example(
        **arrays, has_mask=True, stem=f"phantom{seed}_{index:04d}"))
  return examples
