"""Chaitanya et al. 2020 local contrastive loss: the decoder stage.

Two intensity-only views of the same crop go through the encoder (frozen,
from the global stage via `config.init`) and the deepest `blocks` decoder
levels, then g_2. At 13 fixed 3x3 regions of the feature map, each region's
flattened features are mapped to 128 dimensions; a region's positive is the
same region in the other view, its negatives its 5 neighbouring regions (a
fixed table) in both views. Method page: docs/methods/chaitanya_local.md.

The model, `LocalContrastModel`, holds `encoder` and `decoder` under the
U-Net's names, the decoder built only in its `blocks` deepest levels, so
both hand their weights to the U-Net by path. `local_head` (g_2: two 1x1
convolutions, the first with BatchNorm and ReLU, neither with a bias) and
`region` (a dense map of each flattened 3x3 region to 128 dimensions, no
bias) exist only in pretraining.
"""
from collections.abc import Sequence
import dataclasses
import math

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from medclr import errors
from medclr import methods
from medclr import models
from medclr.augment import ops as augment
from medclr.methods import losses
from medclr.models import encoder as encoder_lib
from medclr.models import unet as unet_lib

NUM_REGIONS = 13
NUM_NEGATIVES = 5


def region_table(height: int, width: int):
  """Top-left corners of the 13 regions and of each one's 5 negatives.

  The reference's table for 3x3 regions (local_reg_size=1,
  no_of_local_regions=13, no_of_neg_local_regions=5), on a feature map of
  `height` x `width`: corners, edge midpoints, centre and quarter points of
  the (height - 4) x (width - 4) grid of valid corners.

  Returns:
    (positives (13, 2), negatives (13, 5, 2)) int arrays of (row, column).
  """
  if min(height, width) < 8:
    raise errors.ConfigError(
        f"the local loss needs a feature map of at least 8x8, got "
        f"{height}x{width}: use larger crops (config.data.image_size) or "
        "more decoder blocks (config.local.blocks)")
  x, y = height - 4, width - 4
  h, q, t = (lambda n: int(n / 2)), (lambda n: int(n / 4)), (
      lambda n: int(3 * n / 4))
  positives = [[0, 0], [0, h(y)], [0, y], [h(x), 0], [h(x), h(y)],
               [h(x), y], [x, 0], [x, h(y)], [x, y], [q(x), q(y)],
               [q(x), t(y)], [t(x), q(y)], [t(x), t(y)]]
  negatives = [
      [[0, h(y)], [q(x), q(y)], [q(x), h(y)], [h(x), 0], [h(x), q(y)]],
      [[0, 0], [0, y], [q(x), q(y)], [q(x), t(y)], [h(x), h(y)]],
      [[0, h(y)], [q(x), h(y)], [q(x), t(y)], [h(x), t(y)], [h(x), y]],
      [[0, 0], [q(x), q(y)], [h(x), h(y)], [x, 0], [t(x), q(y)]],
      [[q(x), q(y)], [q(x), t(y)], [t(x), q(y)], [t(x), t(y)], [h(x), 0]],
      [[0, y], [h(x), h(y)], [x, y], [q(x), t(y)], [t(x), t(y)]],
      [[h(x), 0], [h(x), q(y)], [x, h(y)], [t(x), q(y)], [t(x), h(y)]],
      [[h(x), h(y)], [x, 0], [x, y], [t(x), q(y)], [t(x), t(y)]],
      [[h(x), t(y)], [h(x), y], [x, h(y)], [t(x), t(y)], [t(x), h(y)]],
      [[0, 0], [0, h(y)], [h(x), 0], [h(x), h(y)], [q(x), t(y)]],
      [[0, h(y)], [0, y], [q(x), q(y)], [h(x), h(y)], [h(x), y]],
      [[h(x), 0], [h(x), h(y)], [x, 0], [x, h(y)], [t(x), t(y)]],
      [[h(x), h(y)], [h(x), y], [x, h(y)], [x, y], [t(x), q(y)]],
  ]
  return np.asarray(positives, np.int32), np.asarray(negatives, np.int32)


def region_vectors(features, corners, project):
  """(B, R, D) projections of the 3x3 regions at `corners` (R, 2)."""
  patches = jnp.stack([
      features[:, r:r + 3, c:c + 3, :].reshape(features.shape[0], -1)
      for r, c in np.asarray(corners).reshape(-1, 2)], axis=1)
  return project(patches)


def local_loss(f1, f2, project, temperature):
  """The local loss of two aligned feature maps (B, h, w, C).

  For each image and region r, with s = cos / temperature:
    l = -log( e^{s(z1_r, z2_r)} / (e^{s(z1_r, z2_r)}
                                    + sum_n e^{s(z1_r, z1_n)} + e^{s(z1_r, z2_n)}) )
  and the same from view 2; summed over the two views, averaged over the 13
  regions (as the reference) and over the images (the reference sums them;
  under Adam the two differ only in epsilon's weight).
  """
  positives, negatives = region_table(*f1.shape[1:3])
  z = {}
  for name, f in (("1", f1), ("2", f2)):
    z["p" + name] = losses.l2_normalize(region_vectors(f, positives, project))
    z["n" + name] = losses.l2_normalize(region_vectors(
        f, negatives, project)).reshape(
            f.shape[0], NUM_REGIONS, NUM_NEGATIVES, -1)
  positive = jnp.sum(z["p1"] * z["p2"], -1) / temperature      # (B, 13)

  def one_side(anchor, own, other):
    negative = jnp.concatenate(
        [jnp.einsum("brd,brnd->brn", anchor, own),
         jnp.einsum("brd,brnd->brn", anchor, other)], -1) / temperature
    logits = jnp.concatenate([positive[..., None], negative], -1)
    return jax.nn.logsumexp(logits, -1) - positive

  per_region = (one_side(z["p1"], z["n1"], z["n2"]) +
                one_side(z["p2"], z["n2"], z["n1"]))
  return jnp.mean(jnp.sum(per_region, -1) / NUM_REGIONS)


# ---------------------------------------------------------------------------
# Model. Attribute names are parameter paths: `encoder` and `decoder` are
# the U-Net's, so pretrained weights hand over by path.


class LocalHead(nnx.Module):
  """g_2: 1x1 conv (no bias), norm, ReLU, 1x1 conv (no bias)."""

  def __init__(self, channels: int, norm: str, *,
               dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(channels, channels, (1, 1), use_bias=False,
                          dtype=dtype, rngs=rngs)
    self.norm = encoder_lib.make_norm(channels, norm, dtype=dtype, rngs=rngs)
    self.conv2 = nnx.Conv(channels, channels, (1, 1), use_bias=False,
                          dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = jax.nn.relu(encoder_lib.apply_norm(self.norm, self.conv1(x),
                                           train=train))
    return self.conv2(x)


class LocalContrastModel(nnx.Module):
  """Features for the local loss: (B, h, w, C) maps and the region map."""

  def __init__(
      self,
      in_channels: int,
      widths: Sequence[int],
      norm: str = "batch",
      *,
      blocks: int,
      region_dim: int = 128,
      dtype: jnp.dtype | None = None,
      rngs: nnx.Rngs,
  ):
    self.encoder = encoder_lib.Encoder(in_channels, widths, norm, dtype=dtype,
                                       rngs=rngs)
    self.decoder = unet_lib.Decoder(widths, norm, blocks=blocks, dtype=dtype,
                                    rngs=rngs)
    channels = self.encoder.widths[self.decoder.first]
    self.local_head = LocalHead(channels, norm, dtype=dtype, rngs=rngs)
    self.region = nnx.Linear(9 * channels, region_dim, use_bias=False,
                             dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """g_2 features of the last decoder block built, float32."""
    features = self.decoder(self.encoder(x, train=train), train=train)
    return self.local_head(features, train=train).astype(jnp.float32)


# ---------------------------------------------------------------------------
# The method.


class ChaitanyaLocal(methods.Method):
  """Decoder-stage pretraining with the local loss (module docstring)."""

  name = "chaitanya_local"
  # Encoder (frozen, from the first stage) and the decoder levels it trains.
  transfers = ("encoder", "decoder")
  host_pipeline = "one_view"  # one crop, seen twice (intensity-only views)
  device_crops = False
  contrastive_crop = False

  def __init__(self, config):
    super().__init__(config)
    # Host crops at the configured scale; the views differ in intensity only.
    self.spec = dataclasses.replace(
        self.spec, crop_area=tuple(config.local.crop_area))
    if not config.init.pretrain_dir and "encoder" in config.init.freeze:
      logging.warning(
          "chaitanya_local without config.init.pretrain_dir: the frozen "
          "encoder keeps its random initialisation")

  def host_dataset(self, config, local_batch, boxes=None, crop_alpha=1.0):
    del boxes, crop_alpha  # one crop per image, seen twice
    return super().host_dataset(config, local_batch)

  def make_model(self, rngs):
    model_kwargs = models.model_kwargs(self.config.model)
    return LocalContrastModel(
        **model_kwargs, blocks=self.config.local.blocks,
        region_dim=self.config.local.region_dim, rngs=rngs)

  def device_views(self, key, batch):
    # The same crop twice: intensity-only views keep pixels aligned.
    return list(augment.two_views(key, batch["view1"], batch["view1"],
                                  self.spec))

  def loss(self, model, aux, views, step):
    del step
    view1, view2 = views
    b = view1.shape[0]
    # One forward pass: BatchNorm sees both views, as in the reference's
    # batch of 2 x bt_size.
    features = model(jnp.concatenate([view1, view2]), train=True)
    loss = local_loss(features[:b], features[b:], model.region,
                      self.config.loss.temperature)
    # Equal similarities: each view's term is log(1 + 2 x 5).
    chance = 2 * math.log(1 + 2 * NUM_NEGATIVES)
    return loss, (aux, {"loss_chance": jnp.float32(chance)})
