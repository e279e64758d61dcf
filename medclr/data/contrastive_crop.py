"""ContrastiveCrop (Peng et al., CVPR 2022) for any method.

Method page: docs/methods/contrastive_crop.md.

A crop option, not a method: after `warmup_steps` of ordinary random resized
crops, every `loc_interval` steps the current encoder (eval mode) looks at
every un-augmented pool image; the channel-summed last feature map, min-max
normalised and upsampled to the input size, gives a box around the rows and
columns above `box_thresh`. Crops then keep RandomResizedCrop's area and
aspect but put their centre inside the image's box, Beta(alpha, alpha)
distributed (alpha < 1 pushes centres to the box borders). Values follow
xyupeng/ContrastiveCrop (`datasets/transforms/ContrastiveCrop.py`,
`DDP_simclr_ccrop.py`); steps replace its epochs.

On medical images boxes often cover the whole image (the reference's issue
#15): `mean_box_area` is logged at every localisation so users can see it.
"""
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from medclr.data import crops

FULL_BOX = (0.0, 0.0, 1.0, 1.0)  # (h_min, w_min, h_max, w_max), relative


class BoxTable:
  """Per-pool-image boxes shared by the host crop transform and the loop.

  The transform reads it while making crops; the loop replaces the boxes at
  each localisation and then rebuilds the data iterator from its saved
  position, so no prefetched batch mixes old and new boxes (exact resume).
  """

  def __init__(self, num_images):
    self.boxes = np.tile(np.asarray(FULL_BOX, np.float32), (num_images, 1))
    self.active = False

  def to_json(self):
    return {"boxes": self.boxes.tolist(), "active": self.active}

  def load_json(self, saved):
    boxes = np.asarray(saved["boxes"], np.float32)
    if boxes.shape != self.boxes.shape:
      raise ValueError(f"saved ContrastiveCrop boxes have shape {boxes.shape}, "
                       f"the pool has {self.boxes.shape[0]} images")
    self.boxes, self.active = boxes, bool(saved["active"])


def beta_place(box, alpha):
  """`crops.sample_crop_window` placement with the centre inside `box`."""
  h0, w0, h1, w1 = box

  def place(rng, height, width, crop_height, crop_width):
    # Top-left ranges whose window centre lies in the box, clipped so the
    # window stays inside the image (reference: ch0/ch1, cw0/cw1).
    ch0 = min(max(int(height * h0) - crop_height // 2, 0), height - crop_height)
    ch1 = min(max(int(height * h1) - crop_height // 2, 0), height - crop_height)
    cw0 = min(max(int(width * w0) - crop_width // 2, 0), width - crop_width)
    cw1 = min(max(int(width * w1) - crop_width // 2, 0), width - crop_width)
    top = ch0 + int((ch1 - ch0) * rng.beta(alpha, alpha))
    left = cw0 + int((cw1 - cw0) * rng.beta(alpha, alpha))
    return top, left

  return place


def boxes_from_features(features, size, thresh):
  """Boxes (b, 4) from last feature maps (b, h, w, c) (jittable).

  heatmap = sum over channels, min-max normalised per image, bilinearly
  upsampled to size x size; the box spans the first and last rows/columns
  whose maximum exceeds `thresh` (the whole image if none does).
  """
  heat = features.astype(jnp.float32).sum(-1)
  lo = heat.min(axis=(1, 2), keepdims=True)
  hi = heat.max(axis=(1, 2), keepdims=True)
  heat = (heat - lo) / jnp.maximum(hi - lo, 1e-12)
  heat = jax.image.resize(heat, (heat.shape[0], size, size), "bilinear")
  rows = heat.max(axis=2) > thresh
  cols = heat.max(axis=1) > thresh

  def span(mask):
    any_on = mask.any(axis=1)
    first = jnp.argmax(mask, axis=1)
    last = size - 1 - jnp.argmax(mask[:, ::-1], axis=1)
    first = jnp.where(any_on, first, 0)
    last = jnp.where(any_on, last, size - 1)
    return first / size, (last + 1) / size

  h0, h1 = span(rows)
  w0, w1 = span(cols)
  return jnp.stack([h0, w0, h1, w1], axis=1)


def make_localize_fn(graphdef, size, thresh):
  """jitted (params, batch_stats, images) -> boxes, encoder in eval mode."""

  @jax.jit
  def localize(params, batch_stats, images):
    model = nnx.merge(graphdef, params, batch_stats)
    features = model.encoder(images, train=False)[-1]
    return boxes_from_features(features, size, thresh)

  return localize


def pool_images(sources, size, in_channels):
  """Every pool image, un-augmented, resized to (size, size): (N, S, S, C)."""
  images = []
  for source in sources:
    for index in range(len(source)):
      image = np.asarray(source[index]["image"])
      if image.ndim == 2:
        image = image[..., None]
      images.append(crops.to_float(crops.resize_whole(image, size),
                                   in_channels))
  return np.stack(images)


def localize_all(localize, state, images, batch_size):
  """Boxes for all pool images, in fixed-size batches (one compilation)."""
  boxes = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:],
                                              chunk.dtype)])
    out = localize(state["params"], state["batch_stats"], chunk)
    boxes.append(np.asarray(jax.device_get(out))[:batch_size - pad])
  return np.concatenate(boxes).astype(np.float32)


def box_area(boxes):
  return float(np.mean((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))


class Controller:
  """Runs localisation on schedule and keeps crops and checkpoints in step.

  Args:
    crop_cfg: `config.contrastive_crop` (warmup_steps, loc_interval,
      box_thresh, loc_size, loc_batch).
    graphdef: graph of the method's online model (has `encoder`).
    images: `pool_images(...)` of the whole pool, in `sources` order.
    dataset: the Grain dataset whose crops read `table`.
    table: the `BoxTable` the dataset's transform reads.
    writer: metric writer for `ccrop_mean_box_area`.
  """

  def __init__(self, crop_cfg, graphdef, images, dataset, table, writer):
    self.cfg = crop_cfg
    self.images = images
    self.dataset = dataset
    self.table = table
    self.writer = writer
    self._localize = make_localize_fn(graphdef, images.shape[1],
                                      crop_cfg.box_thresh)
    self._fresh = True  # first call after (re)start rebuilds the iterator

  def due(self, step):
    warmup, interval = self.cfg.warmup_steps, max(self.cfg.loc_interval, 1)
    return step >= warmup and (step - warmup) % interval == 0

  def before_step(self, step, state, data_iter):
    """Localises when due; returns the iterator to read the next batch from."""
    if not (self.due(step) or self._fresh):
      return data_iter
    if self.due(step):
      self.table.boxes = localize_all(self._localize, state, self.images,
                                      self.cfg.loc_batch)
      self.table.active = True
      self.writer.write(step, {"ccrop_mean_box_area": box_area(
          self.table.boxes)})
    self._fresh = False
    # Rebuild from the consumed position so every batch from here on (and
    # none before) is cropped with the current boxes.
    rebuilt = iter(self.dataset)
    rebuilt.set_state(data_iter.get_state())
    return rebuilt
