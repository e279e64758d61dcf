"""SimCLR pairs view i of the first batch with view i of the second."""
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from conftest import smoke_config
from medclr import models
from medclr.methods import losses
from medclr.methods import simclr


def _method_and_model():
  config = smoke_config("pretrain_simclr", "/unused")
  method = simclr.SimCLR(config)
  return method, config, method.make_model(nnx.Rngs(0))


def test_identical_views_are_each_others_positives():
  method, config, model = _method_and_model()
  size = config.data.image_size
  views = jax.random.uniform(jax.random.key(1), (8, size, size, 3))
  loss, _ = method.loss(model, None, (views, views), step=0)
  # Duplicated images leave the BatchNorm batch statistics unchanged, so the
  # embeddings of the views alone are the pairs' embeddings.
  z, _ = nnx.clone(model)(views, train=True)
  expected = losses.nt_xent(z, z, config.loss.temperature)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_mispaired_views_score_worse():
  method, config, model = _method_and_model()
  size = config.data.image_size
  views = jax.random.uniform(jax.random.key(2), (8, size, size, 3))
  paired, _ = method.loss(nnx.clone(model), None, (views, views), step=0)
  shifted, _ = method.loss(nnx.clone(model), None,
                           (views, jnp.roll(views, 1, axis=0)), step=0)
  # Same images in the batch either way: only the pairing differs.
  assert float(paired) < float(shifted) - 0.1


def _leaf(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


def test_train_step_is_the_same_on_1_and_8_devices():
  """The real SimCLR step with BatchNorm, plain SGD at rate 1 so the update
  is the raw gradient: a device-count-dependent gradient scale (a psum where
  a mean belongs) or per-device BatchNorm statistics would show here.

  Tolerance: 1e-3 of each leaf's largest entry. Summing the batch in
  another order (a permutation on one device) moves gradients by ~1e-4 of
  that; a psum would move them 8x, and a one-pass BatchNorm variance moved
  them by ~4% on one device.
  """
  import optax  # pylint: disable=g-import-not-at-top
  from medclr import sharding  # pylint: disable=g-import-not-at-top
  from medclr.train import steps  # pylint: disable=g-import-not-at-top
  method, config, model = _method_and_model()
  graphdef, params, stats = models.split_model(model)
  tx = optax.sgd(1.0)
  step_fn = steps.make_pretrain_step(graphdef, tx, lambda step: 1.0, method,
                                     seed=0)
  size = config.data.image_size
  images = jax.random.uniform(jax.random.key(4), (2, 16, size, size, 3))
  results = []
  for num_devices in (1, 8):
    mesh = sharding.make_mesh(num_devices)
    with jax.set_mesh(mesh):
      state = jax.device_put(steps.init_state(
          params, stats, tx, method.init_aux(params, stats)), jax.P())
      batch = {"view1": jax.device_put(images[0], jax.P("data")),
               "view2": jax.device_put(images[1], jax.P("data"))}
      new_state, metrics = jax.jit(step_fn)(state, batch)
      results.append(jax.device_get((new_state, metrics)))
  (one, m1), (eight, m8) = results
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  update = lambda s: jax.tree.map(lambda new, old: new - old, s["params"],
                                  params)
  # The update is the gradient, so it must be non-trivial and identical.
  assert max(float(np.abs(u).max()) for u in jax.tree.leaves(update(one))) > 0
  for path, want in jax.tree_util.tree_leaves_with_path(update(one)):
    got = _leaf(update(eight), path)
    scale = float(np.abs(want).max())
    assert float(np.abs(got - want).max()) <= 1e-3 * scale, (
        jax.tree_util.keystr(path))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               eight["batch_stats"], one["batch_stats"])
