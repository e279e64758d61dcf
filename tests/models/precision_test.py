"""bfloat16 compute (float32 master weights) agrees with float32.

Stated tolerances, on the canonical layers at a small size: the SimCLR loss
within 2% relative, projections and parameter gradients with cosine
similarity above 0.99 / 0.95, U-Net logits with correlation above 0.99.
"""
from flax import nnx
import jax
import ml_collections
import numpy as np

from medclr import models
from medclr.methods import losses

WIDTHS = (16, 32, 64)


def _cfg(dtype):
  return ml_collections.ConfigDict(dict(
      widths=WIDTHS, norm="batch", in_channels=3, num_classes=1, dtype=dtype))


def _cosine(a, b):
  a, b = np.ravel(a), np.ravel(b)
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _simclr_loss_and_grads(dtype, views):
  head = ml_collections.ConfigDict(dict(hidden_dim=64, out_dim=32))
  model = models.make_contrastive(_cfg(dtype), head, nnx.Rngs(0))
  graphdef, params, stats = models.split_model(model)

  def loss_fn(params, stats, views):
    m = nnx.merge(graphdef, params, stats)
    z, _ = m(views, train=True)
    return losses.nt_xent_reference(z[0::2], z[1::2], 0.1), z

  # Jitted, as training runs it (and one compile instead of hundreds of
  # op-by-op ones).
  (loss, z), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      params, stats, views)
  return float(loss), np.asarray(z, np.float32), jax.tree.leaves(grads)


def test_bfloat16_simclr_step_agrees_with_float32():
  views = jax.random.uniform(jax.random.key(1), (8, 32, 32, 3))
  loss32, z32, g32 = _simclr_loss_and_grads("float32", views)
  loss16, z16, g16 = _simclr_loss_and_grads("bfloat16", views)
  assert abs(loss16 - loss32) / loss32 < 0.02
  assert _cosine(z16, z32) > 0.99
  flat32 = np.concatenate([np.ravel(g) for g in g32])
  flat16 = np.concatenate([np.ravel(np.asarray(g, np.float32)) for g in g16])
  assert _cosine(flat16, flat32) > 0.95
  # The comparison has teeth: a different batch moves the loss far more.
  other = jax.random.uniform(jax.random.key(2), (8, 32, 32, 3))
  assert _cosine(_simclr_loss_and_grads("float32", other)[1], z32) < 0.999


def test_bfloat16_unet_logits_agree_with_float32():
  images = jax.random.uniform(jax.random.key(3), (2, 32, 32, 3))
  out = {}
  for dtype in ("float32", "bfloat16"):
    model = models.make_unet(_cfg(dtype), nnx.Rngs(0))
    out[dtype] = np.asarray(model(images, train=False), np.float32)
  assert out["bfloat16"].dtype == np.float32
  corr = np.corrcoef(out["float32"].ravel(), out["bfloat16"].ravel())[0, 1]
  assert corr > 0.99
