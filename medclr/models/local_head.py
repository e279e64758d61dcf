"""Encoder + partial decoder + local projection: Chaitanya's decoder stage.

`LocalContrastModel` holds `encoder` and `decoder` under the U-Net's names,
the decoder built only in its `blocks` deepest levels, so both hand their
weights to the U-Net by path. `local_head` (g_2: two 1x1 convolutions, the
first with BatchNorm and ReLU, neither with a bias) and `region` (a dense
map of each flattened 3x3 region to 128 dimensions, no bias) exist only in
pretraining. Method page: docs/methods/chaitanya_local.md.
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from medclr.models import encoder as encoder_lib
from medclr.models import unet as unet_lib


class LocalHead(nnx.Module):
  """g_2: 1x1 conv (no bias), norm, ReLU, 1x1 conv (no bias)."""

  def __init__(self, channels: int, norm: str, *,
               dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(channels, channels, (1, 1), use_bias=False,
                          dtype=dtype, rngs=rngs)
    self.norm = encoder_lib.make_norm(channels, norm, dtype=dtype, rngs=rngs)
    self.conv2 = nnx.Conv(channels, channels, (1, 1), use_bias=False,
                          dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = jax.nn.relu(encoder_lib.apply_norm(self.norm, self.conv1(x),
                                           train=train))
    return self.conv2(x)


class LocalContrastModel(nnx.Module):
  """Features for the local loss: (B, h, w, C) maps and the region map."""

  def __init__(
      self,
      in_channels: int,
      widths: Sequence[int],
      norm: str = 'batch',
      *,
      blocks: int,
      region_dim: int = 128,
      dtype: jnp.dtype | None = None,
      rngs: nnx.Rngs,
  ):
    self.encoder = encoder_lib.Encoder(in_channels, widths, norm, dtype=dtype,
                                       rngs=rngs)
    self.decoder = unet_lib.Decoder(widths, norm, blocks=blocks, dtype=dtype,
                                    rngs=rngs)
    channels = self.encoder.widths[self.decoder.first]
    self.local_head = LocalHead(channels, norm, dtype=dtype, rngs=rngs)
    self.region = nnx.Linear(9 * channels, region_dim, use_bias=False,
                             dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """g_2 features of the last decoder block built, float32."""
    features = self.decoder(self.encoder(x, train=train), train=train)
    return self.local_head(features, train=train).astype(jnp.float32)
