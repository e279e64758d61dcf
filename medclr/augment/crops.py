"""Random resized crops on the device (`config.data.crop_site='device'`).

With host crops (`medclr/data/crops.py`) every view costs the host a Pillow
resize, and a TPU host would need tens of cores to keep its chips busy
(benchmarks/results/projection.md). In device mode the host only ships each
pool image once per step, fitted into a fixed `source x source` canvas
(`pipeline.FittedImage`, with its valid extent), and this module cuts and
resizes both views inside the jitted step.

Windows are drawn as torchvision's RandomResizedCrop draws them (as
`crops.sample_crop_window` does on the host): `attempts` candidates of
uniform area fraction and log-uniform aspect ratio, the first that fits,
else the largest centred window of clamped aspect. The resize is
`jax.image.scale_and_translate` with an antialiased linear kernel, the
filter Pillow's bilinear `resize(box=...)` uses on the host. Every example
is keyed by its global batch index (`augment.example_keys`), so 1 device
and 8 give the same views.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from medclr.augment import ops as augment


@dataclasses.dataclass(frozen=True)
class CropSpec:
  """Static crop parameters (hashable for jit).

  Attributes:
    size: side of each output view.
    area: crop area range as a fraction of the valid image.
    aspect: crop width/height ratio range.
    attempts: candidate windows before the centred fallback.
  """
  size: int
  area: tuple[float, float]
  aspect: tuple[float, float]
  attempts: int = 10


def canvas_side(view_size, area, requested=0):
  """The host canvas side for device crops (`config.data.crop_canvas`).

  `requested` > 0 is used as given. The default (0) is the smallest multiple
  of 32 at which the smallest window (area[0] of the image) still spans
  `view_size` canvas pixels, so no view is upsampled from a canvas coarser
  than the view: 128 px views with SimCLR's area 0.08 give 480. Areas below
  0.01 count as 0.01 (at most 10 views wide).
  """
  if requested:
    return int(requested)
  side = view_size / math.sqrt(max(area[0], 0.01))
  return int(math.ceil(side / 32) * 32)


def sample_window(key, height, width, spec):
  """(top, left, crop_height, crop_width) inside a height x width image.

  `height` and `width` may be traced (each example has its own extent);
  values are integers held in float32.
  """
  k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
  height = jnp.asarray(height, jnp.float32)
  width = jnp.asarray(width, jnp.float32)
  lo, hi = spec.area
  target = height * width * jax.random.uniform(
      k_area, (spec.attempts,), minval=lo, maxval=hi)
  log_lo, log_hi = jnp.log(spec.aspect[0]), jnp.log(spec.aspect[1])
  ratio = jnp.exp(jax.random.uniform(k_ratio, (spec.attempts,),
                                     minval=log_lo, maxval=log_hi))
  crop_w = jnp.round(jnp.sqrt(target * ratio))
  crop_h = jnp.round(jnp.sqrt(target / ratio))
  fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
  first = jnp.argmax(fits)
  fallback_h, fallback_w = _centred_fallback(height, width, spec.aspect)
  found = fits.any()
  crop_h = jnp.where(found, crop_h[first], fallback_h)
  crop_w = jnp.where(found, crop_w[first], fallback_w)
  # Uniform placement where the window fits; the fallback is centred.
  top = jnp.where(found, jnp.floor(jax.random.uniform(k_top) *
                                   (height - crop_h + 1)),
                  jnp.floor((height - crop_h) / 2))
  left = jnp.where(found, jnp.floor(jax.random.uniform(k_left) *
                                    (width - crop_w + 1)),
                   jnp.floor((width - crop_w) / 2))
  return top, left, crop_h, crop_w


def _centred_fallback(height, width, aspect):
  """The whole image, its aspect ratio clamped into `aspect`."""
  ratio = width / height
  crop_h = jnp.where(ratio < aspect[0], jnp.round(width / aspect[0]), height)
  crop_w = jnp.where(ratio > aspect[1], jnp.round(height * aspect[1]), width)
  return crop_h, crop_w


def resized_crop(image, window, size):
  """image[window] resized to (size, size, C), float32 [0, 1].

  Output pixel i samples input row top + (i + 0.5) * crop_h / size - 0.5,
  with the kernel widened when shrinking (antialias), as Pillow's bilinear
  `resize(box=...)` does.
  """
  top, left, crop_h, crop_w = window
  scale = jnp.stack([size / crop_h, size / crop_w])
  translation = -jnp.stack([top, left]) * scale
  return jax.image.scale_and_translate(
      image.astype(jnp.float32), (size, size, image.shape[-1]), (0, 1), scale,
      translation, method="linear", antialias=True)


def _to_unit(images):
  """uint8 -> [0, 1] floats; floats pass through."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def _with_valid_channel(image, extent):
  """(S, S, C) canvas + a last channel that is 1 inside the image."""
  rows = jnp.arange(image.shape[0]) < extent[0]
  cols = jnp.arange(image.shape[1]) < extent[1]
  valid = (rows[:, None] & cols[None, :]).astype(jnp.float32)
  return jnp.concatenate([image * valid[..., None], valid[..., None]], -1)


def cut_view(canvas, extent, window, size):
  """canvas[window] resized to (size, size, C) in [0, 1], with the kernel
  weights renormalised over the image's pixels (not the canvas padding)."""
  out = resized_crop(_with_valid_channel(_to_unit(canvas), extent), window,
                     size)
  return jnp.clip(out[..., :-1] / jnp.maximum(out[..., -1:], 1e-6), 0, 1)


def crop_batch(key, images, extents, spec, offset=0):
  """Two views of each image of a (B, S, S, C) batch with (B, 2) extents.

  A window at the image's edge has kernel taps in the canvas padding;
  dividing by the resized valid-pixel channel renormalises the weights over
  image pixels only, as Pillow does at an image border.
  """
  keys = augment.example_keys(key, images.shape[0], offset)

  def one(key, image, extent):
    return tuple(
        cut_view(image, extent,
                 sample_window(view_key, extent[0], extent[1], spec),
                 spec.size)
        for view_key in jax.random.split(key))

  return jax.vmap(one)(keys, images, extents)


def two_crops(key, batch, spec, axis_name="data"):
  """{'view1', 'view2'} (and 'norm') from a device-crop batch.

  `batch` holds 'image' (B, S, S, C) and 'extent' (B, 2) from
  `pipeline.FittedImage`; each device crops its own examples.
  """
  view1, view2 = augment.per_device(
      functools.partial(crop_batch, spec=spec), key,
      [batch["image"], batch["extent"]], axis_name)
  views = {"view1": view1, "view2": view2}
  if "norm" in batch:
    views["norm"] = batch["norm"]
  return views
