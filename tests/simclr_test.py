"""SimCLR pairs view i of the first batch with view i of the second."""
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from conftest import smoke_config
from medclr import losses
from medclr.methods import simclr


def _method_and_model():
  config = smoke_config("pretrain_simclr", "/unused")
  method = simclr.make(config)
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
