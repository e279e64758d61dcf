"""ARCO's pixel contrastive loss: a NumPy reference, and the same value and
gradients on 1 and 8 devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medclr.train.arco import loss as pixel_contrast

TAU = 0.5


def _inputs(seed=0, shape=(8, 8, 8, 6)):
  rng = np.random.default_rng(seed)
  rep = rng.standard_normal(shape).astype(np.float32)
  key_rep = rng.standard_normal(shape).astype(np.float32)
  labels = (rng.uniform(size=shape[:3]) < 0.3).astype(np.int32)
  valid = rng.uniform(size=shape[:3]) < 0.8
  return rep, key_rep, labels, valid


def _numpy_loss(rep, key_rep, labels, valid, queries, negatives, present):
  """Loop form: per class, per query, -log softmax of the positive among
  [class-mean key, negative keys]."""
  dim = rep.shape[-1]
  unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
  flat_rep = rep.reshape(-1, dim).astype(np.float64)
  flat_key = key_rep.reshape(-1, dim).astype(np.float64)
  flat_labels, flat_valid = labels.reshape(-1), valid.reshape(-1)
  per_class = []
  for c in range(len(queries)):
    if not present[c]:
      continue
    mean_key = unit(flat_key[(flat_labels == c) & flat_valid].mean(0))
    losses = []
    for qi in queries[c]:
      q = unit(flat_rep[qi])
      logits = [q @ mean_key / TAU] + [q @ unit(flat_key[n]) / TAU
                                        for n in negatives[c]]
      losses.append(-(logits[0] - np.log(np.sum(np.exp(logits)))))
    per_class.append(np.mean(losses))
  return np.mean(per_class)


def test_matches_numpy_reference_and_draws_from_the_right_classes():
  rep, key_rep, labels, valid = _inputs()
  indices = pixel_contrast.draw_indices(
      jax.random.key(0), jnp.asarray(labels), jnp.asarray(valid), 2, 8, 16)
  got = pixel_contrast.loss_from_indices(
      jnp.asarray(rep), jnp.asarray(key_rep), jnp.asarray(labels),
      jnp.asarray(valid), indices, TAU)
  idx = {k: np.asarray(v) for k, v in indices.items()}
  flat_labels, flat_valid = labels.reshape(-1), valid.reshape(-1)
  for c in range(2):
    assert (flat_labels[idx["queries"][c]] == c).all()
    assert (flat_labels[idx["negatives"][c]] != c).all()
    assert flat_valid[idx["queries"][c]].all()
    assert flat_valid[idx["negatives"][c]].all()
  want = _numpy_loss(rep, key_rep, labels, valid, idx["queries"],
                     idx["negatives"], idx["present"])
  assert float(got) == pytest.approx(want, rel=1e-5)


def test_absent_class_is_left_out_and_one_class_gives_zero():
  rep, key_rep, labels, valid = _inputs(1)
  only_background = np.zeros_like(labels)
  loss = pixel_contrast.pixel_contrast_loss(
      jax.random.key(0), jnp.asarray(rep), jnp.asarray(key_rep),
      jnp.asarray(only_background), jnp.asarray(valid), num_queries=8,
      num_negatives=8)
  assert float(loss) == 0.0


def test_keys_carry_no_gradient():
  rep, key_rep, labels, valid = _inputs(2)
  grad = jax.grad(lambda k: pixel_contrast.pixel_contrast_loss(
      jax.random.key(0), jnp.asarray(rep), k, jnp.asarray(labels),
      jnp.asarray(valid), num_queries=8, num_negatives=8))(
          jnp.asarray(key_rep))
  assert float(jnp.abs(grad).max()) == 0.0


def _loss_and_grad(num_devices, rep, key_rep, labels, valid):
  mesh = jax.make_mesh((num_devices,), ("data",),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  with jax.set_mesh(mesh):
    shard = jax.sharding.NamedSharding(mesh, jax.P("data"))
    args = [jax.device_put(jnp.asarray(x), shard)
            for x in (rep, key_rep, labels, valid)]

    @jax.jit
    def f(r, k, lab, val):
      return jax.value_and_grad(lambda r: pixel_contrast.pixel_contrast_loss(
          jax.random.key(3), r, k, lab, val, num_queries=16,
          num_negatives=32))(r)

    loss, grad = f(*args)
    return float(loss), np.asarray(grad)


def test_loss_and_gradients_equal_on_1_and_8_devices():
  inputs = _inputs(3)
  loss1, grad1 = _loss_and_grad(1, *inputs)
  loss8, grad8 = _loss_and_grad(8, *inputs)
  assert np.abs(grad1).max() > 0
  assert loss8 == pytest.approx(loss1, rel=1e-5)
  np.testing.assert_allclose(grad8, grad1, rtol=1e-4, atol=1e-7)
