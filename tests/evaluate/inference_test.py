"""Tests for medclr.evaluate.inference: sliding-window and whole-image."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medclr.evaluate import inference


def first_channel(batch):
  """A per-pixel 'model' whose logits are the input's first channel."""
  return batch[..., :1]


@jax.jit
def box_filter(batch):
  """3x3 mean filter with zero padding: translation-equivariant, like a conv."""
  channel = batch[..., :1]
  kernel = jnp.full((3, 3, 1, 1), 1.0 / 9.0, batch.dtype)
  return jax.lax.conv_general_dilated(
      channel, kernel, window_strides=(1, 1), padding="SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def random_image(height, width, channels=3, seed=0):
  return np.random.default_rng(seed).random(
      (height, width, channels)).astype(np.float32)


@pytest.mark.parametrize("weighting", ["gaussian", "uniform"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("shape", [(37, 53), (10, 12), (16, 16)])
def test_sliding_window_of_per_pixel_model_is_exact(shape, overlap, weighting):
  image = random_image(*shape)
  logits = inference.sliding_window_predict(
      first_channel, image, window=16, overlap=overlap, batch_size=4,
      weighting=weighting)
  assert logits.shape == shape + (1,)
  assert logits.dtype == np.float32
  np.testing.assert_array_equal(logits, image[..., :1])


def test_predict_fn_always_sees_the_same_batch_shape():
  seen_shapes = []

  def recording_predict(batch):
    seen_shapes.append(batch.shape)
    return first_channel(batch)

  # 37x53 at window 16, stride 8: 4 x 6 = 24 windows = 2 full batches of 10
  # plus one padded batch.
  inference.sliding_window_predict(
      recording_predict, random_image(37, 53, 2), window=16, overlap=0.5,
      batch_size=10)
  assert seen_shapes == [(10, 16, 16, 2)] * 3


def test_non_overlapping_windows_match_full_filter_inside_windows():
  # 48x64 is a whole number of 16-pixel windows, so no padding: each pixel is
  # in exactly one window, and only pixels on a window's edge lose context.
  image = random_image(48, 64, 1)
  full = np.asarray(box_filter(image[None]))[0]
  tiled = inference.sliding_window_predict(box_filter, image, window=16,
                                           overlap=0.0, batch_size=4)
  rows, cols = np.meshgrid(np.arange(48), np.arange(64), indexing="ij")
  on_seam = ((rows % 16 == 0) & (rows > 0)) | ((rows % 16 == 15) &
                                               (rows < 47))
  on_seam |= ((cols % 16 == 0) & (cols > 0)) | ((cols % 16 == 15) &
                                                (cols < 63))
  np.testing.assert_allclose(tiled[~on_seam], full[~on_seam], atol=1e-6)
  # The seams really differ, so the comparison above is not vacuous.
  assert np.abs(tiled[on_seam] - full[on_seam]).min() > 1e-4


def test_gaussian_weighting_reduces_seam_error_over_uniform():
  image = random_image(40, 56, 1, seed=1)
  full = np.asarray(box_filter(image[None]))[0]
  # Away from the image border, where mirror and zero padding differ anyway.
  inner = (slice(1, -1), slice(1, -1))

  def error(weighting):
    logits = inference.sliding_window_predict(
        box_filter, image, window=16, overlap=0.5, batch_size=8,
        weighting=weighting)
    return np.abs(logits[inner] - full[inner]).mean()

  assert error("gaussian") < 0.2 * error("uniform")


def test_whole_image_predict_pads_to_multiple_and_crops_back():
  image = random_image(37, 53, 3)
  seen_shapes = []

  def recording_filter(batch):
    seen_shapes.append(batch.shape)
    return box_filter(batch)

  logits = inference.whole_image_predict(recording_filter, image, multiple=16)
  assert seen_shapes == [(1, 48, 64, 3)]
  assert logits.shape == (37, 53, 1)
  full = np.asarray(box_filter(image[None]))[0]
  # Mirror padding only changes the outermost ring of pixels.
  np.testing.assert_allclose(logits[1:-1, 1:-1], full[1:-1, 1:-1], atol=1e-6)
  np.testing.assert_array_equal(
      inference.whole_image_predict(first_channel, image, multiple=16),
      image[..., :1])


def test_wrong_logits_shape_raises():
  with pytest.raises(ValueError, match="predict_fn returned shape"):
    inference.sliding_window_predict(lambda b: b[:, ::2], random_image(16, 16),
                                     window=8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image": np.zeros((8, 8))}, "image must have shape"),
        ({"overlap": 1.0}, "overlap must be"),
        ({"window": 0}, "window must be"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"weighting": "hann"}, "weighting must be"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
  arguments = {"predict_fn": first_channel, "image": random_image(8, 8),
               "window": 4}
  arguments.update(kwargs)
  with pytest.raises(ValueError, match=message):
    inference.sliding_window_predict(**arguments)


def test_gaussian_importance_map_peaks_in_centre_and_stays_positive():
  weights = inference.gaussian_importance_map(16)
  assert weights.shape == (16, 16)
  assert weights[7, 7] == weights[8, 8] == weights.max() == 1.0
  assert weights.min() > 0
  np.testing.assert_array_equal(weights, weights[::-1, ::-1])
  assert weights[0, 0] < weights[0, 8] < weights[8, 8]


def test_foreground_probability_from_one_or_two_logits():
  margin = np.array([[-30.0, -1.0], [0.0, 2.0]])
  expected = 1.0 / (1.0 + np.exp(-margin))
  np.testing.assert_allclose(
      inference.foreground_probability(margin[..., None]), expected, rtol=1e-6)
  two_class = np.stack([np.full_like(margin, 3.0), margin + 3.0], axis=-1)
  np.testing.assert_allclose(inference.foreground_probability(two_class),
                             expected, rtol=1e-6)
  with pytest.raises(ValueError, match="binary task"):
    inference.foreground_probability(np.zeros((2, 2, 3)))


@pytest.mark.parametrize("mode", ["flips", "d4"])
def test_tta_of_an_equivariant_predictor_is_exact(mode):
  """A per-pixel model commutes with flips and transposes, so test-time
  augmentation must return its plain prediction (a wrong inverse fails)."""
  image = np.random.default_rng(0).random((9, 14, 3)).astype(np.float32)
  per_pixel = lambda x: x.sum(-1, keepdims=True) * 2.0 - 1.0
  got = inference.tta_predict(per_pixel, image, mode)
  np.testing.assert_allclose(got, per_pixel(image), rtol=1e-6)


def test_tta_averages_a_position_dependent_predictor():
  """A model that sees only the row index: 'flips' averages row r with row
  H-1-r, which shows every pass is mapped back to the image's orientation."""
  image = np.zeros((5, 4, 1), np.float32)
  rows = lambda x: np.broadcast_to(
      np.arange(x.shape[0], dtype=np.float32)[:, None, None],
      x.shape[:2] + (1,))
  got = inference.tta_predict(rows, image, "flips")
  np.testing.assert_allclose(got, np.full((5, 4, 1), 2.0))
  with pytest.raises(ValueError, match="config.eval.tta"):
    inference.tta_predict(rows, image, "rot45")
