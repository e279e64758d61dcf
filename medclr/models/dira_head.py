"""DiRA's generator (a U-Net with a MoCo head) and its PatchGAN critic.

`DiRAModel` holds `encoder` and `decoder` under the U-Net's names, so the
whole pretrained U-Net body hands over to fine-tuning by path; `projector`
(the MoCo MLP on the pooled bottleneck) and `restore` (a 1x1 convolution
with a sigmoid, reconstructing the image) exist only in pretraining.
`PatchCritic` is the reference's discriminator: 3x3 convolutions with
stride 2, 2, 2, 1 and 64-512 channels, instance norm after the first,
leaky ReLU 0.2, then a 3x3 convolution to one score per patch. Method page:
docs/methods/dira.md.
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from medclr.models import encoder as encoder_lib
from medclr.models import heads
from medclr.models import unet as unet_lib


class DiRAModel(nnx.Module):
  """U-Net body + MoCo projection + image restoration head."""

  def __init__(self, in_channels: int, widths: Sequence[int],
               norm: str = 'batch', hidden_dim: int = 512,
               out_dim: int = 128, *, bounded: bool = True,
               dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    self.encoder = encoder_lib.Encoder(in_channels, widths, norm, dtype=dtype,
                                       rngs=rngs)
    self.decoder = unet_lib.Decoder(widths, norm, dtype=dtype, rngs=rngs)
    self.projector = heads.ProjectionHead(
        self.encoder.widths[-1], hidden_dim, out_dim, dtype=dtype, rngs=rngs)
    self.restore = nnx.Conv(self.encoder.widths[0], in_channels, (1, 1),
                            dtype=dtype, rngs=rngs)
    # Images in [0, 1] are restored through a sigmoid (the reference);
    # standardised images (config.data.normalize) are unbounded.
    self.bounded = bounded

  def __call__(self, x: jax.Array, *, train: bool):
    """(z projections (B, out_dim), restored images (B, H, W, C)), both
    float32; restorations in [0, 1] when `bounded`."""
    features = self.encoder(x, train=train)
    pooled = jnp.mean(features[-1].astype(jnp.float32), axis=(1, 2))
    z = self.projector(pooled).astype(jnp.float32)
    restored = self.restore(self.decoder(features, train=train)).astype(
        jnp.float32)
    return z, jax.nn.sigmoid(restored) if self.bounded else restored


class PatchCritic(nnx.Module):
  """The reference's discriminator: one score per image patch."""

  CHANNELS = (64, 128, 256, 512)
  STRIDES = (2, 2, 2, 1)

  def __init__(self, in_channels: int, *, rngs: nnx.Rngs):
    previous = in_channels
    for index, (width, stride) in enumerate(zip(self.CHANNELS,
                                                self.STRIDES)):
      setattr(self, f"conv{index}", nnx.Conv(
          previous, width, (3, 3), strides=(stride, stride), rngs=rngs))
      if index:  # InstanceNorm2d (no affine) after all but the first
        setattr(self, f"norm{index}", nnx.GroupNorm(
            width, num_groups=width, use_scale=False, use_bias=False,
            rngs=rngs))
      previous = width
    self.score = nnx.Conv(previous, 1, (3, 3), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for index in range(len(self.CHANNELS)):
      x = getattr(self, f"conv{index}")(x)
      if index:
        x = getattr(self, f"norm{index}")(x)
      x = jax.nn.leaky_relu(x, 0.2)
    return self.score(x).astype(jnp.float32)
