"""Test-time BatchNorm adaptation against train-mode BatchNorm itself."""
from flax import nnx
import numpy as np
import pytest

from medclr import errors
from medclr import models
from medclr.evaluate import adapt_bn
from configs import common


def _unet(norm="batch"):
  config = common.model_config("tiny")
  config.norm = norm
  model = models.make_unet(config, nnx.Rngs(0))
  return models.split_model(model)


def _images(count, size=32, seed=0):
  rng = np.random.default_rng(seed)
  # Far from the initial running statistics (mean 0, var 1).
  return [(3.0 + 2.0 * rng.standard_normal((size, size, 3))).astype(
      np.float32) for _ in range(count)]


def test_one_batch_makes_eval_mode_equal_train_mode():
  graphdef, params, batch_stats = _unet()
  batch = np.stack(_images(2))
  adapted = adapt_bn.adapted_batch_stats(graphdef, params, batch_stats,
                                         [batch])
  predict = models.make_predict_fn(graphdef)
  model = nnx.merge(graphdef, params, batch_stats)
  train_mode = np.asarray(model(batch, train=True))
  before = np.asarray(predict(params, batch_stats, batch))
  after = np.asarray(predict(params, adapted, batch))
  np.testing.assert_allclose(after, train_mode, rtol=1e-4, atol=1e-4)
  assert np.abs(before - train_mode).max() > 1e-2


def test_first_layer_pools_every_pixel_of_every_image():
  graphdef, params, batch_stats = _unet()
  images = _images(2) + _images(1, size=48, seed=1)
  adapted = adapt_bn.adapted_batch_stats(
      graphdef, params, batch_stats, [np.stack(images[:2]), images[2][None]])
  # The first BatchNorm's input is the first convolution's output, which no
  # normalisation precedes: its statistics over all pixels are exact.
  model = nnx.merge(graphdef, params, batch_stats)
  conv = model.encoder.level0.conv0
  outputs = np.concatenate([np.asarray(conv(x[None])).reshape(-1, 8)
                            for x in images])
  first = adapted["encoder"]["level0"]["norm0"]
  np.testing.assert_allclose(first["mean"], outputs.mean(0), rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(first["var"], outputs.var(0), rtol=1e-3,
                             atol=1e-4)


def test_group_norm_models_are_refused():
  graphdef, params, batch_stats = _unet("group")
  with pytest.raises(errors.ConfigError, match="BatchNorm"):
    adapt_bn.adapted_batch_stats(graphdef, params, batch_stats,
                                 [np.stack(_images(1))])


def test_random_crops_are_windows_of_the_images_at_random_places():
  rows, cols = np.mgrid[:40, :50]
  images = [np.repeat((i * 10000 + rows * 100 + cols)[..., None], 3,
                      axis=-1).astype(np.float32) for i in range(3)]
  batches = list(adapt_bn.random_crops(images, 16, 8, 5, seed=1))
  assert len(batches) == 5 and all(b.shape == (8, 16, 16, 3)
                                   for b in batches)
  corners = set()
  for crop in np.concatenate(batches):
    corner = crop[0, 0, 0]
    window = corner + (rows[:16, :16] * 100 + cols[:16, :16])
    np.testing.assert_array_equal(crop[..., 0], window)  # one window
    corners.add(float(corner))
  assert len({c // 10000 for c in corners}) == 3, "every image is drawn"
  assert len(corners) > 30, "at many places"
  small = np.zeros((10, 12, 3), np.float32)
  (batch,) = adapt_bn.random_crops([small], 16, 2, 1)
  assert batch.shape == (2, 16, 16, 3)
