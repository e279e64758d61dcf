"""2-D U-Net for segmentation fine-tuning: `encoder.Encoder` plus a decoder.

The U-Net keeps the encoder under the attribute `encoder`, built exactly as in
`heads.ContrastiveModel`, so a pretrained encoder maps onto it by path.
Layout (docs/protocol.md section 2, `unet2d-32`): per decoder level a 2x2
stride-2 transposed conv, concatenation with the encoder skip, two 3x3
conv + norm + ReLU; a 1x1 conv produces the logits.
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from medclr.models import encoder as encoder_lib


def upsample_2x(conv: nnx.ConvTranspose, x: jax.Array) -> jax.Array:
  """`conv(x)` for a 2x2, stride-2, 'VALID' `ConvTranspose`, as one matmul.

  With kernel == stride the output windows do not overlap: output pixel
  (2i + a, 2j + b) is x[i, j] times the kernel tap (1 - a, 1 - b) (Flax
  flips the kernel), plus the bias. XLA:CPU computes the kernel gradient of
  the convolution form as a dilated convolution that took 30% of the
  fine-tuning step; as a matmul it is an ordinary dot. Same parameters, same
  values (tests/models/models_test.py compares with `conv(x)`).
  """
  kernel = conv.kernel[...][::-1, ::-1]
  bias = conv.bias[...] if conv.bias is not None else None
  dtype = conv.dtype or jnp.result_type(x, kernel)
  batch, height, width, _ = x.shape
  out = jnp.einsum('nhwc,abco->nhawbo', x.astype(dtype), kernel.astype(dtype))
  # Explicit sharding needs the output sharding of a reshape that merges
  # axes; the batch axis keeps the input's.
  out = jax.lax.reshape(out, (batch, 2 * height, 2 * width, kernel.shape[-1]),
                        out_sharding=jax.typeof(x).sharding)
  return out if bias is None else out + bias.astype(dtype)


class DecoderLevel(nnx.Module):
  """One decoder step: upsample 2x, concatenate the skip, `ConvBlock`."""

  def __init__(
      self,
      in_channels: int,
      out_channels: int,
      norm: str = 'batch',
      *,
      dtype: jnp.dtype | None = None,
      rngs: nnx.Rngs,
  ):
    """Builds the level.

    Args:
      in_channels: channels of the deeper feature map being upsampled.
      out_channels: channels of the skip feature and of the level output.
      norm: 'batch' or 'group'.
      dtype: computation dtype (None keeps the input's); params stay float32.
      rngs: NNX random streams.
    """
    # 'VALID' with kernel == stride gives exactly twice the input size, like
    # PyTorch's ConvTranspose2d(kernel_size=2, stride=2) in the U-Net paper.
    self.upconv = nnx.ConvTranspose(
        in_channels, out_channels, (2, 2), strides=(2, 2), padding='VALID',
        dtype=dtype, rngs=rngs)
    self.block = encoder_lib.ConvBlock(
        2 * out_channels, out_channels, norm, dtype=dtype, rngs=rngs)

  def __call__(
      self, x: jax.Array, skip: jax.Array, *, train: bool
  ) -> jax.Array:
    x = upsample_2x(self.upconv, x)
    x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
    return self.block(x, train=train)


class Decoder(nnx.Module):
  """U-Net up path over the features returned by `encoder.Encoder`.

  Attribute `level{i}` upsamples from level i+1 to level i, so names line up
  with the encoder level whose skip they consume.
  """

  def __init__(
      self,
      widths: Sequence[int],
      norm: str = 'batch',
      *,
      blocks: int | None = None,
      dtype: jnp.dtype | None = None,
      rngs: nnx.Rngs,
  ):
    """Builds the decoder.

    Args:
      widths: the encoder widths, shallow to deep.
      norm: 'batch' or 'group'.
      blocks: build only the `blocks` deepest levels (a decoder pretrained
        in part, as Chaitanya et al.'s local stage); None builds all.
      dtype: computation dtype (None keeps the input's); params stay float32.
      rngs: NNX random streams.
    """
    encoder_lib.check_norm(norm)
    self.widths = tuple(int(w) for w in widths)
    total = len(self.widths) - 1
    blocks = total if blocks is None else int(blocks)
    if not 1 <= blocks <= total:
      raise ValueError(f'decoder blocks must be in [1, {total}] for '
                       f'{len(self.widths)} levels, got {blocks}')
    self.first = total - blocks  # the shallowest level built
    for index in range(self.first, total):
      setattr(self, f'level{index}', DecoderLevel(
          self.widths[index + 1], self.widths[index], norm, dtype=dtype,
          rngs=rngs))

  def __call__(
      self, features: Sequence[jax.Array], *, train: bool
  ) -> jax.Array:
    """Decodes encoder features.

    Args:
      features: the encoder's per-level features, shallow to deep.
      train: True uses and updates BatchNorm batch statistics.

    Returns:
      Features of the shallowest level built, with its encoder width: full
      resolution and `widths[0]` channels for a whole decoder.
    """
    if len(features) != len(self.widths):
      raise ValueError(
          f'Decoder built for {len(self.widths)} levels got {len(features)} '
          'feature maps')
    x = features[-1]
    for index in reversed(range(self.first, len(self.widths) - 1)):
      x = getattr(self, f'level{index}')(x, features[index], train=train)
    return x


class UNet(nnx.Module):
  """U-Net: `encoder` (shared with pretraining), `decoder`, 1x1 `head`."""

  def __init__(
      self,
      in_channels: int,
      widths: Sequence[int],
      norm: str = 'batch',
      num_classes: int = 1,
      *,
      representation_dim: int = 0,
      dtype: jnp.dtype | None = None,
      rngs: nnx.Rngs,
  ):
    """Builds the U-Net.

    Args:
      in_channels: image channels (1 grey, 3 RGB).
      widths: channels per level, shallow to deep, e.g. (32, 64, 128, 256, 512).
      norm: 'batch' or 'group'.
      num_classes: output channels; 1 means binary (sigmoid) segmentation.
      representation_dim: > 0 adds `representation`, two 1x1 convolutions
        from the decoder's features to per-pixel embeddings of this size,
        for pixel contrastive losses in training (unused at inference).
      dtype: computation dtype (None keeps the input's); params stay float32.
      rngs: NNX random streams.
    """
    if num_classes < 1:
      raise ValueError(
          f'num_classes must be >= 1, got {num_classes} '
          '(set config.model.num_classes)')
    self.encoder = encoder_lib.Encoder(
        in_channels, widths, norm, dtype=dtype, rngs=rngs)
    self.decoder = Decoder(widths, norm, dtype=dtype, rngs=rngs)
    self.head = nnx.Conv(
        self.encoder.widths[0], num_classes, (1, 1), dtype=dtype, rngs=rngs)
    self.num_classes = num_classes
    if representation_dim > 0:
      self.representation = RepresentationHead(
          self.encoder.widths[0], representation_dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool,
               with_representation: bool = False):
    """Segments a batch of images.

    Args:
      x: images, (batch, height, width, in_channels); height and width must be
        multiples of 2**(len(widths) - 1).
      train: True uses and updates BatchNorm batch statistics.
      with_representation: also return the `representation` embeddings.

    Returns:
      Logits, (batch, height, width, num_classes), float32; with
      `with_representation`, (logits, (batch, height, width,
      representation_dim) float32 embeddings).
    """
    multiple = encoder_lib.min_input_multiple(self.encoder.widths)
    if x.ndim != 4 or x.shape[1] % multiple or x.shape[2] % multiple:
      raise ValueError(
          f'UNet with {len(self.encoder.widths)} levels needs NHWC input with '
          f'height and width divisible by {multiple}, got shape {x.shape}')
    features = self.decoder(self.encoder(x, train=train), train=train)
    # Logits in float32 so losses stay accurate under a bfloat16 compute dtype.
    logits = self.head(features).astype(jnp.float32)
    if not with_representation:
      return logits
    if not hasattr(self, 'representation'):
      raise ValueError('this U-Net has no representation head (set '
                       'config.model.representation_dim > 0)')
    return logits, self.representation(features).astype(jnp.float32)


class RepresentationHead(nnx.Module):
  """Per-pixel embedding head: 1x1 conv, ReLU, 1x1 conv (ARCO's psi_r)."""

  def __init__(self, in_features: int, dim: int, *,
               dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    self.hidden = nnx.Conv(in_features, dim, (1, 1), dtype=dtype, rngs=rngs)
    self.out = nnx.Conv(dim, dim, (1, 1), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(jax.nn.relu(self.hidden(x)))
