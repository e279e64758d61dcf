"""Losses: NT-Xent over the global batch, a collapse monitor, segmentation.

NT-Xent (docs/methods/README.md) must take its negatives from the *global*
batch. `nt_xent` runs `nt_xent_local` per device inside `jax.shard_map`: each
device all-gathers the normalised projections (`tiled=True`), scores its own
anchors against all 2N, and the per-device sums are `psum`med. The transpose
of `all_gather` is a reduce-scatter, so gradients equal the single-device
gradient of `nt_xent_reference` on the global batch (tested on 1 and 8
devices in tests/methods/losses_test.py).

Segmentation losses reduce with global sums over the whole batch, so under
`jax.jit` with a batch-sharded Explicit mesh their value does not depend on
the number of devices.

No Orbax, Grain or absl imports here: losses are pure functions of arrays,
so they can be jitted, tested and reused without I/O or flag state.
"""
import jax
import jax.numpy as jnp
import optax

# Guards the L2 normalisation of an all-zero vector, as
# torch.nn.functional.normalize (lightly's monitor) does.
_NORM_EPS = 1e-12
# Additive smoothing of soft Dice (MONAI DiceLoss smooth_nr/smooth_dr default):
# keeps Dice defined when a class is absent from both prediction and mask.
_DICE_SMOOTH = 1e-5
# Guards division by the weighted pixel count when every weight is zero.
_COUNT_EPS = 1e-6


def l2_normalize(z: jax.Array) -> jax.Array:
  """Rows of `z` scaled to unit L2 norm, computed in float32."""
  z = z.astype(jnp.float32)
  # max(|z|^2, eps^2) rather than max(|z|, eps): the gradient of the norm
  # at an all-zero row is 0/0 = NaN, which max() would still multiply by 0.
  squared = jnp.sum(z * z, axis=-1, keepdims=True)
  return z / jnp.sqrt(jnp.maximum(squared, _NORM_EPS ** 2))


def _check_pair(z1: jax.Array, z2: jax.Array) -> None:
  if z1.ndim != 2 or z1.shape != z2.shape:
    raise ValueError(
        'NT-Xent expects two (batch, dim) projections of the same shape, got '
        f'z1 {z1.shape} and z2 {z2.shape}')


def nt_xent_reference(
    z1: jax.Array, z2: jax.Array, temperature: float
) -> jax.Array:
  """Single-device NT-Xent on the full batch, written for readability.

  For the 2N anchors z = [z1; z2] (L2-normalised), anchor i's positive is the
  other view of the same image, and
    l_i = -log(exp(sim(z_i, z_pos)/t) / sum_{k != i} exp(sim(z_i, z_k)/t)),
  averaged over all 2N anchors. Use `nt_xent` in training steps.

  Args:
    z1: projections of the first views, (N, dim).
    z2: projections of the second views, (N, dim); row i pairs with z1[i].
    temperature: softmax temperature t (0.1 in the canonical step).

  Returns:
    Scalar float32 loss.
  """
  _check_pair(z1, z2)
  n = z1.shape[0]
  z = l2_normalize(jnp.concatenate([z1, z2]).astype(jnp.float32))
  logits = z @ z.T / temperature
  is_self = jnp.eye(2 * n, dtype=bool)
  logits = jnp.where(is_self, -jnp.inf, logits)
  positive = jnp.concatenate([jnp.arange(n) + n, jnp.arange(n)])
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, positive)
  return jnp.mean(losses)


def nt_xent_local(
    z1: jax.Array,
    z2: jax.Array,
    temperature: float,
    axis_name: str = 'data',
) -> jax.Array:
  """NT-Xent over the global batch, for use INSIDE `jax.shard_map`.

  Each device holds n = N / D rows of each view. It gathers all 2N
  normalised projections, scores its 2n local anchors against them, masks
  each anchor's own column (found from `axis_index` offsets), and returns the
  global mean: psum of the local sums divided by 2N, identical on every
  device.

  Args:
    z1: this device's first-view projections, (n, dim).
    z2: this device's second-view projections, (n, dim).
    temperature: softmax temperature.
    axis_name: mesh axis the batch is sharded over.

  Returns:
    Scalar float32 loss, the same on every device.
  """
  _check_pair(z1, z2)
  n = z1.shape[0]
  local1 = l2_normalize(z1.astype(jnp.float32))
  local2 = l2_normalize(z2.astype(jnp.float32))
  # Global layout [all first views; all second views], matching the
  # reference so that global row indices mean the same thing.
  global1 = jax.lax.all_gather(local1, axis_name, tiled=True)
  global2 = jax.lax.all_gather(local2, axis_name, tiled=True)
  global_n = global1.shape[0]
  candidates = jnp.concatenate([global1, global2])
  anchors = jnp.concatenate([local1, local2])
  logits = anchors @ candidates.T / temperature

  offset = jax.lax.axis_index(axis_name) * n
  rows = jnp.arange(n) + offset
  self_index = jnp.concatenate([rows, rows + global_n])
  positive = jnp.concatenate([rows + global_n, rows])
  is_self = jnp.arange(2 * global_n)[None, :] == self_index[:, None]
  logits = jnp.where(is_self, -jnp.inf, logits)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, positive)
  return jax.lax.psum(jnp.sum(losses), axis_name) / (2 * global_n)


def nt_xent(
    z1: jax.Array,
    z2: jax.Array,
    temperature: float,
    axis_name: str = 'data',
) -> jax.Array:
  """NT-Xent over the global batch, sharded over the ambient mesh.

  Call it on global arrays inside a jitted step under `jax.set_mesh(mesh)`;
  it runs `nt_xent_local` per device with `jax.shard_map` (batch split over
  `axis_name`, scalar replicated). Inputs sharded otherwise (e.g. replicated)
  are resharded first. Inside a `shard_map` over `axis_name` (the axis is
  Manual) it calls `nt_xent_local` on the local rows directly. Without an
  ambient mesh, or when the mesh has no `axis_name` axis, there is nothing to
  split and it computes `nt_xent_reference` on the global arrays (same
  value).

  Args:
    z1: first-view projections, (N, dim), batch-sharded over `axis_name`.
    z2: second-view projections, (N, dim); row i pairs with z1[i].
    temperature: softmax temperature.
    axis_name: mesh axis the batch is sharded over.

  Returns:
    Scalar float32 loss (replicated).

  Raises:
    ValueError: shapes differ, or N is not divisible by the axis size.
  """
  _check_pair(z1, z2)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or axis_name not in mesh.axis_names:
    return nt_xent_reference(z1, z2, temperature)
  axis_type = mesh.axis_types[mesh.axis_names.index(axis_name)]
  if axis_type == jax.sharding.AxisType.Manual:
    # Already inside a shard_map over `axis_name`: z1, z2 are the local rows.
    return nt_xent_local(z1, z2, temperature, axis_name)
  num_shards = mesh.shape[axis_name]
  if z1.shape[0] % num_shards:
    raise ValueError(
        f'NT-Xent batch {z1.shape[0]} is not divisible by the {num_shards} '
        f'devices of mesh axis {axis_name!r}')
  if axis_type == jax.sharding.AxisType.Explicit:
    # An Explicit-mode shard_map refuses inputs whose sharding differs from
    # in_specs (e.g. replicated projections); move them to the batch split.
    z1 = jax.sharding.reshard(z1, jax.P(axis_name))
    z2 = jax.sharding.reshard(z2, jax.P(axis_name))
  local_loss = jax.shard_map(
      lambda a, b: nt_xent_local(a, b, temperature, axis_name),
      in_specs=(jax.P(axis_name), jax.P(axis_name)),
      out_specs=jax.P(),
  )
  return local_loss(z1, z2)


def embedding_std(z: jax.Array) -> jax.Array:
  """Collapse monitor: mean over dims of the batch std of L2-normalised z.

  lightly's `std_of_l2_normalized`: about 1/sqrt(dim) for well-spread
  embeddings, 0 when every sample maps to the same direction (collapse).
  Like lightly (torch.std) it uses the unbiased std, so batch >= 2.

  Args:
    z: embeddings, (batch, dim).

  Returns:
    Scalar float32.
  """
  normalized = l2_normalize(z.astype(jnp.float32))
  return jnp.mean(jnp.std(normalized, axis=0, ddof=1))


def _pixel_shapes(
    logits: jax.Array, mask: jax.Array, weight: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Returns mask (int32) and weight (float32) as (B, H, W), checking shapes."""
  if logits.ndim != 4:
    raise ValueError(
        f'segmentation logits must be (batch, height, width, classes), got '
        f'{logits.shape}')
  spatial = logits.shape[:3]

  def squeeze(x, name):
    if x.ndim == 4 and x.shape[-1] == 1:
      x = x[..., 0]
    if x.shape != spatial:
      raise ValueError(
          f'segmentation {name} must have shape {spatial} (or with a trailing '
          f'1) to match logits {logits.shape}, got {x.shape}')
    return x

  return (squeeze(mask, 'mask').astype(jnp.int32),
          squeeze(weight, 'weight').astype(jnp.float32))


def weighted_cross_entropy(
    logits: jax.Array, mask: jax.Array, weight: jax.Array
) -> jax.Array:
  """Pixel cross-entropy averaged over weighted pixels of the whole batch.

  One logit channel means binary (sigmoid BCE); several mean softmax CE.

  Args:
    logits: (B, H, W, C) float.
    mask: (B, H, W) or (B, H, W, 1) int class indices (binary: 0/1).
    weight: same shape as mask, float; 0 excludes a pixel (outside the FOV).

  Returns:
    Scalar float32: sum(weight * ce) / sum(weight), 0 if all weights are 0.
  """
  mask, weight = _pixel_shapes(logits, mask, weight)
  logits = logits.astype(jnp.float32)
  if logits.shape[-1] == 1:
    per_pixel = optax.sigmoid_binary_cross_entropy(
        logits[..., 0], mask.astype(jnp.float32))
  else:
    per_pixel = optax.softmax_cross_entropy_with_integer_labels(logits, mask)
  return jnp.sum(weight * per_pixel) / jnp.maximum(
      jnp.sum(weight), _COUNT_EPS)


def soft_dice_loss(
    logits: jax.Array, mask: jax.Array, weight: jax.Array
) -> jax.Array:
  """1 - soft Dice over the weighted pixels of the whole batch.

  Sums run over the whole batch ("batch Dice", as nnU-Net), not per image, so
  the value does not depend on how the batch is split across devices and an
  image without foreground does not produce an undefined Dice. Binary (one
  logit channel) scores the sigmoid foreground; multi-class averages the
  softmax Dice of the foreground classes 1..C-1.

  Args:
    logits: (B, H, W, C) float.
    mask: (B, H, W) or (B, H, W, 1) int class indices.
    weight: same shape as mask, float; 0 excludes a pixel.

  Returns:
    Scalar float32 in [0, 1]; 0 for a perfect prediction.
  """
  mask, weight = _pixel_shapes(logits, mask, weight)
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  if num_classes == 1:
    probs = jax.nn.sigmoid(logits)
    targets = mask[..., None].astype(jnp.float32)
  else:
    # Class 0 is background: its Dice is dominated by easy pixels.
    probs = jax.nn.softmax(logits)[..., 1:]
    targets = jax.nn.one_hot(mask, num_classes)[..., 1:]
  weight = weight[..., None]
  reduce_axes = (0, 1, 2)
  intersection = jnp.sum(weight * probs * targets, axis=reduce_axes)
  total = jnp.sum(weight * (probs + targets), axis=reduce_axes)
  dice = (2 * intersection + _DICE_SMOOTH) / (total + _DICE_SMOOTH)
  return 1 - jnp.mean(dice)


def segmentation_loss(
    logits: jax.Array, mask: jax.Array, weight: jax.Array,
    dice_weight: float = 1.0
) -> jax.Array:
  """Weighted pixel cross-entropy + soft Dice loss, the fine-tuning loss.

  Binary when `logits` has one channel (BCE-with-logits + 1 - Dice), else
  softmax CE + mean foreground (1 - Dice). See `weighted_cross_entropy` and
  `soft_dice_loss`.

  Args:
    logits: (B, H, W, C) float.
    mask: (B, H, W) or (B, H, W, 1) int class indices (binary: 0/1).
    weight: same shape as mask, float; the FOV (0 outside is ignored).
    dice_weight: factor on the Dice term (config.loss.dice_weight).

  Returns:
    Scalar float32.
  """
  return (weighted_cross_entropy(logits, mask, weight)
          + dice_weight * soft_dice_loss(logits, mask, weight))
