"""Property tests (hypothesis) of the augmentations and the pixel samplers.

Shapes are fixed and only values and keys vary, so each jitted function
compiles once per spec (a handful in all) and every example after the first
runs in milliseconds. Images are drawn from a seed and a pattern (uniform,
binary, constant, extremes) rather than element by element, which keeps
generation cheap and still reaches the edge cases (all 0, all 1).
"""
import dataclasses
import functools

import hypothesis
from hypothesis import given
from hypothesis import strategies as st
import jax
import numpy as np
import pytest

from medclr.augment import crop_presets
from medclr.augment import ops as augment
from medclr.train.arco import sampling as pixel_sampling

SIZE = 16
BATCH = 4
# derandomize: the same examples every run (reproducible CI); no database.
SETTINGS = hypothesis.settings(max_examples=25, deadline=None,
                               derandomize=True, database=None)

# Specs with intensity ops (range, finiteness, determinism) and specs with
# geometry only (alignment: no intensity op may move the image's values).
INTENSITY_SPECS = ("simclr_strong", "chaitanya_global")
GEOMETRY_SPECS = ("geometric", "basic_medical_zoom", "geometric_rotate")
LOSSLESS = "geometric"  # flips and 90-degree turns: no resampling


@functools.cache
def _augment_batch(preset):
  return jax.jit(functools.partial(augment.augment_batch,
                                   spec=augment.get_spec(preset)))


@functools.cache
def _augment_segmentation(preset):
  return jax.jit(functools.partial(augment.augment_segmentation_batch,
                                   spec=augment.get_spec(preset)))


def _pattern(seed, kind, shape):
  """float32 values in [0, 1] of one of several kinds, from a seed."""
  rng = np.random.default_rng(seed)
  if kind == "uniform":
    values = rng.random(shape)
  elif kind == "binary":
    values = rng.random(shape) < 0.5
  elif kind == "extremes":  # 0, 1 and values a hair inside them
    values = rng.choice([0.0, 1.0, 1e-7, 1.0 - 1e-7], size=shape)
  else:  # constant
    values = np.full(shape, rng.choice([0.0, 1.0, rng.random()]))
  return np.asarray(values, np.float32)


seeds = st.integers(0, 2**31 - 1)


def images_of(shape):
  return st.builds(_pattern, seeds,
                   st.sampled_from(["uniform", "binary", "extremes",
                                    "constant"]), st.just(shape))


# ---------------------------------------------------------------------------
# Augmentations.


@SETTINGS
@given(preset=st.sampled_from(INTENSITY_SPECS), channels=st.sampled_from([1, 3]),
       seed=seeds, data=st.data())
def test_views_keep_shape_dtype_and_finite_unit_range(preset, channels, seed,
                                                      data):
  images = data.draw(images_of((BATCH, SIZE, SIZE, channels)))
  out = np.asarray(_augment_batch(preset)(jax.random.key(seed), images))
  assert out.shape == images.shape and out.dtype == np.float32
  assert np.isfinite(out).all()
  assert out.min() >= 0.0 and out.max() <= 1.0


@SETTINGS
@given(preset=st.sampled_from(["simclr_strong", "basic_medical_zoom"]),
       seed=seeds, pattern_seed=seeds)
def test_same_key_same_view_and_each_view_depends_on_its_image_only(
    preset, seed, pattern_seed):
  images = _pattern(pattern_seed, "uniform", (BATCH, SIZE, SIZE, 3))
  augment_fn = _augment_batch(preset)
  key = jax.random.key(seed)
  first = np.asarray(augment_fn(key, images))
  np.testing.assert_array_equal(np.asarray(augment_fn(key, images)), first)
  # Replacing the other images of the batch leaves view 0 as it was: each
  # view is keyed by its own index, not by what it is batched with.
  others = images.copy()
  others[1:] = _pattern(pattern_seed + 1, "uniform", others[1:].shape)
  np.testing.assert_array_equal(np.asarray(augment_fn(key, others))[0],
                                first[0])
  # A new key gives other views (every spec here draws a rotation angle or
  # jitter factors from a continuum).
  assert not np.array_equal(
      np.asarray(augment_fn(jax.random.key(seed + 1), images)), first)


@SETTINGS
@given(seed=seeds, pattern_seed=seeds)
def test_lossless_geometry_moves_image_and_mask_by_the_same_permutation(
    seed, pattern_seed):
  # A coordinate image: pixel p holds p / (H*W - 1), its mask holds p; after
  # flips and 90-degree turns each output pixel must still pair the two.
  index = np.arange(SIZE * SIZE).reshape(SIZE, SIZE)
  order = np.random.default_rng(pattern_seed).permutation(BATCH)
  masks = np.stack([np.roll(index, k, axis=1) for k in order]).astype(
      np.int32)
  images = (masks / (SIZE * SIZE - 1)).astype(np.float32)[..., None]
  weights = np.ones((BATCH, SIZE, SIZE), np.float32)
  out_images, out_masks, out_weights = (
      np.asarray(a) for a in _augment_segmentation(LOSSLESS)(
          jax.random.key(seed), images, masks, weights))
  np.testing.assert_array_equal(
      np.round(out_images[..., 0] * (SIZE * SIZE - 1)).astype(np.int32),
      out_masks)
  np.testing.assert_array_equal(out_weights, 1.0)
  for before, after in zip(masks, out_masks):  # a permutation of pixels
    np.testing.assert_array_equal(np.sort(after, axis=None),
                                  np.sort(before, axis=None))


@SETTINGS
@given(preset=st.sampled_from(GEOMETRY_SPECS), seed=seeds,
       pattern_seed=seeds)
def test_mask_of_a_binary_image_stays_on_the_transformed_image(
    preset, seed, pattern_seed):
  """The mask IS the image: class 2 where the binary image is 1. Bilinear
  image and nearest mask must agree wherever the interpolated image is
  unambiguous: an interpolated value above 3/4 means the nearest source
  pixel (the largest of the four bilinear weights, at least 1/4) is 1;
  below 1/4, that it is 0. Class 1 never appears: labels are moved, never
  blended."""
  binary = _pattern(pattern_seed, "binary", (BATCH, SIZE, SIZE))
  images = binary[..., None]
  masks = 2 * binary.astype(np.int32)
  weights = np.ones((BATCH, SIZE, SIZE), np.float32)
  out_images, out_masks, out_weights = (
      np.asarray(a) for a in _augment_segmentation(preset)(
          jax.random.key(seed), images, masks, weights))
  assert out_masks.dtype == np.int32 and out_masks.shape == masks.shape
  assert out_weights.dtype == np.float32 and set(np.unique(out_weights)) <= {
      0.0, 1.0}
  assert set(np.unique(out_masks)) <= {0, 2}  # no class is invented
  value = out_images[..., 0]
  inside = out_weights == 1
  np.testing.assert_array_equal(out_masks[inside & (value > 0.75)], 2)
  np.testing.assert_array_equal(out_masks[inside & (value < 0.25)], 0)
  # Outside the rotated image, labels are background and weights 0.
  np.testing.assert_array_equal(out_masks[~inside], 0)


@SETTINGS
@given(preset=st.sampled_from(GEOMETRY_SPECS), seed=seeds)
def test_weight_one_never_marks_a_padded_image_pixel(preset, seed):
  # A white image: wherever the loss weight stays 1, the image must show
  # mostly real (white) pixels, never the black padding rotated in.
  images = np.ones((BATCH, SIZE, SIZE, 1), np.float32)
  masks = np.zeros((BATCH, SIZE, SIZE), np.int32)
  weights = np.ones((BATCH, SIZE, SIZE), np.float32)
  out_images, _, out_weights = (
      np.asarray(a) for a in _augment_segmentation(preset)(
          jax.random.key(seed), images, masks, weights))
  assert (out_images[..., 0][out_weights == 1] > 0.5).all()
  # Rotations only ever lose pixels at the border, never in the centre.
  centre = slice(SIZE // 2 - 2, SIZE // 2 + 2)
  np.testing.assert_array_equal(out_weights[:, centre, centre], 1.0)


@SETTINGS
@given(strength=st.floats(0.0, 4.0, allow_nan=False),
       preset=st.sampled_from(sorted(augment.PRESETS)))
def test_any_strength_gives_a_valid_spec_that_grows_with_strength(
    strength, preset):
  spec = augment.get_spec(preset, strength)  # validated on construction
  base = augment.PRESETS[preset]
  for field in ("hflip_p", "vflip_p", "jitter_p", "gray_p", "blur_p",
                "solarize_p"):
    assert 0.0 <= getattr(spec, field) <= getattr(base, field)
  assert 0.01 <= spec.crop_area[0] <= spec.crop_area[1] <= 1.0
  stronger = augment.get_spec(preset, strength + 0.5)
  assert all(a <= b for a, b in zip(spec.jitter, stronger.jitter))
  assert spec.rotate_deg <= stronger.rotate_deg
  assert stronger.crop_area[0] <= spec.crop_area[0]
  if strength == 0.0:
    assert dataclasses.replace(spec, name="none", crop_aspect=(1.0, 1.0),
                               blur_sigma=(0.1, 2.0), solarize_threshold=0.5,
                               jitter_random_order=True,
                               brightness_mode="multiply") == (
                                   augment.PRESETS["none"])


@pytest.mark.parametrize("name", sorted(crop_presets.CROP_PRESETS))
def test_crop_presets_are_valid_intensity_specs(name):
  preset = crop_presets.CROP_PRESETS[name]
  for scale in (preset.global_scale, preset.local_scale):
    assert 0.0 < scale[0] <= scale[1] <= 1.0
  assert preset.local_scale[1] <= preset.global_scale[1]

  @SETTINGS
  @given(strength=st.floats(0.0, 2.0, allow_nan=False))
  def check(strength):
    spec = augment.with_intensity(
        augment.PRESETS["none"], strength, name, jitter=preset.jitter,
        jitter_p=0.8, gray_p=0.2, blur_p=1.0, solarize_p=0.2,
        brightness_mode="multiply")
    assert spec.jitter[3] <= 0.5
    assert all(0.0 <= s for s in spec.jitter)

  check()


# ---------------------------------------------------------------------------
# Pixel samplers.

WEIGHTS_SHAPE = (2, 8, 8)
NUM = 16


@functools.cache
def _sampler(method, grid):
  return jax.jit(functools.partial(pixel_sampling.sample_pixels, num=NUM,
                                   method=method, grid=grid))


def _weights(seed, kind):
  rng = np.random.default_rng(seed)
  if kind == "mask":
    weights = rng.random(WEIGHTS_SHAPE) < rng.uniform(0.05, 0.95)
  elif kind == "single":  # one pixel carries all the mass
    weights = np.zeros(WEIGHTS_SHAPE)
    weights.flat[rng.integers(weights.size)] = rng.uniform(0.1, 10.0)
  elif kind == "zero":
    weights = np.zeros(WEIGHTS_SHAPE)
  else:  # positive reals with exact zeros
    weights = rng.exponential(size=WEIGHTS_SHAPE) * (
        rng.random(WEIGHTS_SHAPE) < 0.6)
  return np.asarray(weights, np.float32)


weights_of = st.builds(_weights, seeds,
                       st.sampled_from(["mask", "single", "zero", "real"]))
samplers = st.sampled_from(pixel_sampling.SAMPLERS)
grids = st.sampled_from([1, 2, 4])


@SETTINGS
@given(method=samplers, grid=grids, weights=weights_of, seed=seeds)
def test_draws_are_valid_weighted_pixels_and_repeat_with_the_key(
    method, grid, weights, seed):
  sample = _sampler(method, grid)
  indices, valid = (np.asarray(a) for a in sample(jax.random.key(seed),
                                                  weights))
  assert indices.shape == (NUM,) and indices.dtype == np.int32
  assert valid.shape == () and bool(valid) == bool(weights.sum() > 0)
  assert ((0 <= indices) & (indices < weights.size)).all()
  if valid:
    assert (weights.reshape(-1)[indices] > 0).all()
  again, _ = sample(jax.random.key(seed), weights)
  np.testing.assert_array_equal(np.asarray(again), indices)
  # Only the weights' proportions matter: doubling (exact in float) them
  # draws the very same pixels.
  doubled, _ = sample(jax.random.key(seed), weights * 2)
  np.testing.assert_array_equal(np.asarray(doubled), indices)


@SETTINGS
@given(grid=grids, weights=weights_of.filter(lambda w: w.sum() > 0),
       seed=seeds)
def test_stratified_draws_cover_each_pixel_in_proportion(grid, weights, seed):
  """SG's i-th draw lies in the i-th equal slice of the mass listed cell by
  cell, so draws come in that order and a pixel holding a fraction f of the
  mass is drawn floor(f * num) - 1 .. ceil(f * num) + 1 times, whatever the
  key (naive sampling gives no such bound)."""
  order = pixel_sampling.grid_order(*WEIGHTS_SHAPE, grid)
  rank = np.empty_like(order)
  rank[order] = np.arange(order.size)
  indices, _ = _sampler("sg", grid)(jax.random.key(seed), weights)
  indices = np.asarray(indices)
  assert (np.diff(rank[indices]) >= 0).all()
  share = weights.reshape(-1).astype(np.float64) / weights.sum() * NUM
  counts = np.bincount(indices, minlength=weights.size)
  assert (counts >= np.floor(share) - 1).all()
  assert (counts <= np.ceil(share) + 1).all()
  # SAG: each half is stratified the same way over half as many slices.
  indices, _ = _sampler("sag", grid)(jax.random.key(seed), weights)
  half = np.asarray(indices).reshape(2, NUM // 2)
  for part in half:
    assert (np.diff(rank[part]) >= 0).all()
    counts = np.bincount(part, minlength=weights.size)
    assert (counts >= np.floor(share / 2) - 1).all()
    assert (counts <= np.ceil(share / 2) + 1).all()
  # ... and antithetic: the i-th draws of the two halves sit at targets t
  # and (2i + 1) T / (num / 2) - t (reflected inside slice i), so the mass
  # intervals of the two drawn pixels sum around the slice's centre.
  mass = np.cumsum(weights.reshape(-1).astype(np.float64)[order])
  upper = mass[rank]  # cumulative mass up to and including each pixel
  lower = upper - weights.reshape(-1)
  centre = (2 * np.arange(NUM // 2) + 1) * mass[-1] / (NUM // 2)
  tol = 1e-4 * mass[-1]
  assert (lower[half[0]] + lower[half[1]] <= centre + tol).all()
  assert (upper[half[0]] + upper[half[1]] >= centre - tol).all()
