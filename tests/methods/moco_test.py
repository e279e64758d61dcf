"""Tests for MoCo v2 (medclr.methods.mocov2).

The loss is checked against a float64 loop over the InfoNCE formula
(docs/methods/mocov2.md), the method's loss/gradients/state on 1 and 8
devices against each other, one generic train step against the specified
key-encoder EMA and queue update, and the config end to end: pretrain,
resume (params and aux), fine-tune.
"""
import functools
import importlib
import math
import shutil

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import finetune_from, saved_subtrees, smoke_config
from medclr import errors
from medclr import methods
from medclr import models
from medclr.train import pretrain
from medclr.train import steps
from medclr.methods import mocov2

IMAGE_SIZE = 16
BATCH = 8


def _brute_force_queue_loss(q, k, queue, temperature):
  """-log(e^{q.k/t} / (e^{q.k/t} + sum_j e^{q.queue_j/t})), query by query."""
  q, k, queue = (np.asarray(x, np.float64) for x in (q, k, queue))
  total = 0.0
  for i in range(len(q)):
    positive = math.exp(q[i] @ k[i] / temperature)
    negatives = sum(math.exp(q[i] @ key / temperature) for key in queue)
    total += -math.log(positive / (positive + negatives))
  return total / len(q)


def _unit_rows(key, shape):
  x = np.asarray(jax.random.normal(key, shape), np.float64)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("temperature", [0.2, 0.07])
def test_queue_loss_matches_brute_force(temperature):
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, queue = (_unit_rows(keys[0], (5, 4)), _unit_rows(keys[1], (5, 4)),
                 _unit_rows(keys[2], (12, 4)))
  np.testing.assert_allclose(
      mocov2.queue_loss(jnp.float32(q), jnp.float32(k), jnp.float32(queue),
                      temperature),
      _brute_force_queue_loss(q, k, queue, temperature), rtol=1e-5)


def _mesh(num_devices):
  return jax.make_mesh((num_devices,), ("data",),
                       axis_types=(jax.sharding.AxisType.Explicit,),
                       devices=jax.devices()[:num_devices])


def test_enqueue_writes_all_gathered_keys_at_pointer_and_wraps():
  queue = jnp.arange(16 * 3, dtype=jnp.float32).reshape(16, 3)
  keys = -jnp.arange(8 * 3, dtype=jnp.float32).reshape(8, 3) - 1
  with jax.set_mesh(_mesh(8)):
    new_queue, pointer = jax.jit(mocov2.enqueue)(
        jax.device_put(queue, jax.P()), jnp.int32(8),
        jax.device_put(keys, jax.P("data")))
  np.testing.assert_array_equal(new_queue[8:], keys)  # global batch order
  np.testing.assert_array_equal(new_queue[:8], queue[:8])
  assert int(pointer) == 0  # 8 + 8 wraps around K = 16


def _config(**overrides):
  config = smoke_config("pretrain_mocov2", "unused", **overrides)
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
  graphdef = method.graphdef
  params, stats = _initial_model()
  aux = jax.jit(method.init_aux)(params, stats)
  key1, key2 = jax.random.split(jax.random.key(1))
  shape = (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)
  views = [jax.random.uniform(key1, shape), jax.random.uniform(key2, shape)]
  return method, graphdef, params, stats, aux, views


def _loss_and_grads(method, graphdef, params, stats, aux, views):
  def objective(params, aux, views):
    model = nnx.merge(graphdef, params, stats)
    loss, (new_aux, _) = method.loss(model, aux, views, jnp.int32(0))
    return loss, new_aux

  return jax.jit(jax.value_and_grad(objective, has_aux=True))(params, aux,
                                                              views)


@pytest.mark.parametrize("symmetric", [False, True])
def test_loss_uses_online_queries_target_keys_and_stops_key_gradients(
    symmetric):
  method, graphdef, params, stats, aux, views = _setup(
      _config(**{"loss.symmetric": symmetric}))
  # A key encoder different from the query encoder, to tell them apart.
  aux["target_params"] = jax.tree.map(lambda p: 0.7 * p, params)
  temperature = method.temperature

  def embed(p, s, x):
    return mocov2.l2_normalize(nnx.merge(graphdef, p, s)(x, train=True)[0])

  def reference(p):
    """Queries from `p`; keys from the fixed key encoder (no gradient path)."""
    k1, k2 = (embed(aux["target_params"], aux["target_stats"], v)
              for v in views)
    q1, q2 = (embed(p, stats, v) for v in views)
    loss = mocov2.queue_loss(q1, k2, aux["queue"], temperature)
    if symmetric:
      loss = 0.5 * (loss + mocov2.queue_loss(q2, k1, aux["queue"], temperature))
    return loss, (q1, q2, k1, k2)

  (_, (q1, q2, k1, k2)), expected_grads = jax.jit(
      jax.value_and_grad(reference, has_aux=True))(params)
  (loss, _), grads = _loss_and_grads(method, graphdef, params, stats, aux,
                                     views)
  expected = _brute_force_queue_loss(q1, k2, aux["queue"], temperature)
  if symmetric:
    expected = 0.5 * (expected + _brute_force_queue_loss(
        q2, k1, aux["queue"], temperature))
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  # Same gradients as the reference with constant keys: none flow to keys.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               grads, expected_grads)


def _on_mesh(num_devices, method, graphdef, params, stats, aux, views):
  with jax.set_mesh(_mesh(num_devices)):
    replicated = jax.device_put((params, aux), jax.P())
    sharded = [jax.device_put(v, jax.P("data")) for v in views]
    return jax.device_get(_loss_and_grads(method, graphdef, replicated[0],
                                          stats, replicated[1], sharded))


def test_loss_grads_and_state_equal_on_1_and_8_devices():
  setup = _setup(_config())
  (loss1, aux1), grads1 = _on_mesh(1, *setup)
  (loss8, aux8), grads8 = _on_mesh(8, *setup)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  for got, want in ((grads8, grads1), (aux8, aux1)):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                         atol=1e-6),
                 got, want)


def test_one_step_updates_key_encoder_by_ema_and_enqueues_keys():
  momentum = 0.9  # not 0.5, where swapping target and online would pass
  # Preset 'none': the views are the host crops, and compilation stays short.
  config = _config(**{"moco.momentum": momentum, "augment.preset": "none"})
  method, graphdef, params, stats, aux, _ = _setup(config)
  tx = optax.sgd(0.5)
  step_fn = steps.make_pretrain_step(graphdef, tx, lambda step: 0.5, method,
                                     seed=0)
  images = jax.random.uniform(jax.random.key(3),
                              (2, BATCH, IMAGE_SIZE, IMAGE_SIZE, 3))
  with jax.set_mesh(_mesh(8)):
    state = jax.device_put(steps.init_state(params, stats, tx, aux), jax.P())
    batch = {"view1": jax.device_put(images[0], jax.P("data")),
             "view2": jax.device_put(images[1], jax.P("data"))}
    new_state, metrics = jax.jit(step_fn)(state, batch)
    # The step's key for step 0 is fold_in(key(seed), 0): same views.
    views = jax.jit(method.device_views)(
        jax.random.fold_in(jax.random.key(0), 0), batch)
    keys = jax.jit(lambda p, s, x: mocov2.l2_normalize(
        nnx.merge(graphdef, p, s)(x, train=True)[0]))(
            aux["target_params"], aux["target_stats"], views[1])
  new_state, keys = jax.device_get((new_state, keys))

  new_aux, new_params = new_state["aux"], new_state["params"]
  np.testing.assert_allclose(new_aux["queue"][:BATCH], keys, rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_array_equal(new_aux["queue"][BATCH:],
                                aux["queue"][BATCH:])
  assert int(new_aux["queue_ptr"]) == BATCH == float(metrics["queue_ptr"])
  expected_target = jax.tree.map(
      lambda t, p: momentum * np.asarray(t) + (1 - momentum) * p,
      aux["target_params"], new_params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6,
                                                       atol=1e-7),
               new_aux["target_params"], expected_target)
  # Teeth: the online parameters moved, so the EMA is not a trivial copy.
  assert any(not np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(new_params), jax.tree.leaves(params)))


def test_queue_size_not_multiple_of_batch_names_the_fields():
  with pytest.raises(errors.ConfigError,
                     match=r"config.moco.queue_size=20 .* config.batch_size=8"):
    methods.get_method(_config(**{"moco.queue_size": 20}))


@pytest.mark.parametrize("arg", ["", "smoke", "quick", "demo",
                                 "quick,preset=basic_medical"])
def test_config_loads_locks_and_matches_simclr_quick_model(arg):
  module = importlib.import_module("configs.pretrain_mocov2")
  config = module.get_config(arg or None)
  config.lock()
  with pytest.raises(AttributeError):
    config.moco.queue_sise = 1
  assert config.method == "mocov2"
  assert config.moco.queue_size % config.batch_size == 0
  if "quick" in arg:
    simclr = importlib.import_module("configs.pretrain_simclr").get_config(
        "quick")
    assert config.model.preset == simclr.model.preset
    assert config.data.image_size == simclr.data.image_size
  expected_preset = "basic_medical" if "preset" in arg else "mocov2"
  assert config.augment.preset == expected_preset


def _saved_params_and_aux(workdir, step):
  return saved_subtrees(workdir, step, ("params", "aux"))


@pytest.mark.slow
def test_pretrain_resume_and_finetune_end_to_end(tmp_path, phantom_data_dir):
  config = smoke_config("pretrain_mocov2", phantom_data_dir,
                        async_checkpoints=False)
  full = tmp_path / "full"
  last = pretrain.train_and_evaluate(config, str(full))
  assert last["queue_ptr"] == 0  # 2 steps of 8 keys wrap a queue of 16
  assert 0 < last["embedding_std"] < 1 and np.isfinite(last["loss"])

  # A run killed after saving step 1 resumes to the same step-2 state.
  killed = tmp_path / "killed"
  shutil.copytree(full, killed)
  shutil.rmtree(killed / "checkpoints" / "2")
  (killed / "metrics.jsonl").unlink()
  pretrain.train_and_evaluate(config, str(killed))
  want = _saved_params_and_aux(str(full), 2)
  got = _saved_params_and_aux(str(killed), 2)
  assert set(got["aux"]) == {"target_params", "target_stats", "queue",
                             "queue_ptr"}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6,
                                                       atol=1e-7), got, want)
  step1 = _saved_params_and_aux(str(full), 1)
  assert not np.allclose(step1["aux"]["queue"], want["aux"]["queue"])

  finetune_from(full, phantom_data_dir, tmp_path / "ft")
