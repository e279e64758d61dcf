"""Tests for medclr.optim: schedules, weight-decay masks and schedules."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from medclr import optim

PARAMS = {"conv": {"kernel": jnp.ones((3, 3, 2, 4))},
          "norm": {"scale": jnp.ones((4,)), "bias": jnp.ones((4,))}}


def _cfg(**fields):
  base = {"name": "adamw", "learning_rate": 1.0, "lr_scaling": "none",
          "schedule": "constant", "warmup_steps": 0, "weight_decay": 0.5,
          "grad_clip_norm": 0.0}
  base.update(fields)
  return ml_collections.ConfigDict(base)


def _first_update(cfg, num_steps=10):
  tx, _ = optim.make_optimizer(cfg, num_steps, 256)
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)
  updates, _ = tx.update(zeros, tx.init(PARAMS), PARAMS)
  return updates


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_kernels_only_weight_decay_leaves_biases_and_norms(name):
  """With zero gradients only the decay moves a parameter."""
  everything = _first_update(_cfg(name=name))
  kernels = _first_update(_cfg(name=name, weight_decay_on="kernels"))
  for updates in (everything, kernels):
    np.testing.assert_allclose(updates["conv"]["kernel"], -0.5)
  np.testing.assert_allclose(everything["norm"]["scale"], -0.5)
  np.testing.assert_array_equal(kernels["norm"]["scale"], 0.0)
  np.testing.assert_array_equal(kernels["norm"]["bias"], 0.0)


def test_lars_kernels_mask_also_skips_trust_ratio():
  """BYOL's exclude_bias_and_norm: 1-D params take plain momentum SGD."""
  cfg = _cfg(name="lars", weight_decay=0.0, weight_decay_on="kernels")
  tx, _ = optim.make_optimizer(cfg, 10, 256)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 2.0), PARAMS)
  updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
  # Unadapted: -lr * g. Adapted kernels: trust ratio 1e-3 * |p| / |g|.
  np.testing.assert_allclose(updates["norm"]["scale"], -2.0)
  np.testing.assert_allclose(updates["conv"]["kernel"], -1e-3, rtol=1e-5)


def test_unknown_weight_decay_on_is_named():
  with pytest.raises(ValueError, match="weight_decay_on='biases'"):
    optim.make_optimizer(_cfg(weight_decay_on="biases"), 10, 256)


def test_weight_decay_follows_dinos_cosine_to_its_end_value():
  cfg = _cfg(weight_decay=0.04, weight_decay_end=0.4)
  schedule = optim.weight_decay_fn(cfg, 100)
  for step in (0, 25, 50, 100):
    want = 0.4 + (0.04 - 0.4) * (1 + math.cos(math.pi * step / 100)) / 2
    assert float(schedule(step)) == pytest.approx(want, rel=1e-5)
  assert optim.weight_decay_fn(_cfg(weight_decay=0.04), 100) == 0.04


def test_cosine_learning_rate_ends_at_its_floor():
  cfg = _cfg(schedule="cosine", warmup_steps=10, learning_rate=0.5,
             end_learning_rate=1e-3)
  lr = optim.learning_rate_fn(cfg, 100, 256)
  assert float(lr(0)) == 0.0
  assert float(lr(10)) == pytest.approx(0.5)
  assert float(lr(100)) == pytest.approx(1e-3)
