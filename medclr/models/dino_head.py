"""DINO's projection head and student/teacher model (docs/methods/dino.md).

Encoder -> global average pool -> MLP -> L2 normalise -> weight-normalised
last layer, after facebookresearch/dino vision_transformer.py `DINOHead`;
the method (losses, teacher EMA, multi-crop) is medclr/methods/dino.py.
"""
from flax import nnx
import jax
import jax.numpy as jnp

from medclr import errors
from medclr.models import encoder as encoder_lib

# Guards the L2 normalisations (torch F.normalize's eps).
_NORM_EPS = 1e-12


class WeightNormLinear(nnx.Module):
  """torch weight_norm(Linear(in, out, bias=False)): w = g v / |v|.

  The norm runs over the input dimension, one per output unit (torch's
  dim=0 of its (out, in) weight). Without `learn_scale`, g is the constant 1
  (DINO's `norm_last_layer`, where weight_g has requires_grad False).
  """

  def __init__(self, in_dim, out_dim, *, learn_scale, dtype=None, rngs):
    self.direction = nnx.Param(nnx.initializers.lecun_normal()(
        rngs.params(), (in_dim, out_dim), jnp.float32))
    self.scale = (nnx.Param(jnp.ones((out_dim,), jnp.float32))
                  if learn_scale else None)
    self.dtype = dtype

  def __call__(self, x, frozen=None):
    """x @ w; `frozen` (traced bool) blocks the gradient to v and g."""
    v = self.direction[...]
    g = None if self.scale is None else self.scale[...]
    if frozen is not None:
      v = jnp.where(frozen, jax.lax.stop_gradient(v), v)
      if g is not None:
        g = jnp.where(frozen, jax.lax.stop_gradient(g), g)
    w = v / jnp.maximum(jnp.linalg.norm(v, axis=0, keepdims=True), _NORM_EPS)
    if g is not None:
      w = w * g
    dtype = self.dtype or x.dtype
    return x.astype(dtype) @ w.astype(dtype)


class DINOHead(nnx.Module):
  """MLP -> L2 normalise -> weight-normalised last layer (DINO's head)."""

  def __init__(self, in_dim, out_dim, *, hidden_dim, bottleneck_dim,
               num_layers, norm_last_layer, use_bn=False, dtype=None, rngs):
    if num_layers < 1:
      raise errors.ConfigError(
          f"config.head.num_layers={num_layers}: must be >= 1")
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
    self.num_layers = num_layers
    self.use_bn = use_bn
    # DINOHead._init_weights: trunc_normal_(std=.02) cuts at +-2 in absolute
    # value, i.e. at 100 std, so it is a plain N(0, 0.02); biases 0.
    for index in range(num_layers):
      # Named attributes, not a list: Orbax stores list indices as strings.
      setattr(self, f"layer{index}", nnx.Linear(
          dims[index], dims[index + 1], dtype=dtype, rngs=rngs,
          kernel_init=nnx.initializers.normal(0.02)))
      # DINOHead(use_bn=True): BatchNorm1d after every hidden Linear.
      if use_bn and index < num_layers - 1:
        setattr(self, f"norm{index}", encoder_lib.make_norm(
            dims[index + 1], "batch", dtype=dtype, rngs=rngs))
    self.last_layer = WeightNormLinear(
        bottleneck_dim, out_dim, learn_scale=not norm_last_layer, dtype=dtype,
        rngs=rngs)

  def __call__(self, h, freeze_last_layer=None, *, train=True):
    x = h
    for index in range(self.num_layers):
      x = getattr(self, f"layer{index}")(x)
      if index < self.num_layers - 1:
        if self.use_bn:
          x = encoder_lib.apply_norm(getattr(self, f"norm{index}"), x,
                                     train=train)
        # torch nn.GELU() is the exact (erf) GELU.
        x = nnx.gelu(x, approximate=False)
    x = x.astype(jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _NORM_EPS)
    return self.last_layer(x, frozen=freeze_last_layer)


class DINOModel(nnx.Module):
  """Encoder -> global average pool -> `DINOHead` (student and teacher)."""

  def __init__(self, model_kwargs, head_kwargs, *, rngs):
    self.encoder = encoder_lib.Encoder(**model_kwargs, rngs=rngs)
    self.head = DINOHead(self.encoder.widths[-1], **head_kwargs,
                         dtype=model_kwargs.get("dtype"), rngs=rngs)

  def __call__(self, x, *, train, freeze_last_layer=None):
    """(logits (batch, out_dim), pooled features (batch, widths[-1])), f32."""
    deepest = self.encoder(x, train=train)[-1]
    h = jnp.mean(deepest.astype(jnp.float32), axis=(1, 2))
    logits = self.head(h, freeze_last_layer, train=train)
    return logits.astype(jnp.float32), h
