"""Tests for medclr.augment.ops: presets, strength, alignment, sharding."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medclr.augment import ops as augment

SIZE = 32
BATCH = 8

# Static spec arguments: one compile per (spec, shape), shared across tests.
_augment_batch = jax.jit(augment.augment_batch, static_argnums=2)
_augment_view = jax.jit(augment.augment_view, static_argnums=2)
_augment_segmentation = jax.jit(augment.augment_segmentation,
                                static_argnums=4)
_augment_segmentation_batch = jax.jit(augment.augment_segmentation_batch,
                                      static_argnums=4)
_sharded_augment = jax.jit(augment.sharded_augment, static_argnums=(2, 3))
_sharded_augment_segmentation = jax.jit(
    augment.sharded_augment_segmentation, static_argnums=(4, 5))
_two_views = jax.jit(augment.two_views, static_argnums=(3, 4))

GEOMETRY_ONLY = augment.AugmentSpec(
    name="geometry", hflip_p=0.5, rot90=True, rotate_deg=30.0)
JITTER_ONLY = augment.AugmentSpec(
    name="jitter", jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=1.0)


def _images(channels: int = 3, batch: int = BATCH, seed: int = 0):
  """Smooth random images in [0, 1] (smooth so blur and rotation matter)."""
  noise = jax.random.uniform(jax.random.key(seed), (batch, 8, 8, channels))
  return jax.image.resize(noise, (batch, SIZE, SIZE, channels), "bilinear")


def _l_shape() -> np.ndarray:
  """An asymmetric binary pattern: no flip or rotation maps it to itself."""
  mask = np.zeros((SIZE, SIZE), np.int32)
  mask[6:26, 8:13] = 1  # long vertical bar, left of centre
  mask[21:26, 13:22] = 1  # short foot, pointing right
  return mask


def _mesh(num_devices: int):
  if jax.device_count() < num_devices:
    pytest.skip(f"needs {num_devices} devices, have {jax.device_count()}")
  return jax.make_mesh((num_devices,), ("data",),
                       axis_types=(jax.sharding.AxisType.Explicit,),
                       devices=jax.devices()[:num_devices])


def _per_shard_reference(key, images, spec, num_devices):
  """What sharded_augment must equal: each shard keyed by global index."""
  shards = np.split(np.asarray(images), num_devices)
  local = len(shards[0])
  return np.concatenate([
      augment.augment_batch(key, shard, spec, offset=d * local)
      for d, shard in enumerate(shards)
  ])


# ---------------------------------------------------------------------------
# Presets and get_spec.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("preset", sorted(augment.PRESETS))
def test_every_preset_keeps_shape_dtype_and_range(preset, channels):
  images = _images(channels)
  out = _augment_batch(jax.random.key(0), images, augment.get_spec(preset))
  assert out.shape == images.shape
  assert out.dtype == jnp.float32
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  if preset == "none":
    np.testing.assert_array_equal(out, images)
  else:
    assert float(jnp.abs(out - images).max()) > 0.01


def test_simclr_preset_values_match_published_code():
  spec = augment.get_spec("simclr_strong")
  assert spec.crop_area == (0.08, 1.0)
  assert spec.crop_aspect == pytest.approx((3 / 4, 4 / 3))
  assert spec.hflip_p == 0.5
  assert spec.jitter == pytest.approx((0.8, 0.8, 0.8, 0.2))
  assert (spec.jitter_p, spec.gray_p, spec.blur_p) == (0.8, 0.2, 0.5)
  assert spec.blur_sigma == (0.1, 2.0)
  assert spec.jitter_random_order


def test_basic_medical_has_no_intensity_ops():
  spec = augment.get_spec("basic_medical")
  assert spec.crop_area == (1.0, 1.0)
  assert spec.rotate_deg > 0 and spec.hflip_p > 0
  assert (spec.jitter_p, spec.gray_p, spec.blur_p, spec.solarize_p) == (
      0, 0, 0, 0)


def test_get_spec_interpolates_with_strength():
  half = augment.get_spec("simclr_strong", 0.5)
  assert half.jitter == pytest.approx((0.4, 0.4, 0.4, 0.1))
  assert half.crop_area == pytest.approx((1 - 0.5 * 0.92, 1.0))
  assert half.crop_aspect == pytest.approx(((3 / 4)**0.5, (4 / 3)**0.5))
  assert (half.hflip_p, half.jitter_p, half.gray_p, half.blur_p) == (
      pytest.approx(0.25), pytest.approx(0.4), pytest.approx(0.1),
      pytest.approx(0.25))


def test_get_spec_extrapolates_magnitudes_not_probabilities():
  double = augment.get_spec("simclr_strong", 2.0)
  assert double.jitter == pytest.approx((1.6, 1.6, 1.6, 0.4))
  assert double.crop_area == pytest.approx((0.01, 1.0))
  assert (double.jitter_p, double.gray_p, double.blur_p) == (0.8, 0.2, 0.5)
  assert augment.get_spec("basic_medical", 2.0).rotate_deg == 30.0


def test_get_spec_zero_strength_turns_every_preset_off():
  for preset in augment.PRESETS:
    spec = augment.get_spec(preset, 0.0)
    assert spec.crop_area == (1.0, 1.0), preset
    assert spec.crop_aspect == (1.0, 1.0), preset
    assert spec.rotate_deg == 0 and not spec.rot90, preset
    assert spec.jitter == (0, 0, 0, 0), preset
    assert max(spec.hflip_p, spec.vflip_p, spec.jitter_p, spec.gray_p,
               spec.blur_p, spec.solarize_p) == 0, preset


def test_get_spec_rejects_unknown_preset_listing_known_ones():
  with pytest.raises(ValueError, match="simclr_strong") as error:
    augment.get_spec("simclr_strongest")
  assert "basic_medical" in str(error.value)


def test_get_spec_rejects_negative_strength():
  with pytest.raises(ValueError, match="strength"):
    augment.get_spec("simclr_strong", -0.5)


def test_spec_rejects_out_of_range_fields_by_name():
  with pytest.raises(ValueError, match="hflip_p"):
    augment.AugmentSpec(name="bad", hflip_p=1.5)
  with pytest.raises(ValueError, match="crop_area"):
    augment.AugmentSpec(name="bad", crop_area=(0.5, 0.2))
  with pytest.raises(ValueError, match="brightness_mode"):
    augment.AugmentSpec(name="bad", brightness_mode="gamma")


def test_spec_from_lists_is_hashable():
  spec = augment.AugmentSpec(name="cfg", crop_area=[0.2, 1.0],
                             jitter=[0.4, 0.4, 0.4, 0.1])
  assert hash(spec) == hash(dataclasses.replace(spec))
  assert spec.crop_area == (0.2, 1.0)


@pytest.mark.parametrize("height, kernel", [(16, 3), (32, 3), (64, 7),
                                            (100, 11), (224, 23)])
def test_blur_kernel_is_height_over_ten_rounded_to_odd(height, kernel):
  assert augment.blur_kernel_size(height) == kernel


# ---------------------------------------------------------------------------
# Randomness and strength on real outputs.
# ---------------------------------------------------------------------------


def test_same_key_same_output_and_new_key_new_output():
  images = _images()
  spec = augment.get_spec("simclr_strong")
  first = _augment_batch(jax.random.key(3), images, spec)
  again = _augment_batch(jax.random.key(3), images, spec)
  other = _augment_batch(jax.random.key(4), images, spec)
  np.testing.assert_array_equal(first, again)
  assert float(jnp.abs(first - other).max()) > 0.01


def test_images_in_a_batch_get_independent_flips():
  pattern = jnp.asarray(_l_shape(), jnp.float32)[..., None]
  images = jnp.broadcast_to(pattern, (BATCH, SIZE, SIZE, 1))
  spec = augment.AugmentSpec(name="hflip", hflip_p=0.5)
  out = _augment_batch(jax.random.key(0), images, spec)
  flipped = [bool(jnp.all(o == pattern[:, ::-1])) for o in out]
  unchanged = [bool(jnp.all(o == pattern)) for o in out]
  assert all(f or u for f, u in zip(flipped, unchanged))
  assert any(flipped) and any(unchanged)


@pytest.mark.parametrize("channels", [1, 3])
def test_strength_zero_is_identity_for_simclr_strong(channels):
  images = _images(channels)
  spec = augment.get_spec("simclr_strong", 0.0)
  out = _augment_batch(jax.random.key(0), images, spec)
  np.testing.assert_array_equal(out, images)


def test_jitter_change_grows_with_strength():
  images = _images()
  changes = []
  for strength in (0.5, 1.0):
    scaled = augment.get_spec("simclr_strong", strength)
    # Isolate the jitter: the same key then draws the same uniforms, scaled.
    spec = dataclasses.replace(JITTER_ONLY, jitter=scaled.jitter,
                               jitter_p=scaled.jitter_p)
    out = _augment_batch(jax.random.key(0), images, spec)
    changes.append(float(jnp.abs(out - images).mean()))
  # Strength 0 is the identity (tested above); the change then grows.
  assert 0 < changes[0] < changes[1], changes


def test_grayscale_images_skip_colour_only_ops():
  images = _images(channels=1)
  spec = augment.AugmentSpec(name="colour", jitter=(0, 0, 0.8, 0.2),
                             jitter_p=1.0, gray_p=1.0)
  out = _augment_batch(jax.random.key(0), images, spec)
  np.testing.assert_array_equal(out, images)


def test_output_is_gradient_stopped():
  image = _images(batch=1)[0]
  spec = augment.get_spec("chaitanya_global")
  total = lambda x: augment.augment_view(jax.random.key(0), x, spec).sum()
  grad = jax.jit(jax.grad(total))(image)
  np.testing.assert_array_equal(grad, jnp.zeros_like(image))


def test_bad_image_shapes_are_rejected():
  spec = augment.get_spec("none")
  with pytest.raises(ValueError, match="C in"):
    augment.augment_view(jax.random.key(0), jnp.zeros((8, 8, 2)), spec)
  with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
    augment.augment_batch(jax.random.key(0), jnp.zeros((8, 8, 3)), spec)
  with pytest.raises(ValueError, match="square"):
    augment.augment_view(jax.random.key(0), jnp.zeros((8, 12, 3)),
                         GEOMETRY_ONLY)


# ---------------------------------------------------------------------------
# Segmentation: image, mask and weight stay aligned.
# ---------------------------------------------------------------------------


def _segmentation_batch():
  """Channel 0 = the mask pattern, channel 1 = ones (marks real pixels)."""
  mask = _l_shape()
  image = np.stack([mask, np.ones_like(mask), 0.5 * np.ones_like(mask)],
                   axis=-1).astype(np.float32)
  images = np.broadcast_to(image, (BATCH,) + image.shape)
  masks = np.broadcast_to(mask, (BATCH,) + mask.shape)
  weights = np.ones((BATCH, SIZE, SIZE), np.float32)
  return jnp.asarray(images), jnp.asarray(masks), jnp.asarray(weights)


def test_segmentation_geometry_keeps_image_mask_and_weight_aligned():
  images, masks, weights = _segmentation_batch()
  out_images, out_masks, out_weights = _augment_segmentation_batch(
      jax.random.key(0), images, masks, weights, GEOMETRY_ONLY)
  assert out_masks.dtype == jnp.int32 and out_masks.shape == masks.shape
  assert out_weights.dtype == jnp.float32 and out_weights.shape == (
      weights.shape)
  assert set(np.unique(out_masks)) <= {0, 1}
  assert set(np.unique(out_weights)) <= {0.0, 1.0}
  # The transform did something: masks moved and corners were rotated in.
  assert int(jnp.sum(out_masks != masks)) > 0
  assert float(out_weights.min()) == 0.0
  valid = np.asarray(out_weights) == 1
  pattern = np.asarray(out_images[..., 0]) > 0.5
  mismatch = (pattern != np.asarray(out_masks == 1)) & valid
  # Bilinear (image) and nearest (mask) can disagree on pattern edges only.
  assert mismatch.sum() / valid.sum() < 0.02
  # Weight 0 exactly where the constant channel was rotated in as padding.
  real = np.asarray(out_images[..., 1]) > 0.5
  np.testing.assert_array_equal(real, valid)
  assert np.all(np.asarray(out_masks)[~valid] == 0)


def test_segmentation_image_matches_augment_view_for_same_key():
  image = _images(batch=1)[0]
  spec = dataclasses.replace(augment.get_spec("basic_medical"), rot90=True,
                             jitter=(0.4, 0.4, 0.0, 0.0), jitter_p=0.8,
                             blur_p=0.5)
  mask = jnp.asarray(_l_shape())
  weight = jnp.ones((SIZE, SIZE), jnp.float32)
  for seed in range(3):
    key = jax.random.key(seed)
    seg_image, _, _ = _augment_segmentation(key, image, mask, weight, spec)
    np.testing.assert_allclose(seg_image, _augment_view(key, image, spec),
                               atol=1e-6)


def test_segmentation_intensity_ops_leave_mask_and_weight_alone():
  images, masks, weights = _segmentation_batch()
  out_images, out_masks, out_weights = _augment_segmentation_batch(
      jax.random.key(0), images, masks, weights, JITTER_ONLY)
  np.testing.assert_array_equal(out_masks, masks)
  np.testing.assert_array_equal(out_weights, weights)
  assert float(jnp.abs(out_images - images).max()) > 0.01


def test_segmentation_rejects_mismatched_mask():
  image = _images(batch=1)[0]
  with pytest.raises(ValueError, match="mask"):
    augment.augment_segmentation(jax.random.key(0), image,
                                 jnp.zeros((SIZE, SIZE + 1), jnp.int32),
                                 jnp.ones((SIZE, SIZE)), GEOMETRY_ONLY)


# ---------------------------------------------------------------------------
# Sharded entry points.
# ---------------------------------------------------------------------------


def test_sharded_augment_on_8_devices_equals_per_shard_augment_batch():
  mesh = _mesh(8)
  key = jax.random.key(7)
  spec = augment.get_spec("simclr_strong")
  images = _images(batch=16)
  with jax.set_mesh(mesh):
    sharded = jax.device_put(images, jax.NamedSharding(mesh, jax.P("data")))
    out = _sharded_augment(key, sharded, spec, "data")
  assert out.sharding.spec[0] == "data"
  assert len(out.addressable_shards) == 8
  expected = _per_shard_reference(key, images, spec, 8)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  # Device-count invariance: 8 devices give the 1-device (no mesh) result.
  np.testing.assert_allclose(
      out, augment.augment_batch(key, images, spec), atol=1e-5)
  # Devices draw different augmentations for identical local inputs.
  same = jnp.broadcast_to(images[:2], (8, 2) + images.shape[1:]).reshape(
      images.shape)
  with jax.set_mesh(mesh):
    out_same = np.asarray(_sharded_augment(key, same, spec, "data"))
  assert np.abs(out_same[:2] - out_same[2:4]).max() > 0.01


def test_sharded_augment_on_1_device_equals_folded_augment_batch():
  mesh = _mesh(1)
  key = jax.random.key(7)
  spec = augment.get_spec("simclr_strong")
  images = _images()
  with jax.set_mesh(mesh):
    out = _sharded_augment(key, images, spec, "data")
  expected = _per_shard_reference(key, images, spec, 1)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  # Without a mesh the same one-device result comes back.
  np.testing.assert_allclose(_sharded_augment(key, images, spec, "data"),
                             expected, atol=1e-5)


def test_sharded_augment_rejects_bad_axis_and_batch():
  mesh = _mesh(8)
  spec = augment.get_spec("none")
  with jax.set_mesh(mesh):
    with pytest.raises(ValueError, match="'batch'"):
      augment.sharded_augment(jax.random.key(0), _images(), spec, "batch")
    with pytest.raises(ValueError, match="divisible"):
      augment.sharded_augment(jax.random.key(0), _images(batch=12), spec)


def test_two_views_use_independent_keys():
  mesh = _mesh(8)
  images = _images()
  spec = augment.get_spec("basic_medical")
  with jax.set_mesh(mesh):
    sharded = jax.device_put(images, jax.NamedSharding(mesh, jax.P("data")))
    view1, view2 = _two_views(jax.random.key(0), sharded, sharded, spec,
                              "data")
  assert view1.shape == view2.shape == images.shape
  assert view1.sharding.spec[0] == "data"
  assert float(jnp.abs(view1 - view2).max()) > 0.01


def test_sharded_segmentation_on_8_devices_equals_per_shard():
  mesh = _mesh(8)
  key = jax.random.key(1)
  images, masks, weights = _segmentation_batch()
  data = jax.NamedSharding(mesh, jax.P("data"))
  with jax.set_mesh(mesh):
    out = _sharded_augment_segmentation(
        key, *(jax.device_put(a, data) for a in (images, masks, weights)),
        GEOMETRY_ONLY, "data")
  for array in out:
    assert array.sharding.spec[0] == "data"
  for d in range(8):
    local = slice(d, d + 1)
    expected = augment.augment_segmentation_batch(
        key, images[local], masks[local], weights[local], GEOMETRY_ONLY,
        offset=d)
    for got, want in zip(out, expected):
      np.testing.assert_allclose(np.asarray(got)[local], want, atol=1e-5)


def test_zoom_magnifies_about_the_centre_and_keeps_labels_aligned():
  # A centred 8x8 square in a 32x32 image: zoom z makes it about 8z wide.
  image = np.zeros((32, 32, 1), np.float32)
  image[12:20, 12:20] = 1.0
  mask = image[..., 0].astype(np.int32)
  weight = np.ones((32, 32), np.float32)
  widths = {}
  for zoom in (0.8, 1.25):
    spec = augment.AugmentSpec(name="zoom", zoom=(zoom, zoom))
    out_image, out_mask, out_weight = augment.augment_segmentation(
        jax.random.key(0), jnp.asarray(image), jnp.asarray(mask),
        jnp.asarray(weight), spec)
    widths[zoom] = int(np.asarray(out_mask)[16].sum())
    np.testing.assert_array_equal(np.asarray(out_image[..., 0]) > 0.5,
                                  np.asarray(out_mask) == 1)
    # Zooming out brings padding in at the borders, with weight 0.
    assert (float(np.asarray(out_weight).min()) == 0.0) == (zoom < 1)
  assert widths[0.8] in (6, 7) and widths[1.25] == 10
  with pytest.raises(ValueError, match="zoom"):
    augment.AugmentSpec(name="bad", zoom=(1.2, 0.9))


def test_gamma_raises_the_image_to_a_drawn_power():
  image = jnp.linspace(0.0, 1.0, 16 * 16 * 3).reshape(16, 16, 3)
  fixed = augment.AugmentSpec(name="g", gamma=(2.0, 2.0), gamma_p=1.0)
  out = augment.augment_view(jax.random.key(0), image, fixed)
  np.testing.assert_allclose(out, image ** 2, atol=1e-5)
  ranged = augment.AugmentSpec(name="g", gamma=(0.5, 2.0), gamma_p=1.0)
  exponents = []
  for seed in range(40):
    out = augment.augment_view(jax.random.key(seed), image, ranged)
    exponents.append(float(jnp.log(out[8, 8, 0]) / jnp.log(image[8, 8, 0])))
  assert 0.5 - 1e-3 <= min(exponents) and max(exponents) <= 2.0 + 1e-3
  assert min(exponents) < 0.8 and max(exponents) > 1.4  # log-uniform spread
  with pytest.raises(ValueError, match="gamma"):
    augment.AugmentSpec(name="bad", gamma=(0.0, 2.0))
