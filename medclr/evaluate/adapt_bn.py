"""Test-time BatchNorm adaptation: the target set's own statistics (AdaBN).

A U-Net trained on one camera normalises every layer with that camera's
running statistics. `adapted_batch_stats` re-estimates them on unlabelled
images of the target set: batches of random crops, drawn as training draws
its patches (`random_crops`), go through the model in train mode (every
layer normalises with the batch's own statistics, as in training) and the
per-batch means and variances are pooled, weighted by pixel count, into the
mean and variance of all the crops' activations together. Only BatchNorm
statistics change; weights are untouched (docs/cross_camera.md).
"""
from collections.abc import Iterable, Sequence

from flax import nnx
import jax
import numpy as np

from medclr import errors


def _batch_norm_layers(model):
  return [node for _, node in nnx.iter_graph(model)
          if isinstance(node, nnx.BatchNorm)]


def make_statistics_fn(graphdef):
  """stats(params, batch_stats, images) -> the images' batch statistics.

  The result has `batch_stats`' structure: each BatchNorm layer's 'mean' and
  'var' are those of its input over the batch, every layer normalising with
  them (train mode) as it does in training.
  """

  def stats(params, batch_stats, images):
    model = nnx.merge(graphdef, params, batch_stats)
    layers = _batch_norm_layers(model)
    if not layers:
      raise errors.ConfigError(
          "BatchNorm adaptation needs a model with BatchNorm layers; this "
          "model's norm is not 'batch'")
    for layer in layers:
      layer.momentum = 0.0  # the running statistics become the batch's own
    model(images, train=True)
    return nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

  return stats


def _pool(tree, parts, weights):
  """Pixel-weighted pooled mean and variance of per-image statistics."""
  if set(tree) == {"mean", "var"}:
    means = np.stack([np.asarray(p["mean"], np.float64) for p in parts])
    second = np.stack([np.asarray(p["var"], np.float64)
                       + np.asarray(p["mean"], np.float64) ** 2
                       for p in parts])
    mean = np.tensordot(weights, means, axes=1)
    var = np.tensordot(weights, second, axes=1) - mean ** 2
    dtype = np.asarray(tree["mean"]).dtype
    return {"mean": mean.astype(dtype),
            "var": np.maximum(var, 0.0).astype(dtype)}
  return {key: _pool(value, [p[key] for p in parts], weights)
          for key, value in tree.items()}


def adapted_batch_stats(graphdef, params, batch_stats,
                        batches: Iterable[np.ndarray]):
  """BatchNorm statistics of `batches` pooled over all their pixels.

  Args:
    graphdef: the model's graph definition.
    params, batch_stats: the model's pure-dict parameters and statistics
      (`batch_stats` gives the structure; its values are replaced).
    batches: normalised float (B, H, W, C) batches at the model's scale,
      sides divisible by the U-Net's downsampling factor.

  Returns:
    A new `batch_stats` tree. For one batch, eval mode with it equals train
    mode on that batch; for several, the first layer's statistics are those
    of all their pixels together, and deeper layers pool what each batch
    gives when normalised by itself (as in training, batch by batch).
  """
  stats_fn = jax.jit(make_statistics_fn(graphdef))
  parts, pixels = [], []
  for batch in batches:
    batch = np.asarray(batch, np.float32)
    parts.append(jax.device_get(stats_fn(params, batch_stats, batch)))
    pixels.append(batch.shape[0] * batch.shape[1] * batch.shape[2])
  if not parts:
    raise errors.ConfigError("BatchNorm adaptation got no images")
  weights = np.asarray(pixels, np.float64) / np.sum(pixels)
  return _pool(jax.device_get(batch_stats), parts, weights)


def random_crops(images: Sequence[np.ndarray], crop: int, batch_size: int,
                 num_batches: int, seed: int = 0):
  """`num_batches` batches of `batch_size` square crops of side `crop`,
  each from a random image at a random place, as training draws its
  patches; an image smaller than `crop` is mirror-padded first."""
  rng = np.random.default_rng(seed)
  padded = [_pad_to(image, crop) for image in images]
  for _ in range(num_batches):
    batch = []
    for index in rng.integers(len(padded), size=batch_size):
      image = padded[index]
      top = rng.integers(image.shape[0] - crop + 1)
      left = rng.integers(image.shape[1] - crop + 1)
      batch.append(image[top:top + crop, left:left + crop])
    yield np.stack(batch)


def _pad_to(image, side):
  """Mirror-pads an (H, W, C) image to at least `side` on both axes."""
  image = np.asarray(image, np.float32)
  pad_h = max(0, side - image.shape[0])
  pad_w = max(0, side - image.shape[1])
  return np.pad(image, ((pad_h // 2, pad_h - pad_h // 2),
                        (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
                mode="reflect")
