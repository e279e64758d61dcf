"""Pixel samplers for pixel-level contrastive losses: naive, SG and SAG.

A pixel-level loss is a mean over the pixels of a class; training estimates
it from a fixed number of sampled pixels. ARCO (docs/methods/arco.md) shows
that stratified sampling over a spatial grid (SG) never has more variance
than naive uniform sampling and that the antithetic variant (SAG) pairs each
draw with its point reflection. Here the strata are equal-mass slices of the
class's pixels listed cell by cell (grid cells, row-major inside a cell), so
each draw is uniform over its own slice: the mean over the draws is an
unbiased estimate of the class mean and static shapes suit `jax.jit`.
"""
import jax
import jax.numpy as jnp
import numpy as np

SAMPLERS = ("naive", "sg", "sag")


def grid_order(batch: int, height: int, width: int, grid: int) -> np.ndarray:
  """Flat pixel indices of a (batch, height, width) map, cell by cell.

  Images first, then the `grid` x `grid` cells of each image in row-major
  order, then the pixels of a cell in row-major order. Reading a full cell's
  pixels backwards reflects them through the cell's centre, which is how
  the antithetic sampler pairs draws.
  """
  if grid < 1:
    raise ValueError(f"grid must be >= 1, got {grid}")
  rows = np.minimum(np.arange(height) * grid // height, grid - 1)
  cols = np.minimum(np.arange(width) * grid // width, grid - 1)
  cell = rows[:, None] * grid + cols[None, :]
  key = (np.arange(batch)[:, None, None] * grid * grid + cell[None])
  return np.argsort(key.reshape(-1), kind="stable").astype(np.int32)


def _uniforms(key, num: int, method: str) -> jax.Array:
  """Points in [0, 1): iid (naive), one per equal slice (sg), or slice
  pairs reflected inside their slice (sag)."""
  if method == "naive":
    return jax.random.uniform(key, (num,))
  if method == "sg":
    return (jnp.arange(num) + jax.random.uniform(key, (num,))) / num
  half = num // 2
  u = jax.random.uniform(key, (half,))
  # 1 - u lies in (0, 1]; keep it inside its slice.
  mirrored = jnp.minimum(1.0 - u, 1.0 - 2.0 ** -23)
  slots = jnp.arange(half)
  return jnp.concatenate([(slots + u) / half, (slots + mirrored) / half])


def sample_pixels(key: jax.Array, weights: jax.Array, num: int, *,
                  method: str = "sg", grid: int = 4):
  """Draws `num` pixels with probability proportional to `weights`.

  Args:
    key: PRNG key.
    weights: (batch, height, width) non-negative weights, e.g. a 0/1 mask
      of one class's valid pixels.
    num: pixels to draw (static; even for 'sag').
    method: 'naive' (iid), 'sg' (stratified) or 'sag' (stratified
      antithetic).
    grid: cells per side of each image for the stratification.

  Returns:
    (indices, valid): int32 (num,) flat indices into the (batch, height,
    width) map, and a bool scalar that is False when all weights are zero
    (the indices are then meaningless).
  """
  if method not in SAMPLERS:
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {method!r}")
  if method == "sag" and num % 2:
    raise ValueError(f"the 'sag' sampler draws pairs: num must be even, "
                     f"got {num}")
  order = jnp.asarray(grid_order(*weights.shape, grid))
  mass = jnp.cumsum(weights.reshape(-1).astype(jnp.float32)[order])
  total = mass[-1]
  targets = _uniforms(key, num, method) * total
  # The first listed pixel whose cumulative mass exceeds the target: it has
  # non-zero weight and is drawn with probability weight / total.
  position = jnp.searchsorted(mass, targets, side="right")
  position = jnp.minimum(position, mass.shape[0] - 1)
  return order[position], total > 0
