"""Test-time BatchNorm adaptation: the target set's own statistics (AdaBN).

A U-Net trained on one camera normalises every layer with that camera's
running statistics. `adapted_batch_stats` re-estimates them on unlabelled
images of the target set: each image goes through the model in train mode
(so every layer normalises with the image's own statistics, as in training)
and the per-image means and variances are pooled, weighted by pixel count,
into the mean and variance of all the images' activations together. Only
BatchNorm statistics change; weights are untouched (docs/cross_camera.md).
"""
from collections.abc import Iterable

from flax import nnx
import jax
import numpy as np

from medclr import errors
from medclr import inference


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
                        images: Iterable[np.ndarray], multiple: int):
  """BatchNorm statistics of `images` pooled over all their pixels.

  Args:
    graphdef: the model's graph definition.
    params, batch_stats: the model's pure-dict parameters and statistics
      (`batch_stats` gives the structure; its values are replaced).
    images: normalised float (H, W, C) images at the model's scale; each is
      mirror-padded to a multiple of `multiple`, as whole-image inference
      pads it.
    multiple: 2 ** (number of pooling levels) of the U-Net.

  Returns:
    A new `batch_stats` tree. For one image, eval mode with it equals train
    mode on that image; for several, the first layer's statistics are those
    of all their pixels together, and deeper layers pool what each image
    gives when normalised by itself (as in training, batch by batch).
  """
  stats_fn = jax.jit(make_statistics_fn(graphdef))
  parts, pixels = [], []
  for image in images:
    padded = inference.pad_to_multiple(np.asarray(image, np.float32),
                                       multiple)
    parts.append(jax.device_get(stats_fn(params, batch_stats, padded[None])))
    pixels.append(padded.shape[0] * padded.shape[1])
  if not parts:
    raise errors.ConfigError("BatchNorm adaptation got no images")
  weights = np.asarray(pixels, np.float64) / np.sum(pixels)
  return _pool(jax.device_get(batch_stats), parts, weights)
