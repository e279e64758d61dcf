"""Pixel samplers: unbiased, SG variance at most naive's, against an exact
variance computed independently in NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medclr.train.arco import sampling as pixel_sampling

DRAWS = 4000


def _fixed_map():
  """A (1, 16, 16) map with structure (a smooth ramp plus a bright blob),
  and a class mask covering about half of it."""
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:16, 0:16]
  values = 0.1 * x + 2.0 * ((y - 4) ** 2 + (x - 11) ** 2 < 10) + 0.3 * (
      rng.standard_normal((16, 16)))
  mask = (rng.uniform(size=(16, 16)) < 0.5) | (y > 10)
  return values[None].astype(np.float32), mask[None]


def _estimates(method, num, grid=4):
  values, mask = _fixed_map()
  flat = jnp.asarray(values.reshape(-1))

  @jax.jit
  def draw(key):
    idx, valid = pixel_sampling.sample_pixels(
        key, jnp.asarray(mask, jnp.float32), num, method=method, grid=grid)
    return flat[idx].mean(), valid

  keys = jax.random.split(jax.random.key(1), DRAWS)
  means, valid = jax.vmap(draw)(keys)
  assert bool(valid.all())
  return np.asarray(means, np.float64), float(values[mask].mean())


def _exact_sg_variance(num, grid=4):
  """Var of the SG mean from first principles: draw i is uniform over mass
  slice [i/num, (i+1)/num) of the class pixels listed cell by cell."""
  values, mask = _fixed_map()
  order = np.concatenate([
      np.flatnonzero(cell_mask.reshape(-1)) for cell_mask in (
          _cell_masks(mask[0], grid))])
  v = values.reshape(-1)[order].astype(np.float64)
  n = len(v)
  edges = np.arange(n + 1) / n  # pixel j owns [j/n, (j+1)/n)
  total = 0.0
  for i in range(num):
    lo, hi = i / num, (i + 1) / num
    share = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo),
                    0, None) * num
    mean = share @ v
    total += share @ (v - mean) ** 2
  return total / num ** 2


def _cell_masks(mask, grid):
  h, w = mask.shape
  for cy in range(grid):
    for cx in range(grid):
      cell = np.zeros_like(mask)
      cell[cy * h // grid:(cy + 1) * h // grid,
           cx * w // grid:(cx + 1) * w // grid] = True
      yield cell & mask


@pytest.mark.parametrize("method", ["naive", "sg", "sag"])
def test_estimate_is_unbiased(method):
  means, truth = _estimates(method, 16)
  standard_error = means.std() / np.sqrt(DRAWS)
  assert abs(means.mean() - truth) < 4 * standard_error + 1e-6


def test_sg_variance_matches_exact_value_and_is_below_naive():
  values, mask = _fixed_map()
  num = 16
  sg, _ = _estimates("sg", num)
  naive, _ = _estimates("naive", num)
  exact_sg = _exact_sg_variance(num)
  exact_naive = values[mask].astype(np.float64).var() / num
  assert exact_sg <= exact_naive
  # Sample variances of 4000 draws are within ~5% of the truth.
  assert sg.var() == pytest.approx(exact_sg, rel=0.15)
  assert naive.var() == pytest.approx(exact_naive, rel=0.15)
  assert sg.var() < naive.var()


def test_sag_variance_is_at_most_twice_sg():
  sg, _ = _estimates("sg", 16)
  sag, _ = _estimates("sag", 16)
  assert sag.var() <= 2 * sg.var()


def test_draws_only_weighted_pixels_in_proportion():
  weights = np.zeros((2, 8, 8), np.float32)
  weights[0, 1, 2] = 1.0
  weights[1, 5, 7] = 3.0
  idx, valid = pixel_sampling.sample_pixels(
      jax.random.key(0), jnp.asarray(weights), 4000, method="naive")
  idx = np.asarray(idx)
  assert bool(valid)
  assert set(np.unique(idx)) == {1 * 8 + 2, 64 + 5 * 8 + 7}
  assert np.mean(idx == 64 + 5 * 8 + 7) == pytest.approx(0.75, abs=0.03)


def test_sg_draws_follow_the_cells_and_sag_reflects_inside_a_full_cell():
  # One image, 2x2 grid, every pixel valid, 4 draws: one per cell.
  weights = jnp.ones((1, 4, 4))
  idx, _ = pixel_sampling.sample_pixels(jax.random.key(3), weights, 4,
                                        method="sg", grid=2)
  cells = [(i // 4) // 2 * 2 + (i % 4) // 2 for i in np.asarray(idx)]
  assert cells == [0, 1, 2, 3]
  # sag, 8 draws = 4 pairs over 4 equal slices, here exactly the 4 cells:
  # each pair is a pixel and its point reflection through its cell's centre.
  idx, _ = pixel_sampling.sample_pixels(jax.random.key(4), weights, 8,
                                        method="sag", grid=2)
  idx = np.asarray(idx)
  for first, second in zip(idx[:4], idx[4:]):
    (y1, x1), (y2, x2) = divmod(int(first), 4), divmod(int(second), 4)
    cy, cx = y1 // 2, x1 // 2
    assert (y2, x2) == (4 * cy + 1 - y1, 4 * cx + 1 - x1)


def test_all_zero_weights_are_flagged_invalid():
  _, valid = pixel_sampling.sample_pixels(jax.random.key(0),
                                          jnp.zeros((1, 4, 4)), 4)
  assert not bool(valid)


def test_bad_arguments_name_what_was_expected():
  with pytest.raises(ValueError, match="sampler must be one of"):
    pixel_sampling.sample_pixels(jax.random.key(0), jnp.ones((1, 4, 4)), 4,
                                 method="grid")
  with pytest.raises(ValueError, match="num must be even"):
    pixel_sampling.sample_pixels(jax.random.key(0), jnp.ones((1, 4, 4)), 3,
                                 method="sag")
