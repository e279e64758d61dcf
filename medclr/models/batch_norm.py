"""Train-mode BatchNorm whose per-channel sums are matmuls.

`nnx.BatchNorm` reduces an NHWC activation over N, H and W; XLA:CPU runs
such column reductions, and the ones autodiff makes for the scale, bias and
input gradients, on one thread, and they were the largest op class of the
pretraining step. Here every per-channel sum is a product with a vector of
ones, which XLA:CPU sends to its multithreaded matmul, and the backward pass
is the closed-form BatchNorm gradient (a `custom_vjp`) so autodiff adds no
reductions of its own. The variance takes a second pass over the centred
values: float32 dots over ~10^4 rows sum less accurately than reductions,
and a one-pass E[x^2] - E[x]^2 then lost the output to 0.15 where the mean
is 100x the spread. Values, gradients and running statistics match
`nnx.BatchNorm` (tests/models/models_test.py); parameters stay in the layer, so
parameter paths are unchanged.
"""
import functools

import jax
import jax.numpy as jnp
from flax import nnx

# Full float32 sums on every backend (TPUs would otherwise multiply float32
# matmul inputs in bfloat16).
_PRECISION = jax.lax.Precision.HIGHEST


def _rows(x: jax.Array) -> jax.Array:
  """(..., C) -> (M, C), keeping the leading (batch) axis's sharding."""
  sharding = jax.typeof(x).sharding
  out = None if sharding.mesh.empty else jax.P(sharding.spec[0], None)
  rows = x.size // x.shape[-1]
  return jax.lax.reshape(x, (rows, x.shape[-1]), out_sharding=out)


def _column_sums(rows: jax.Array) -> jax.Array:
  """Sum over axis 0 of (M, C) as ones(M) @ rows; replicated result."""
  sharding = jax.typeof(rows).sharding
  out = None if sharding.mesh.empty else jax.P(None)
  return jnp.dot(jnp.ones_like(rows[:, 0]), rows, precision=_PRECISION,
                 out_sharding=out)


def _forward(x, scale, bias, epsilon):
  rows = _rows(x)
  count = rows.shape[0]
  mean = _column_sums(rows) / count
  # Two passes, E[(x - mean)^2]: the one-pass E[x^2] - E[x]^2 (nnx's
  # `use_fast_variance`) cancels catastrophically when |mean| >> std, and a
  # float32 dot over ~10^4 rows sums less accurately than a reduction.
  centred = rows - mean
  var = _column_sums(centred * centred) / count
  inv = jax.lax.rsqrt(var + epsilon)
  out = (x - mean) * (inv * scale) + bias
  return (out, mean, var), (x, mean, inv, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize(x, scale, bias, epsilon):
  """(out, batch mean, batch variance) of x over all axes but the last."""
  return _forward(x, scale, bias, epsilon)[0]


def _normalize_bwd(epsilon, residuals, cotangents):
  del epsilon
  x, mean, inv, scale = residuals
  # The batch statistics are outputs for the running averages only; they
  # are stop-gradiented by the caller, so their cotangents are ignored.
  grad = _rows(cotangents[0])
  count = grad.shape[0]
  x_hat = (_rows(x) - mean) * inv
  grad_bias = _column_sums(grad)
  grad_scale = _column_sums(grad * x_hat)
  grad_x = (scale * inv / count) * (count * grad - grad_bias
                                    - x_hat * grad_scale)
  grad_x = jax.lax.reshape(grad_x, x.shape,
                           out_sharding=jax.typeof(x).sharding)
  return grad_x, grad_scale, grad_bias


normalize.defvjp(_forward, _normalize_bwd)


def train_forward(layer: nnx.BatchNorm, x: jax.Array) -> jax.Array:
  """`layer(x, use_running_average=False)`: normalise, update running stats."""
  dtype = layer.dtype or jnp.result_type(x, layer.scale[...])
  # Statistics in float32 at least, as nnx.BatchNorm computes them.
  stats_dtype = jnp.promote_types(dtype, jnp.float32)
  out, mean, var = normalize(
      x.astype(stats_dtype), layer.scale[...].astype(stats_dtype),
      layer.bias[...].astype(stats_dtype), layer.epsilon)
  momentum = layer.momentum
  layer.mean[...] = jax.lax.stop_gradient(
      momentum * layer.mean[...] + (1 - momentum) * mean)
  layer.var[...] = jax.lax.stop_gradient(
      momentum * layer.var[...] + (1 - momentum) * var)
  return out.astype(dtype)
