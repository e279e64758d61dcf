"""Tests for AdCo (medclr.methods.adco).

The encoder loss is checked against a float64 loop, the bank update against
the hand-written gradient and SGD of maple-research-lab/AdCo
`training/train.py`, the initialisation phase (bank filled with keys, key
encoder copied at its end) step by step, the loss/gradients/state on 1 and 8
devices, and the config end to end: pretrain, resume (params and aux),
fine-tune.
"""
import functools
import importlib
import math
import shutil

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import finetune_from, saved_subtrees, smoke_config
from medclr import errors
from medclr import methods
from medclr import models
from medclr.methods import adco
from medclr.train import pretrain
from medclr.methods import mocov2

IMAGE_SIZE = 16
BATCH = 8
BANK = 20  # not a multiple of BATCH: the last initialisation block is partial
INIT_STEPS = 3  # ceil(20 / 8)


def _unit_rows(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force_adco_loss(q, k, bank, temperature):
  """Query by query: own key positive; other keys and the bank negative."""
  q, k, d = _unit_rows(q), _unit_rows(k), _unit_rows(bank)
  total = 0.0
  for i in range(len(q)):
    positive = math.exp(q[i] @ k[i] / temperature)
    denominator = (sum(math.exp(q[i] @ key / temperature) for key in k)
                   + sum(math.exp(q[i] @ neg / temperature) for neg in d))
    total += -math.log(positive / denominator)
  return total / len(q)


def _reference_bank_update(pairs, bank, velocity, mem_t, lr, momentum, wd):
  """`update_network` / `update_sym_network` of AdCo, in (K, d) layout.

  p = softmax([q.k_all, q.d] / mem_t) over the bank columns,
  g = -[(1/N) q^T p - mean_n(p * l_neg) * d] / |W| / mem_t (averaged over
  the pairs), v = momentum v + g + wd W, W = W - lr v.
  """
  w = np.asarray(bank, np.float64)
  d = w / np.linalg.norm(w, axis=1, keepdims=True)
  g = np.zeros_like(w)
  for q, k in pairs:
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    l_neg = q @ d.T
    logits = np.concatenate([q @ k.T, l_neg], axis=1) / mem_t
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = (p / p.sum(axis=1, keepdims=True))[:, len(k):]
    grad = p.T @ q / len(q) - np.mean(p * l_neg, axis=0)[:, None] * d
    g += -grad / np.linalg.norm(w, axis=1, keepdims=True) / mem_t / len(pairs)
  velocity = momentum * np.asarray(velocity, np.float64) + g + wd * w
  return w - lr * velocity, velocity


@pytest.mark.parametrize("temperature", [0.12, 0.5])
def test_adco_loss_matches_brute_force(temperature):
  keys = jax.random.split(jax.random.key(0), 3)
  q = _unit_rows(jax.random.normal(keys[0], (5, 4)))
  k = _unit_rows(jax.random.normal(keys[1], (5, 4)))
  bank = np.asarray(jax.random.normal(keys[2], (7, 4))) * 3  # unnormalised
  value = adco.adco_loss(jnp.float32(q), jnp.float32(k), jnp.float32(k),
                         jnp.float32(bank), temperature)
  np.testing.assert_allclose(
      value, _brute_force_adco_loss(q, k, bank, temperature), rtol=1e-5)


def test_fill_rows_writes_only_rows_that_fit():
  bank = jnp.zeros((BANK, 2))
  keys = jnp.arange(1, 2 * BATCH + 1, dtype=jnp.float32).reshape(BATCH, 2)
  filled = np.asarray(adco.fill_rows(bank, keys, jnp.int32(16)))
  np.testing.assert_array_equal(filled[16:], keys[:4])
  np.testing.assert_array_equal(filled[:16], 0)


def _mesh(num_devices):
  return jax.make_mesh((num_devices,), ("data",),
                       axis_types=(jax.sharding.AxisType.Explicit,),
                       devices=jax.devices()[:num_devices])


def _config(**overrides):
  overrides = {"adco.bank_size": BANK, "num_steps": 10, **overrides}
  config = smoke_config("pretrain_adco", "unused", **overrides)
  config.data.image_size = IMAGE_SIZE
  return config


@functools.cache
def _initial_model():
  """Params and BN stats of the tiny model, built once (jitted: fast)."""
  method = methods.get_method(_config())
  return jax.jit(
      lambda: models.split_model(method.make_model(nnx.Rngs(0)))[1:])()


def _setup(config):
  method = methods.get_method(config)
  params, stats = _initial_model()
  aux = jax.jit(method.init_aux)(params, stats)
  # A nonzero momentum buffer and a key encoder unlike the query encoder,
  # so that the tests can tell the terms of the updates apart.
  aux["bank_velocity"] = 0.01 * jax.random.normal(jax.random.key(5),
                                                  aux["bank"].shape)
  aux["target_params"] = jax.tree.map(lambda p: 0.7 * p, params)
  key1, key2 = jax.random.split(jax.random.key(1))
  shape = (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)
  views = [jax.random.uniform(key1, shape), jax.random.uniform(key2, shape)]
  return method, params, stats, aux, views


@functools.cache
def _loss_and_grads_fn(method):
  def objective(params, stats, aux, views, step):
    model = nnx.merge(method.graphdef, params, stats)
    loss, (new_aux, _) = method.loss(model, aux, views, step)
    return loss, new_aux

  return jax.jit(jax.value_and_grad(objective, has_aux=True))


def _run(method, params, stats, aux, views, step):
  return _loss_and_grads_fn(method)(params, stats, aux, views,
                                    jnp.int32(step))


def _reference(method, params, stats, aux, views):
  """Queries, keys and the gradients of the loss with constant keys."""

  def embed(p, s, x):
    return mocov2.l2_normalize(
        nnx.merge(method.graphdef, p, s)(x, train=True)[0])

  def loss(p):
    k1, k2 = (embed(aux["target_params"], aux["target_stats"], v)
              for v in views)
    q1, q2 = (embed(p, stats, v) for v in views)
    pairs = [(q1, k2), (q2, k1)] if method.symmetric else [(q1, k2)]
    value = sum(adco.adco_loss(q, k, k, aux["bank"], method.temperature)
                for q, k in pairs) / len(pairs)
    return value, pairs

  (_, pairs), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return pairs, grads


def _assert_trees_close(got, want, rtol=1e-4, atol=1e-6):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol,
                                                       atol=atol), got, want)


@pytest.mark.parametrize("symmetric", [False, True])
def test_adversarial_step_loss_grads_and_bank_update(symmetric):
  method, params, stats, aux, views = _setup(
      _config(**{"loss.symmetric": symmetric}))
  (loss, new_aux), grads = _run(method, params, stats, aux, views,
                                INIT_STEPS)
  pairs, expected_grads = _reference(method, params, stats, aux, views)

  expected = sum(_brute_force_adco_loss(q, k, aux["bank"], method.temperature)
                 for q, k in pairs) / len(pairs)
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  _assert_trees_close(grads, expected_grads)
  cfg = method.config.adco
  bank, velocity = _reference_bank_update(
      pairs, aux["bank"], aux["bank_velocity"], cfg.bank_temperature,
      cfg.bank_lr, cfg.bank_momentum, cfg.bank_weight_decay)
  np.testing.assert_allclose(new_aux["bank_velocity"], velocity, rtol=1e-3,
                             atol=1e-5)
  np.testing.assert_allclose(new_aux["bank"], bank, rtol=1e-3, atol=1e-5)
  # Teeth: the adversary really moved the bank.
  assert not np.allclose(new_aux["bank"], aux["bank"], atol=1e-3)


def test_initialisation_fills_bank_with_keys_then_copies_key_encoder():
  method, params, stats, aux, views = _setup(_config())
  pairs, _ = _reference(method, params, stats, aux, views)
  (q1, k2), = pairs
  for step, rows in ((0, slice(0, 8)), (INIT_STEPS - 1, slice(16, 20))):
    (loss, new_aux), _ = _run(method, params, stats, aux, views, step)
    # `init_memory`: MoCo loss, own key vs the (normalised) bank only.
    np.testing.assert_allclose(
        loss, mocov2.queue_loss(q1, k2, mocov2.l2_normalize(aux["bank"]),
                              method.temperature), rtol=1e-5)
    np.testing.assert_allclose(new_aux["bank"][rows],
                               k2[:rows.stop - rows.start], rtol=1e-5,
                               atol=1e-6)
    untouched = np.ones(BANK, bool)
    untouched[rows] = False
    np.testing.assert_array_equal(new_aux["bank"][untouched],
                                  aux["bank"][untouched])
    np.testing.assert_array_equal(new_aux["bank_velocity"],
                                  aux["bank_velocity"])

  momentum = method.momentum
  online = jax.tree.map(lambda p: p + 1.0, params)
  during = method.update_aux(aux, online, stats, jnp.int32(INIT_STEPS - 2))
  _assert_trees_close(during["target_params"], jax.tree.map(
      lambda t, p: momentum * t + (1 - momentum) * p, aux["target_params"],
      online), rtol=1e-6)
  last = method.update_aux(aux, online, stats, jnp.int32(INIT_STEPS - 1))
  _assert_trees_close(last["target_params"], online, rtol=0, atol=0)


def _on_mesh(num_devices, method, params, stats, aux, views, step):
  with jax.set_mesh(_mesh(num_devices)):
    params, stats, aux = jax.device_put((params, stats, aux), jax.P())
    sharded = [jax.device_put(v, jax.P("data")) for v in views]
    return jax.device_get(_run(method, params, stats, aux, sharded, step))


def test_loss_grads_and_state_equal_on_1_and_8_devices():
  setup = _setup(_config())
  for step in (0, INIT_STEPS):  # initialisation phase, adversarial phase
    (loss1, aux1), grads1 = _on_mesh(1, *setup, step)
    (loss8, aux8), grads8 = _on_mesh(8, *setup, step)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    _assert_trees_close(grads8, grads1)
    _assert_trees_close(aux8, aux1)


def test_bank_too_large_for_the_run_names_the_fields():
  with pytest.raises(errors.ConfigError,
                     match=r"config.adco.bank_size=80 .* 10 .*"
                     r"config.batch_size=8.*config.num_steps=10"):
    methods.get_method(_config(**{"adco.bank_size": 80}))


@pytest.mark.parametrize("arg", ["", "smoke", "quick", "demo"])
def test_config_loads_locks_and_runs_the_adversarial_phase(arg):
  config = importlib.import_module("configs.pretrain_adco").get_config(
      arg or None)
  config.lock()
  with pytest.raises(AttributeError):
    config.adco.bank_sise = 1
  assert config.method == "adco" and config.augment.preset == "mocov2"
  assert math.ceil(config.adco.bank_size / config.batch_size) < (
      config.num_steps)
  if arg == "quick":
    simclr = importlib.import_module("configs.pretrain_simclr").get_config(
        "quick")
    assert config.model.preset == simclr.model.preset
    assert config.data.image_size == simclr.data.image_size


def _saved_params_and_aux(workdir, step):
  return saved_subtrees(workdir, step, ("params", "aux"))


@pytest.mark.slow
def test_pretrain_resume_and_finetune_end_to_end(tmp_path, phantom_data_dir):
  # Smoke: step 1 fills the 8-row bank, step 2 is adversarial.
  config = smoke_config("pretrain_adco", phantom_data_dir,
                        async_checkpoints=False)
  full = tmp_path / "full"
  last = pretrain.train_and_evaluate(config, str(full))
  assert last["bank_filled"] == 8
  assert 0 < last["embedding_std"] < 1 and np.isfinite(last["loss"])

  # A run killed after saving step 1 resumes to the same step-2 state.
  killed = tmp_path / "killed"
  shutil.copytree(full, killed)
  shutil.rmtree(killed / "checkpoints" / "2")
  (killed / "metrics.jsonl").unlink()
  pretrain.train_and_evaluate(config, str(killed))
  want = _saved_params_and_aux(str(full), 2)
  got = _saved_params_and_aux(str(killed), 2)
  assert set(got["aux"]) == {"target_params", "target_stats", "bank",
                             "bank_velocity"}
  _assert_trees_close(got, want, rtol=1e-6, atol=1e-7)
  # The adversarial step ran: the velocity is no longer zero.
  assert np.abs(want["aux"]["bank_velocity"]).max() > 0

  finetune_from(full, phantom_data_dir, tmp_path / "ft")
