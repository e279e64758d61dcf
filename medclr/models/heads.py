"""Projection head and the contrastive pretraining model.

`ContrastiveModel` holds the same `encoder.Encoder` as `unet.UNet` under the
same attribute name, so `nnx.state(model.encoder, nnx.Param)` has identical
paths and shapes in both and pretrained weights transfer by subtree.
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from medclr.models import encoder as encoder_lib


class ProjectionHead(nnx.Module):
  """SimCLR projection MLP: Dense -> ReLU -> Dense (no normalisation).

  The canonical step (docs/protocol.md section 2) uses Dense 512 -> ReLU ->
  Dense 128; SimCLR v2's deeper BN head is deliberately not reproduced so the
  benchmark matches its PyTorch peer layer for layer.
  """

  def __init__(
      self,
      in_dim: int,
      hidden_dim: int = 512,
      out_dim: int = 128,
      *,
      dtype: jnp.dtype | None = None,
      rngs: nnx.Rngs,
  ):
    """Builds the head.

    Args:
      in_dim: features of the pooled encoder output.
      hidden_dim: width of the hidden layer.
      out_dim: dimension of the projection z used by the loss.
      dtype: computation dtype (None keeps the input's); params stay float32.
      rngs: NNX random streams.
    """
    self.hidden = nnx.Linear(in_dim, hidden_dim, dtype=dtype, rngs=rngs)
    self.output = nnx.Linear(hidden_dim, out_dim, dtype=dtype, rngs=rngs)

  def __call__(self, h: jax.Array) -> jax.Array:
    return self.output(nnx.relu(self.hidden(h)))


class ContrastiveModel(nnx.Module):
  """Encoder + global average pool + `ProjectionHead`, for SimCLR."""

  def __init__(
      self,
      in_channels: int,
      widths: Sequence[int],
      norm: str = 'batch',
      hidden_dim: int = 512,
      out_dim: int = 128,
      *,
      dtype: jnp.dtype | None = None,
      rngs: nnx.Rngs,
  ):
    """Builds the model.

    Args:
      in_channels: image channels (1 grey, 3 RGB).
      widths: encoder channels per level, shallow to deep.
      norm: 'batch' or 'group'.
      hidden_dim: projection head hidden width.
      out_dim: projection dimension.
      dtype: computation dtype (None keeps the input's); params stay float32.
      rngs: NNX random streams.
    """
    self.encoder = encoder_lib.Encoder(
        in_channels, widths, norm, dtype=dtype, rngs=rngs)
    self.projector = ProjectionHead(
        self.encoder.widths[-1], hidden_dim, out_dim, dtype=dtype, rngs=rngs)

  def __call__(
      self, x: jax.Array, *, train: bool
  ) -> tuple[jax.Array, jax.Array]:
    """Embeds a batch of views.

    Args:
      x: images, (batch, height, width, in_channels).
      train: True uses and updates BatchNorm batch statistics.

    Returns:
      (z, h): z the projections (batch, out_dim), not normalised (the loss
      normalises); h the pooled deepest encoder features (batch, widths[-1]).
      Both float32.
    """
    deepest = self.encoder(x, train=train)[-1]
    # Pool in float32: a mean over many pixels loses precision in bfloat16.
    h = jnp.mean(deepest.astype(jnp.float32), axis=(1, 2))
    z = self.projector(h)
    return z.astype(jnp.float32), h
