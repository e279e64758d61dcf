"""Tests for BYOL (medclr.methods.byol, configs/pretrain_byol.py).

The loss against a direct computation, the EMA schedule, the asymmetric
views, and one end-to-end smoke run on the phantom that checks the EMA update
between checkpoints, resume (with the target restored) on 1 device against
the 8-device run, and fine-tuning from the result.
"""
import importlib
import shutil

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import finetune_unet
from conftest import (assert_trees_close, finetune_from, saved_subtrees,
                      smoke_config)
from medclr import errors
from medclr import models
from medclr.methods import byol
from medclr.methods import ema
from medclr.train import pretrain

BATCH = 8
SIZE = 32


def _saved(workdir, step):
  return saved_subtrees(workdir, step, ("params", "aux"))


def _config(**overrides):
  # Unit tests read no data; the smoke config's tiny model is what matters.
  return smoke_config("pretrain_byol", "unused", **overrides)


def _cosine(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) *
                              np.linalg.norm(b, axis=-1))


def _images(seed, batch=BATCH):
  noise = jax.random.uniform(jax.random.key(seed), (batch, 8, 8, 3))
  return jax.image.resize(noise, (batch, SIZE, SIZE, 3), "bilinear")


@pytest.mark.parametrize("arg", ["", "smoke", "quick",
                                 "quick,preset=basic_medical,views=same"])
def test_config_loads_and_locks(arg):
  config = importlib.import_module("configs.pretrain_byol").get_config(
      arg or None)
  assert isinstance(config, ml_collections.ConfigDict)
  config.lock()
  with pytest.raises(AttributeError):
    config.ema.base_momentun = 0.9  # a typo must not create a field
  assert config.method == "byol" and config.ema.base_momentum == 0.996
  byol.BYOL(config)  # validates the whole config
  if "quick" in arg:  # the fine-tune quick profile expects these
    finetune_quick = finetune_unet.get_config("quick")
    assert config.model.widths == finetune_quick.model.widths
    assert config.data.image_size == finetune_quick.data.crop_size


def test_regression_loss_is_two_minus_two_cosine():
  key1, key2 = jax.random.split(jax.random.key(0))
  p = jax.random.normal(key1, (5, 7))
  z = jax.random.normal(key2, (5, 7))
  np.testing.assert_allclose(byol.regression_loss(p, z),
                             2 - 2 * _cosine(p, z), rtol=1e-5)
  # Scale-invariant, zero for aligned vectors.
  np.testing.assert_allclose(byol.regression_loss(3 * p, 0.5 * z),
                             2 - 2 * _cosine(p, z), rtol=1e-5)
  np.testing.assert_allclose(byol.regression_loss(p, 2 * p), 0, atol=1e-6)


def test_loss_regresses_each_prediction_on_the_other_views_target():
  method = byol.BYOL(_config())
  graphdef, params, stats = models.split_model(method.make_model(nnx.Rngs(0)))
  aux = method.init_aux(params, stats)
  view1, view2 = _images(1), _images(2)

  @jax.jit
  def run(params, aux):
    loss, (new_aux, metrics) = method.loss(
        nnx.merge(graphdef, params, stats), aux, (view1, view2),
        jnp.int32(0))
    # Direct computation: fresh copies of both networks, one view at a time.
    online = nnx.merge(graphdef, params, stats)
    target = nnx.merge(method.target_graphdef, aux["target_params"],
                       aux["target_stats"])
    outputs = (online(view1, train=True), online(view2, train=True),
               target(view1, train=True), target(view2, train=True))
    target_stats = nnx.to_pure_dict(nnx.state(target, nnx.BatchStat))
    return loss, new_aux, metrics, outputs, target_stats

  loss, new_aux, metrics, outputs, target_stats = run(params, aux)
  (p1, z1), (p2, _), t1, t2 = outputs
  want = np.mean((2 - 2 * _cosine(p1, t2)) + (2 - 2 * _cosine(p2, t1)))
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  # Teeth: pairing each prediction with its own view's target differs.
  same_view = np.mean((2 - 2 * _cosine(p1, t1)) + (2 - 2 * _cosine(p2, t2)))
  assert not np.isclose(want, same_view, rtol=1e-3)
  # The target keeps its own BatchNorm running statistics, updated by its
  # forward passes on the two views.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               new_aux["target_stats"], target_stats)
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b),
                       new_aux["target_stats"], aux["target_stats"])
  assert all(jax.tree.leaves(moved))
  z1 = np.asarray(z1, np.float64)
  z1 /= np.linalg.norm(z1, axis=-1, keepdims=True)
  assert metrics["embedding_std"] == pytest.approx(
      float(np.mean(np.std(z1, axis=0, ddof=1))), rel=1e-4)


def test_target_starts_from_its_own_initialisation():
  """deepmind byol initialises the target with its own key (module doc)."""
  method = byol.BYOL(_config())
  _, params, stats = models.split_model(method.make_model(nnx.Rngs(0)))
  aux = method.init_aux(params, stats)
  assert sorted(aux["target_params"]) == ["encoder", "projector"]
  leaves = zip(jax.tree.leaves(aux["target_params"]["encoder"]),
               jax.tree.leaves(params["encoder"]))
  assert all(a.shape == b.shape for a, b in leaves)
  assert not np.allclose(aux["target_params"]["encoder"]["level0"]["conv0"]
                         ["kernel"], params["encoder"]["level0"]["conv0"]
                         ["kernel"])


@pytest.mark.parametrize("step,want", [
    (0, 0.99), (50, 1 - 0.01 / 2), (100, 1.0), (150, 1.0)])
def test_cosine_momentum_schedule(step, want):
  got = ema.cosine_momentum(jnp.int32(step), 0.99, 100)
  assert float(got) == pytest.approx(want, abs=1e-7)


def test_asymmetric_views_and_strength():
  config = _config()
  view1, view2 = byol.view_specs(config.augment)
  assert (view1.blur_p, view1.solarize_p) == (1.0, 0.0)
  assert (view2.blur_p, view2.solarize_p) == (0.1, 0.2)
  for view in (view1, view2):
    assert view.jitter == (0.4, 0.4, 0.2, 0.1)
    assert (view.jitter_p, view.gray_p) == (0.8, 0.2)
    assert view.brightness_mode == "add"
    # Geometry and host crop stay the base preset's (simclr_strong).
    assert view.crop_area == (0.08, 1.0) and view.hflip_p == 0.5
  config.augment.strength = 0.5
  half1, half2 = byol.view_specs(config.augment)
  assert half1.jitter == pytest.approx((0.2, 0.2, 0.1, 0.05))
  assert (half2.blur_p, half2.solarize_p) == pytest.approx((0.05, 0.1))
  config.augment.views = "same"
  same1, same2 = byol.view_specs(config.augment)
  assert same1 == same2 and same1.name == "simclr_strong"
  config.augment.views = "byol"
  with pytest.raises(errors.ConfigError, match="config.augment.views"):
    byol.view_specs(config.augment)


@pytest.mark.slow
def test_pretrain_ema_resume_on_one_device_and_finetune(tmp_path,
                                                        phantom_data_dir):
  """One end-to-end run checks the EMA, resume and 1 vs 8 devices.

  Each pretraining compile costs tens of seconds on the 2-core CPU, so the
  three properties share two runs: 8 devices for 2 steps, then a copy of it
  killed after step 1 that resumes on 1 device.
  """
  config = smoke_config("pretrain_byol", phantom_data_dir, checkpoint_every=1,
                        keep_checkpoints=5, async_checkpoints=False)
  full = tmp_path / "full"
  last = pretrain.train_and_evaluate(config, str(full))
  assert np.isfinite(last["loss"]) and 0 < last["embedding_std"] < 1

  # The target after step 2 is the EMA, at step 1's momentum, of the
  # target after step 1 and the online network after step 2.
  before, after = _saved(full, 1), _saved(full, 2)
  assert sorted(after["aux"]) == ["target_params", "target_stats"]
  tau = float(byol.BYOL(config).momentum(1))
  assert tau == pytest.approx(1 - 0.004 / 2)  # halfway through 2 steps
  assert last["ema_momentum"] == pytest.approx(tau)
  for part in byol.TARGET_PARTS:
    want = jax.tree.map(lambda old, online: tau * old + (1 - tau) * online,
                        before["aux"]["target_params"][part],
                        after["params"][part])
    assert_trees_close(after["aux"]["target_params"][part], want, 1e-5,
                        1e-7)
  # Teeth: the online network moved, and so did the target's statistics.
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), before, after)
  assert any(jax.tree.leaves(moved["params"]))
  assert all(jax.tree.leaves(moved["aux"]["target_stats"]))

  # A run killed after step 1 resumes from it, here on 1 device: step 2
  # must match the 8-device run, which needs the target (aux) restored and
  # BatchNorm/loss computed over the global batch on any device count.
  killed = tmp_path / "killed"
  shutil.copytree(full, killed)
  shutil.rmtree(killed / "checkpoints" / "2")
  (killed / "metrics.jsonl").unlink()
  config.mesh.data = 1
  resumed = pretrain.train_and_evaluate(config, str(killed))
  assert resumed["loss"] == pytest.approx(last["loss"], rel=1e-4)
  # atol: Adam divides by sqrt(v) + eps, so where gradients are near eps
  # (the first BatchNorm bias of this tiny BYOL, about 1e-9) the 1-vs-8
  # device rounding grows to a few % of one step (2.4e-5 seen, steps of
  # about 1e-3); a wrong restore moves parameters by whole steps.
  assert_trees_close(_saved(killed, 2), after, 1e-4, 5e-5)

  finetune_from(full, phantom_data_dir, tmp_path / "ft")
