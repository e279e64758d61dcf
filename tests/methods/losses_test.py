"""Tests for medclr.methods.losses.

The key test: NT-Xent through `shard_map` + `all_gather` on an 8-device
Explicit mesh gives the same loss and the same gradients as the single-device
reference on the global batch, and a per-device-only loss (the classic
forgotten-gather bug) does not.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medclr.methods import losses

DIM_IN = 6
DIM_OUT = 4
GLOBAL_BATCH = 16
TEMPERATURE = 0.1


def _brute_force_nt_xent(z1, z2, temperature):
  """docs/methods/README.md (NT-Xent), one anchor at a time, float64 numpy."""
  z = np.concatenate([np.asarray(z1), np.asarray(z2)]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n = len(z1)
  total = 0.0
  for i in range(2 * n):
    positive = (i + n) % (2 * n)
    numerator = math.exp(z[i] @ z[positive] / temperature)
    denominator = sum(math.exp(z[i] @ z[k] / temperature)
                      for k in range(2 * n) if k != i)
    total += -math.log(numerator / denominator)
  return total / (2 * n)


@pytest.mark.parametrize('temperature', [0.1, 0.5])
def test_reference_matches_brute_force_loop(temperature):
  key1, key2 = jax.random.split(jax.random.key(0))
  z1 = jax.random.normal(key1, (5, 3))
  z2 = jax.random.normal(key2, (5, 3))
  np.testing.assert_allclose(
      losses.nt_xent_reference(z1, z2, temperature),
      _brute_force_nt_xent(z1, z2, temperature), rtol=1e-5)


def test_reference_is_low_for_aligned_views_and_high_for_swapped():
  z = jax.random.normal(jax.random.key(0), (8, 16))
  aligned = losses.nt_xent_reference(z, z * 2.0, 0.1)
  shuffled = losses.nt_xent_reference(z, jnp.roll(z, 1, axis=0), 0.1)
  assert aligned < 0.1 < shuffled


def _mesh(num_devices):
  return jax.make_mesh((num_devices,), ('data',),
                       axis_types=(jax.sharding.AxisType.Explicit,),
                       devices=jax.devices()[:num_devices])


def _dense_and_views():
  graphdef, params = nnx.split(nnx.Linear(DIM_IN, DIM_OUT, rngs=nnx.Rngs(0)))
  key1, key2 = jax.random.split(jax.random.key(1))
  views1 = jax.random.normal(key1, (GLOBAL_BATCH, DIM_IN))
  views2 = views1 + 0.3 * jax.random.normal(key2, (GLOBAL_BATCH, DIM_IN))
  return graphdef, nnx.to_pure_dict(params), views1, views2


def _loss_and_grads(loss_fn, graphdef, params, views1, views2):
  def objective(params, views1, views2):
    dense = nnx.merge(graphdef, params)
    return loss_fn(dense(views1), dense(views2), TEMPERATURE)

  return jax.jit(jax.value_and_grad(objective))(params, views1, views2)


def _local_only_nt_xent(z1, z2, temperature):
  """The bug the real loss must not have: negatives from this device only."""
  per_device = jax.shard_map(
      lambda a, b: jax.lax.pmean(
          losses.nt_xent_reference(a, b, temperature), 'data'),
      in_specs=(jax.P('data'), jax.P('data')), out_specs=jax.P())
  return per_device(z1, z2)


@pytest.mark.parametrize('num_devices', [8, 1])
def test_sharded_loss_and_grads_equal_single_device_reference(num_devices):
  graphdef, params, views1, views2 = _dense_and_views()
  expected_loss, expected_grads = _loss_and_grads(
      losses.nt_xent_reference, graphdef, params, views1, views2)

  with jax.set_mesh(_mesh(num_devices)):
    sharded1 = jax.device_put(views1, jax.P('data'))
    sharded2 = jax.device_put(views2, jax.P('data'))
    loss, grads = _loss_and_grads(
        losses.nt_xent, graphdef, params, sharded1, sharded2)
    wrong_loss, wrong_grads = _loss_and_grads(
        _local_only_nt_xent, graphdef, params, sharded1, sharded2)

  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-7),
               grads, expected_grads)
  # Teeth: with 8 shards of 2 images, per-device negatives change the value.
  # On 1 device the local batch is the global batch, so they must agree.
  local_matches = np.allclose(wrong_loss, expected_loss, rtol=1e-3) and all(
      np.allclose(a, b, rtol=1e-3) for a, b in zip(
          jax.tree.leaves(wrong_grads), jax.tree.leaves(expected_grads)))
  assert local_matches == (num_devices == 1)


@pytest.mark.parametrize('axis_type', [jax.sharding.AxisType.Explicit,
                                       jax.sharding.AxisType.Auto])
def test_nt_xent_reshards_unsplit_projections(axis_type):
  """Replicated inputs (not P('data')) still give the reference gradients."""
  z = jax.random.normal(jax.random.key(2), (GLOBAL_BATCH, DIM_OUT))

  def split_loss(loss_fn):
    return lambda z: loss_fn(z[:8], z[8:], TEMPERATURE)

  expected_loss, expected_grad = jax.value_and_grad(
      split_loss(losses.nt_xent_reference))(z)
  mesh = jax.make_mesh((8,), ('data',), axis_types=(axis_type,))
  with jax.set_mesh(mesh):
    loss, grad = jax.jit(jax.value_and_grad(split_loss(losses.nt_xent)))(z)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_nt_xent_inside_shard_map_uses_local_rows():
  key1, key2 = jax.random.split(jax.random.key(4))
  z1 = jax.random.normal(key1, (GLOBAL_BATCH, DIM_OUT))
  z2 = jax.random.normal(key2, (GLOBAL_BATCH, DIM_OUT))
  with jax.set_mesh(_mesh(8)):
    per_device = jax.shard_map(
        lambda a, b: losses.nt_xent(a, b, TEMPERATURE),
        in_specs=(jax.P('data'), jax.P('data')), out_specs=jax.P())
    loss = jax.jit(per_device)(jax.device_put(z1, jax.P('data')),
                               jax.device_put(z2, jax.P('data')))
  np.testing.assert_allclose(
      loss, losses.nt_xent_reference(z1, z2, TEMPERATURE), rtol=1e-5)


def test_nt_xent_without_mesh_matches_brute_force_loop():
  # Checked against the independent float64 loop, not against
  # nt_xent_reference (which nt_xent itself returns without a mesh).
  key1, key2 = jax.random.split(jax.random.key(3))
  z1 = jax.random.normal(key1, (4, 8))
  z2 = jax.random.normal(key2, (4, 8))
  np.testing.assert_allclose(losses.nt_xent(z1, z2, 0.2),
                             _brute_force_nt_xent(z1, z2, 0.2), rtol=1e-5)


def test_nt_xent_rejects_batch_not_divisible_by_devices():
  with jax.set_mesh(_mesh(8)):
    with pytest.raises(ValueError, match=r'batch 12 .* 8 devices'):
      jax.jit(lambda a, b: losses.nt_xent(a, b, 0.1))(
          jnp.ones((12, 4)), jnp.ones((12, 4)))


def test_nt_xent_rejects_mismatched_views():
  with pytest.raises(ValueError, match=r'z1 \(4, 8\) and z2 \(4, 6\)'):
    losses.nt_xent_reference(jnp.ones((4, 8)), jnp.ones((4, 6)), 0.1)


def test_embedding_std_is_zero_when_collapsed():
  row = jax.random.normal(jax.random.key(0), (1, 32))
  collapsed = jnp.tile(row, (64, 1)) * jnp.arange(1, 65)[:, None]
  assert float(losses.embedding_std(collapsed)) == pytest.approx(0, abs=1e-6)


def test_embedding_std_is_inverse_sqrt_dim_when_isotropic():
  dim = 64
  z = jax.random.normal(jax.random.key(0), (4096, dim))
  assert float(losses.embedding_std(z)) == pytest.approx(1 / math.sqrt(dim),
                                                         rel=0.03)


def _binary_case():
  """Vessel-like random mask, FOV weight zero on the left quarter."""
  key1, key2 = jax.random.split(jax.random.key(0))
  mask = (jax.random.uniform(key1, (8, 16, 16)) < 0.3).astype(jnp.int32)
  weight = jnp.ones((8, 16, 16)).at[:, :, :4].set(0.0)
  logits = jax.random.normal(key2, (8, 16, 16, 1))
  return logits, mask, weight


def test_binary_loss_matches_hand_computed_value():
  logits = jnp.zeros((1, 1, 2, 1))
  mask = jnp.array([[[1, 0]]])
  weight = jnp.ones((1, 1, 2))
  # BCE of p = 0.5 is log 2; Dice = 2 * 0.5 / (0.5 + 0.5 + 1) = 0.5.
  np.testing.assert_allclose(losses.segmentation_loss(logits, mask, weight),
                             math.log(2) + 0.5, rtol=1e-4)


def test_perfect_binary_prediction_has_near_zero_loss():
  _, mask, weight = _binary_case()
  logits = jnp.where(mask == 1, 20.0, -20.0)[..., None]
  assert float(losses.soft_dice_loss(logits, mask, weight)) < 1e-6
  assert float(losses.segmentation_loss(logits, mask, weight)) < 1e-6
  inverted = -logits
  assert float(losses.soft_dice_loss(inverted, mask, weight)) > 0.99


def test_zero_weight_pixels_are_ignored():
  logits, mask, weight = _binary_case()
  base = losses.segmentation_loss(logits, mask, weight)
  outside = weight == 0
  changed_outside = losses.segmentation_loss(
      jnp.where(outside[..., None], 50.0, logits), jnp.where(outside, 0, mask),
      weight)
  np.testing.assert_allclose(changed_outside, base, rtol=1e-6)
  changed_inside = losses.segmentation_loss(
      jnp.where(outside[..., None], logits, 50.0), mask, weight)
  assert not np.isclose(changed_inside, base, rtol=1e-3)


def test_segmentation_loss_accepts_trailing_channel_and_checks_shape():
  logits, mask, weight = _binary_case()
  np.testing.assert_allclose(
      losses.segmentation_loss(logits, mask[..., None], weight[..., None]),
      losses.segmentation_loss(logits, mask, weight), rtol=1e-6)
  with pytest.raises(ValueError, match=r'mask must have shape \(8, 16, 16\)'):
    losses.segmentation_loss(logits, mask[:, :8], weight)


def test_segmentation_loss_is_unchanged_by_sharding():
  logits, mask, weight = _binary_case()
  expected = losses.segmentation_loss(logits, mask, weight)
  with jax.set_mesh(_mesh(8)):
    sharded = [jax.device_put(x, jax.P('data'))
               for x in (logits, mask, weight)]
    value = jax.jit(losses.segmentation_loss)(*sharded)
  np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_multiclass_loss_is_cross_entropy_plus_foreground_dice():
  key1, key2 = jax.random.split(jax.random.key(2))
  mask = jax.random.randint(key1, (2, 8, 8), 0, 3)
  weight = jnp.ones((2, 8, 8)).at[0].set(0.0)
  logits = jax.random.normal(key2, (2, 8, 8, 3))

  probs = np.asarray(jax.nn.softmax(logits[1]))
  labels = np.asarray(mask[1])
  cross_entropy = -np.mean(np.log(np.take_along_axis(
      probs, labels[..., None], axis=-1)))
  dice = [2 * np.sum(probs[..., c] * (labels == c))
          / (np.sum(probs[..., c]) + np.sum(labels == c)) for c in (1, 2)]
  np.testing.assert_allclose(losses.segmentation_loss(logits, mask, weight),
                             cross_entropy + 1 - np.mean(dice), rtol=1e-4)

  perfect = jnp.where(jax.nn.one_hot(mask, 3) == 1, 20.0, -20.0)
  assert float(losses.segmentation_loss(perfect, mask, weight)) < 1e-6
