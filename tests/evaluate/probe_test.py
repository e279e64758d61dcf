"""The online probe: k-NN balanced accuracy, hypercolumns, probe patches."""
from flax import nnx
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import smoke_config
from medclr import errors
from medclr import methods
from medclr.data import preprocess
from medclr.evaluate import probe


def _numpy_knn_balanced_accuracy(fit_x, fit_y, query_x, query_y, k):
  fit_x = fit_x / np.linalg.norm(fit_x, axis=1, keepdims=True)
  query_x = query_x / np.linalg.norm(query_x, axis=1, keepdims=True)
  recalls = {0: [], 1: []}
  for x, y in zip(query_x, query_y):
    nearest = np.argsort(-(fit_x @ x), kind="stable")[:k]
    predicted = int(fit_y[nearest].mean() > 0.5)
    recalls[int(y)].append(predicted == y)
  return (np.mean(recalls[0]) + np.mean(recalls[1])) / 2


def test_knn_matches_a_plain_loop():
  rng = np.random.default_rng(0)
  fit_y = rng.integers(0, 2, 60)
  query_y = rng.integers(0, 2, 40)
  # Classes overlap: the accuracy is neither 0.5 nor 1.
  fit_x = rng.normal(size=(60, 5)) + fit_y[:, None]
  query_x = rng.normal(size=(40, 5)) + query_y[:, None]
  got = probe.knn_balanced_accuracy(jnp.asarray(fit_x), jnp.asarray(fit_y),
                                    jnp.asarray(query_x),
                                    jnp.asarray(query_y), 7)
  want = _numpy_knn_balanced_accuracy(fit_x, fit_y, query_x, query_y, 7)
  assert 0.55 < want < 1.0
  assert float(got) == pytest.approx(want)


def _numpy_ridge_balanced_accuracy(fit_x, fit_y, query_x, query_y, l2):
  # Ridge as least squares on rows augmented with sqrt(l2 * n) * I.
  mean, scale = fit_x.mean(0), fit_x.std(0) + 1e-6
  fit_x, query_x = (fit_x - mean) / scale, (query_x - mean) / scale
  target = 2.0 * fit_y - 1.0
  n, d = fit_x.shape
  rows = np.concatenate([fit_x, np.sqrt(l2 * n) * np.eye(d)])
  wanted = np.concatenate([target - target.mean(), np.zeros(d)])
  weights = np.linalg.lstsq(rows, wanted, rcond=None)[0]
  predicted = (query_x @ weights + target.mean() > 0).astype(int)
  return np.mean([np.mean(predicted[query_y == c] == c) for c in (0, 1)])


@pytest.mark.parametrize("l2", [1e-3, 1.0])
def test_ridge_probe_matches_least_squares(l2):
  rng = np.random.default_rng(1)
  fit_y = rng.integers(0, 2, 80)
  query_y = rng.integers(0, 2, 50)
  # Only the first of 6 features carries the class, with unequal scales.
  scales = np.array([1.0, 5.0, 0.1, 1.0, 2.0, 1.0])
  signal = 1.2 * np.eye(6)[0]
  fit_x = (rng.normal(size=(80, 6)) + signal * fit_y[:, None]) * scales
  query_x = (rng.normal(size=(50, 6)) + signal * query_y[:, None]) * scales
  got = probe.ridge_balanced_accuracy(
      jnp.asarray(fit_x, jnp.float32), jnp.asarray(fit_y),
      jnp.asarray(query_x, jnp.float32), jnp.asarray(query_y), l2)
  want = _numpy_ridge_balanced_accuracy(fit_x, fit_y, query_x, query_y, l2)
  assert 0.6 < want < 1.0
  assert float(got) == pytest.approx(want)


def test_hypercolumns_read_every_level_at_the_pixel():
  # Level i holds the value 10 * i + row // 2**i at every column.
  maps = [jnp.broadcast_to((10 * i + jnp.arange(8 // 2 ** i))[None, :, None,
                                                              None],
                           (1, 8 // 2 ** i, 8 // 2 ** i, 2)).astype(float)
          for i in range(3)]
  columns = probe.hypercolumns(maps, jnp.array([[[5, 1]]]))
  # Each level is L2-normalised: two equal channels -> 1/sqrt(2) each.
  np.testing.assert_allclose(columns, np.full((1, 1, 6), 2 ** -0.5),
                             rtol=1e-5)
  zero = [m - m for m in maps]
  zero[1] = maps[1]
  picked = probe.hypercolumns(zero, jnp.array([[[5, 1]]]))
  np.testing.assert_allclose(picked[0, 0, 2:4], [2 ** -0.5] * 2, rtol=1e-5)


def test_probe_set_is_balanced_inside_the_fov_and_from_the_split(
    phantom_data_dir):
  cfg = ml_collections.ConfigDict({
      "dataset": "phantom", "split": "train", "num_images": 4,
      "patches_per_image": 2, "pixels_per_patch": 16, "k": 5, "every": 1,
      "seed": 0})
  spec = preprocess.Preprocess(normalize="image")
  probe_set = probe.build_probe_set(cfg, phantom_data_dir, 32, spec)
  assert probe_set.patches.shape == (8, 32, 32, 3)
  assert probe_set.labels.shape == (8, 16)
  assert (probe_set.labels.sum(axis=1) == 8).all()  # half vessel
  assert probe_set.fit.tolist() == [True] * 4 + [False] * 4
  config = smoke_config("pretrain_simclr", phantom_data_dir)
  model = methods.get_method(config).make_model(nnx.Rngs(0))
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, ...)
  for kind in probe.PROBE_KINDS:
    accuracy = probe.make_probe_fn(graphdef, probe_set, kind, 5)(
        nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats))
    assert 0.0 <= float(accuracy) <= 1.0
  with pytest.raises(errors.ConfigError, match="config.probe.kind='svm'"):
    probe.make_probe_fn(graphdef, probe_set, "svm")
  with pytest.raises(errors.ConfigError, match="num_images=1"):
    probe.build_probe_set(ml_collections.ConfigDict(dict(cfg, num_images=1)),
                          phantom_data_dir, 32, spec)
