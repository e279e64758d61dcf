"""Convolutional U-Net down path: the one encoder shared by every medclr model.

Pretraining (`heads.ContrastiveModel`) and fine-tuning (`unet.UNet`) both hold
this class under the attribute `encoder`, built from the same arguments, so
their encoder parameter trees have identical paths and shapes and a pretrained
encoder transfers as a plain subtree restore, with no renaming table.

Submodules are named attributes (`level0.conv0`, `level0.norm0`, ...) rather
than lists: Orbax stores integer keys as strings, so list indices would make
the saved tree differ from the live one.
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from medclr.models import batch_norm

# Running-statistics decay. Flax's 0.9 is PyTorch's default BatchNorm momentum
# (0.1 in PyTorch's convention), so the PyTorch peer of the canonical unet2d-32
# benchmark (docs/protocol.md section 2) keeps identical layers.
BATCH_NORM_MOMENTUM = 0.9
# Upper bound on GroupNorm groups: medical batches are small, and 8 groups keep
# several channels per group even at width 8-16.
MAX_NORM_GROUPS = 8
NORMS = ('batch', 'group')


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2, VALID (odd last rows/columns dropped).

  The same forward values as `nnx.max_pool(x, (2, 2), strides=(2, 2))`,
  written as a reshape and a max because XLA:CPU lowers the gradient of
  `reduce_window` max to a variadic reduce-window over (value, iota index)
  pairs plus select-and-scatter, about 25x slower than this reshape's
  gradient (benchmarks/README.md, optimisation log). One difference: where
  a window holds equal maxima, this gradient is shared among them, whereas
  `reduce_window`'s goes to one. In the encoder the pool follows a ReLU, so
  ties are zeros whose ReLU gradient is zero either way.
  """
  n, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2, :]
  windows = (n, h // 2, 2, w // 2, 2, c)
  if jax.sharding.get_abstract_mesh().empty:
    return jnp.max(x.reshape(windows), axis=(2, 4))
  # Under an explicit-sharding mesh a reshape must name its output sharding:
  # the split axes inherit their parent's, the new window axes are whole.
  spec = tuple(jax.typeof(x).sharding.spec) + (None,) * 4
  out = jax.sharding.PartitionSpec(spec[0], spec[1], None, spec[2], None,
                                   spec[3])
  return jnp.max(jnp.reshape(x, windows, out_sharding=out), axis=(2, 4))


def num_norm_groups(channels: int) -> int:
  """Largest divisor of `channels` that is at most `MAX_NORM_GROUPS`.

  Args:
    channels: number of feature channels to normalise.

  Returns:
    The GroupNorm group count: min(8, channels) when it divides `channels`,
    otherwise the largest smaller divisor (e.g. 6 for 12 channels).
  """
  for groups in range(min(MAX_NORM_GROUPS, channels), 0, -1):
    if channels % groups == 0:
      return groups
  raise ValueError(f'channels must be positive, got {channels}')


def check_norm(norm: str) -> None:
  """Raises ValueError unless `norm` is one of `NORMS`."""
  if norm not in NORMS:
    raise ValueError(
        f"model norm must be one of {NORMS}, got {norm!r} "
        "(set config.model.norm)")


def make_norm(
    channels: int, norm: str, *, dtype: jnp.dtype | None, rngs: nnx.Rngs
) -> nnx.Module:
  """Builds the normalisation layer named by `norm` for `channels` features.

  BatchNorm under `jax.jit` on a batch-sharded global array computes its
  statistics over the whole global batch (GSPMD inserts the cross-device
  reduction), which is SimCLR's `global_bn`; no `axis_name` is needed.

  Args:
    channels: number of feature channels.
    norm: 'batch' or 'group'.
    dtype: computation dtype (None keeps the input's); params stay float32.
    rngs: NNX random streams.

  Returns:
    An `nnx.BatchNorm` or `nnx.GroupNorm`.
  """
  check_norm(norm)
  if norm == 'batch':
    return nnx.BatchNorm(
        channels, momentum=BATCH_NORM_MOMENTUM, dtype=dtype, rngs=rngs)
  return nnx.GroupNorm(
      channels, num_groups=num_norm_groups(channels), dtype=dtype, rngs=rngs)


def apply_norm(layer: nnx.Module, x: jax.Array, *, train: bool) -> jax.Array:
  """Applies a layer from `make_norm`; BatchNorm uses batch stats iff train."""
  if isinstance(layer, nnx.BatchNorm):
    if train:
      return batch_norm.train_forward(layer, x)
    return layer(x, use_running_average=True)
  return layer(x)


class ConvBlock(nnx.Module):
  """Two (3x3 'SAME' conv -> norm -> ReLU), the unit of every U-Net level."""

  def __init__(
      self,
      in_channels: int,
      out_channels: int,
      norm: str = 'batch',
      *,
      dtype: jnp.dtype | None = None,
      rngs: nnx.Rngs,
  ):
    """Builds the block.

    Args:
      in_channels: channels of the block input.
      out_channels: channels of both convolutions' outputs.
      norm: 'batch' or 'group'.
      dtype: computation dtype (None keeps the input's); params stay float32.
      rngs: NNX random streams.
    """
    check_norm(norm)
    # BatchNorm subtracts the per-channel mean, which cancels a conv bias
    # exactly; GroupNorm only subtracts a per-group mean, so the bias is kept.
    use_bias = norm != 'batch'
    self.conv0 = nnx.Conv(
        in_channels, out_channels, (3, 3), padding='SAME', use_bias=use_bias,
        dtype=dtype, rngs=rngs)
    self.norm0 = make_norm(out_channels, norm, dtype=dtype, rngs=rngs)
    self.conv1 = nnx.Conv(
        out_channels, out_channels, (3, 3), padding='SAME', use_bias=use_bias,
        dtype=dtype, rngs=rngs)
    self.norm1 = make_norm(out_channels, norm, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = nnx.relu(apply_norm(self.norm0, self.conv0(x), train=train))
    return nnx.relu(apply_norm(self.norm1, self.conv1(x), train=train))


class Encoder(nnx.Module):
  """U-Net encoder: one `ConvBlock` per width, 2x2 max-pool between levels.

  Attributes `level0`, `level1`, ... are `ConvBlock`s; level i runs at
  1/2**i of the input resolution with `widths[i]` channels.
  """

  def __init__(
      self,
      in_channels: int,
      widths: Sequence[int],
      norm: str = 'batch',
      *,
      dtype: jnp.dtype | None = None,
      rngs: nnx.Rngs,
  ):
    """Builds the encoder.

    Args:
      in_channels: image channels (1 grey, 3 RGB).
      widths: channels per level, shallow to deep, e.g. (32, 64, 128, 256, 512).
      norm: 'batch' or 'group'.
      dtype: computation dtype (None keeps the input's); params stay float32.
      rngs: NNX random streams.
    """
    check_norm(norm)
    widths = tuple(int(w) for w in widths)
    if not widths or min(widths) < 1:
      raise ValueError(
          f'model widths must be a non-empty sequence of positive ints, got '
          f'{widths} (set config.model.widths)')
    self.in_channels = in_channels
    self.widths = widths
    self.norm = norm
    previous = in_channels
    for index, width in enumerate(widths):
      setattr(self, f'level{index}',
              ConvBlock(previous, width, norm, dtype=dtype, rngs=rngs))
      previous = width

  def __call__(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
    """Encodes a batch of images.

    Args:
      x: images, (batch, height, width, in_channels).
      train: True uses and updates BatchNorm batch statistics; False uses
        the running averages.

    Returns:
      Feature maps of every level, shallow to deep; level i has shape
      (batch, height // 2**i, width // 2**i, widths[i]).
    """
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(
          f'Encoder expects NHWC images with {self.in_channels} channels, got '
          f'shape {x.shape}')
    features = []
    for index in range(len(self.widths)):
      if index > 0:
        x = max_pool_2x2(x)
      x = getattr(self, f'level{index}')(x, train=train)
      features.append(x)
    return features


def encoder_forward_flops(
    in_channels: int, widths: Sequence[int], height: int, width: int
) -> int:
  """Analytic forward FLOPs of one image through the encoder's convolutions.

  Counts 2 * multiply-accumulates of the 3x3 convolutions only (the usual
  convention, and what dominates): each conv costs 2 * 9 * c_in * c_out per
  output pixel. Normalisation, ReLU, max-pool and conv biases are left out;
  they add well under 1%.

  Args:
    in_channels: image channels.
    widths: encoder widths, shallow to deep.
    height: input height in pixels.
    width: input width in pixels.

  Returns:
    FLOPs for a single image (multiply by the batch size for a batch).
  """
  flops = 0
  previous = in_channels
  for index, channels in enumerate(widths):
    pixels = (height // 2**index) * (width // 2**index)
    macs_per_pixel = 9 * previous * channels + 9 * channels * channels
    flops += 2 * pixels * macs_per_pixel
    previous = channels
  return flops


def min_input_multiple(widths: Sequence[int]) -> int:
  """Side lengths must be multiples of this so every pooling is exact."""
  return 2**(len(widths) - 1)
