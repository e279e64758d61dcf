"""DiRA's restorative distortions on device, with static shapes.

Each image gets one of: in-painting (up to 10 rectangles zeroed; after each
one the next is skipped with probability 0.1), out-painting (everything
zeroed but up to 10 large windows, same stopping rule), local shuffling (10
pairs of small blocks swapped, read from the undistorted image) or nothing,
with probabilities 0.30 / 0.05 / 0.30 / 0.35 (the reference's
`Custom_Distoration`). Sizes are the reference's for 224 px, scaled to the
image. Provenance: docs/methods/dira.md.
"""

import jax
import jax.numpy as jnp

from medclr.augment import ops as augment

REFERENCE_SIZE = 224
NUM_BLOCKS = 10
MODES = ("inpaint", "outpaint", "shuffle", "none")
_MODE_EDGES = jnp.array([0.30, 0.35, 0.65])


def _scaled(key, low, high, size):
  """randint(low, high) of the reference (inclusive), scaled to `size`."""
  draw = jax.random.randint(key, (), low, high + 1)
  return jnp.maximum(1, (draw * size) // REFERENCE_SIZE)


def _box(key, height, width, box_h, box_w):
  """Top-left corner of a box_h x box_w box 3 px inside the border."""
  k1, k2 = jax.random.split(key)
  top = jax.random.randint(k1, (), 3, jnp.maximum(4, height - box_h - 2))
  left = jax.random.randint(k2, (), 3, jnp.maximum(4, width - box_w - 2))
  return top, left


def _box_mask(height, width, top, left, box_h, box_w):
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  return ((rows >= top) & (rows < top + box_h) &
          (cols >= left) & (cols < left + box_w))


def _painting_mask(key, height, width, low, high, from_size):
  """Union of up to NUM_BLOCKS boxes (the reference's stopping rule);
  `from_size`: box sides are size - randint(low, high) (out-painting)."""
  k_stop, k_boxes = jax.random.split(key)
  stop = jax.random.uniform(k_stop, (NUM_BLOCKS,)) < 0.1
  # Box k is drawn when no stop came after boxes 0..k-1.
  active = jnp.cumsum(jnp.concatenate([jnp.zeros(1, bool), stop[:-1]])) == 0

  def box(k):  # one candidate box, vmapped (a small graph compiles fast)
    kh, kw, kp = jax.random.split(k, 3)
    box_h, box_w = _scaled(kh, low, high, height), _scaled(kw, low, high,
                                                           width)
    if from_size:
      box_h, box_w = height - box_h, width - box_w
    top, left = _box(kp, height, width, box_h, box_w)
    return _box_mask(height, width, top, left, box_h, box_w)

  masks = jax.vmap(box)(jax.random.split(k_boxes, NUM_BLOCKS))
  return jnp.any(masks & active[:, None, None], axis=0)


def _shuffle(key, image):
  """NUM_BLOCKS swaps of two small blocks, each read from `image`."""
  height, width = image.shape[:2]

  def swap(k, out):
    kh, kw, k1, k2 = jax.random.split(jax.random.fold_in(key, k), 4)
    box_h, box_w = _scaled(kh, 10, 15, height), _scaled(kw, 10, 15, width)
    (t1, l1), (t2, l2) = (_box(k1, height, width, box_h, box_w),
                          _box(k2, height, width, box_h, box_w))
    from_2 = jnp.roll(image, (t1 - t2, l1 - l2), axis=(0, 1))
    from_1 = jnp.roll(image, (t2 - t1, l2 - l1), axis=(0, 1))
    out = jnp.where(_box_mask(height, width, t1, l1, box_h, box_w)[..., None],
                    from_2, out)
    return jnp.where(_box_mask(height, width, t2, l2, box_h, box_w)[..., None],
                     from_1, out)

  return jax.lax.fori_loop(0, NUM_BLOCKS, swap, image)


def distort(key, image):
  """(distorted image, mode index into MODES) of one (H, W, C) image."""
  k_mode, k_in, k_out, k_shuffle = jax.random.split(key, 4)
  height, width = image.shape[:2]
  mode = jnp.searchsorted(_MODE_EDGES, jax.random.uniform(k_mode),
                          side="left")
  inpainted = image * ~_painting_mask(k_in, height, width, 10, 70,
                                      False)[..., None]
  outpainted = image * _painting_mask(k_out, height, width, 50, 70,
                                      True)[..., None]
  shuffled = _shuffle(k_shuffle, image)
  out = jnp.select([mode == 0, mode == 1, mode == 2],
                   [inpainted, outpainted, shuffled], image)
  return out, mode


def _distort_batch(key, images, offset=0):
  keys = augment.example_keys(key, images.shape[0], offset)
  return jax.vmap(distort)(keys, images)[0]


def sharded_distort(key, images, axis_name="data"):
  """`distort` on each image of a batch sharded over `axis_name`, keyed by
  its global index (the same result on any number of devices)."""
  return augment.per_device(_distort_batch, key, [images], axis_name)
