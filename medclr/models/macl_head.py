"""MACL's asymmetric two-branch model (Zeng et al., stevezs315/MACL).

One `encoder` (the U-Net's, by path) serves both branches; the dominant
branch adds the deepest `blocks` levels of the U-Net `decoder` (2 in the
reference). `target_pixel` (two 3x3 convolutions with norm and leaky ReLU)
projects full-resolution bottleneck features for the pixel-level loss;
`target_instance` and `online_instance` (global average pool, dense, ReLU,
dense) give the image-level projections. Method page: docs/methods/macl.md.
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from medclr.models import encoder as encoder_lib
from medclr.models import unet as unet_lib


class PixelProjector(nnx.Module):
  """3x3 conv, norm, leaky ReLU, twice (the reference's
  target_pixel_projector)."""

  def __init__(self, in_features: int, out_features: int, norm: str, *,
               dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(in_features, out_features, (3, 3), dtype=dtype,
                          rngs=rngs)
    self.norm1 = encoder_lib.make_norm(out_features, norm, dtype=dtype,
                                       rngs=rngs)
    self.conv2 = nnx.Conv(out_features, out_features, (3, 3), dtype=dtype,
                          rngs=rngs)
    self.norm2 = encoder_lib.make_norm(out_features, norm, dtype=dtype,
                                       rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = encoder_lib.apply_norm(self.norm1, self.conv1(x), train=train)
    x = encoder_lib.apply_norm(self.norm2, self.conv2(jax.nn.leaky_relu(x)),
                               train=train)
    return jax.nn.leaky_relu(x)


class InstanceProjector(nnx.Module):
  """Global average pool, dense, ReLU, dense."""

  def __init__(self, in_features: int, hidden: int, out: int, *,
               dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(in_features, hidden, dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(hidden, out, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(jax.nn.relu(self.hidden(x.mean(axis=(1, 2)))))


class MACLModel(nnx.Module):
  """Shared encoder, partial decoder and the three projectors."""

  def __init__(self, in_channels: int, widths: Sequence[int],
               norm: str = 'batch', *, blocks: int = 2, out_dim: int = 128,
               dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    self.encoder = encoder_lib.Encoder(in_channels, widths, norm, dtype=dtype,
                                       rngs=rngs)
    self.decoder = unet_lib.Decoder(widths, norm, blocks=blocks, dtype=dtype,
                                    rngs=rngs)
    deep = self.encoder.widths[-1]
    shallow = self.encoder.widths[self.decoder.first]
    hidden = 4 * self.encoder.widths[0]
    self.target_pixel = PixelProjector(deep, shallow, norm, dtype=dtype,
                                       rngs=rngs)
    self.target_instance = InstanceProjector(deep, hidden, out_dim,
                                             dtype=dtype, rngs=rngs)
    self.online_instance = InstanceProjector(shallow, hidden, out_dim,
                                             dtype=dtype, rngs=rngs)

  def auxiliary(self, x: jax.Array, *, train: bool):
    """Full-resolution branch: (bottleneck, its pixel projection)."""
    bottleneck = self.encoder(x, train=train)[-1]
    return bottleneck, self.target_pixel(bottleneck, train=train)

  def dominant(self, x: jax.Array, *, train: bool):
    """Downscaled branch: (bottleneck, partial-decoder features)."""
    features = self.encoder(x, train=train)
    return features[-1], self.decoder(features, train=train)
