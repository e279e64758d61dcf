"""MACL / JCL (Zeng et al.): one-stage encoder + partial-decoder pretraining.

Per example four views: I1 (the crop as is, full resolution), I2 (the same
crop downscaled by `macl.scale`), V1 and V2 (spatially augmented crops, V2
downscaled). The auxiliary branch encodes the full-resolution views, the
dominant branch the downscaled ones through the encoder and the deepest
decoder levels, so both end at the same spatial size. Loss:

  L_g (image level: SupCon of target_instance(V1) vs online_instance(V2))
  + 0.5 L_d (the same SupCon at every location of target_pixel(I1) vs the
             dominant decoder features of I2)
  + 1.0 L_ER (L1 between I2's bottleneck and I1's, downscaled),

positives from slice positions (PCL threshold) on volume sets, or only the
other view ('gr') on 2D sets. Method page: docs/methods/macl.md.

The model (the reference's network/unet2d.py): one `encoder` (the U-Net's,
by path) serves both branches; the dominant branch adds the deepest
`blocks` levels of the U-Net `decoder` (2 in the reference). `target_pixel`
(two 3x3 convolutions with norm and leaky ReLU) projects full-resolution
bottleneck features for the pixel-level loss; `target_instance` and
`online_instance` (global average pool, dense, ReLU, dense) give the
image-level projections.
"""
from collections.abc import Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from medclr import methods
from medclr import models
from medclr.augment import ops as augment
from medclr.methods import losses
from medclr.methods import volume_supcon
from medclr.models import encoder as encoder_lib
from medclr.models import unet as unet_lib


# ---------------------------------------------------------------------------
# Model. Attribute names are parameter paths: `encoder` and `decoder` are
# the U-Net's, so pretrained weights hand over by path.


class PixelProjector(nnx.Module):
  """3x3 conv, norm, leaky ReLU, twice (the reference's
  target_pixel_projector)."""

  def __init__(self, in_features: int, out_features: int, norm: str, *,
               dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(in_features, out_features, (3, 3), dtype=dtype,
                          rngs=rngs)
    self.norm1 = encoder_lib.make_norm(out_features, norm, dtype=dtype,
                                       rngs=rngs)
    self.conv2 = nnx.Conv(out_features, out_features, (3, 3), dtype=dtype,
                          rngs=rngs)
    self.norm2 = encoder_lib.make_norm(out_features, norm, dtype=dtype,
                                       rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = encoder_lib.apply_norm(self.norm1, self.conv1(x), train=train)
    x = encoder_lib.apply_norm(self.norm2, self.conv2(jax.nn.leaky_relu(x)),
                               train=train)
    return jax.nn.leaky_relu(x)


class InstanceProjector(nnx.Module):
  """Global average pool, dense, ReLU, dense."""

  def __init__(self, in_features: int, hidden: int, out: int, *,
               dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(in_features, hidden, dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(hidden, out, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(jax.nn.relu(self.hidden(x.mean(axis=(1, 2)))))


class MACLModel(nnx.Module):
  """Shared encoder, partial decoder and the three projectors."""

  def __init__(self, in_channels: int, widths: Sequence[int],
               norm: str = "batch", *, blocks: int = 2, out_dim: int = 128,
               dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    self.encoder = encoder_lib.Encoder(in_channels, widths, norm, dtype=dtype,
                                       rngs=rngs)
    self.decoder = unet_lib.Decoder(widths, norm, blocks=blocks, dtype=dtype,
                                    rngs=rngs)
    deep = self.encoder.widths[-1]
    shallow = self.encoder.widths[self.decoder.first]
    hidden = 4 * self.encoder.widths[0]
    self.target_pixel = PixelProjector(deep, shallow, norm, dtype=dtype,
                                       rngs=rngs)
    self.target_instance = InstanceProjector(deep, hidden, out_dim,
                                             dtype=dtype, rngs=rngs)
    self.online_instance = InstanceProjector(shallow, hidden, out_dim,
                                             dtype=dtype, rngs=rngs)

  def auxiliary(self, x: jax.Array, *, train: bool):
    """Full-resolution branch: (bottleneck, its pixel projection)."""
    bottleneck = self.encoder(x, train=train)[-1]
    return bottleneck, self.target_pixel(bottleneck, train=train)

  def dominant(self, x: jax.Array, *, train: bool):
    """Downscaled branch: (bottleneck, partial-decoder features)."""
    features = self.encoder(x, train=train)
    return features[-1], self.decoder(features, train=train)


# ---------------------------------------------------------------------------
# Loss.


def downscale(x, scale):
  """Bilinear resize of (B, H, W, C) by `scale` (no antialiasing, as the
  reference's F.interpolate)."""
  b, h, w, c = x.shape
  size = (b, int(round(h * scale)), int(round(w * scale)), c)
  return jax.image.resize(x, size, "linear", antialias=False)


def pixel_supcon(p1, p2, labels, spec):
  """Mean over locations of the SupCon loss between p1[:, s] and p2[:, s]
  ((N, h, w, D) maps), each location a batch of N images."""
  n, h, w, d = p1.shape
  a, b = p1.reshape(n, h * w, d), p2.reshape(n, h * w, d)
  per_location, _ = jax.vmap(
      lambda x, y: volume_supcon.volume_supcon(x, y, labels, spec),
      in_axes=(1, 1))(a, b)
  return jnp.mean(per_location)


def macl_loss(model, views, labels, spec, weights, scale, train=True):
  """(total loss, parts) for the four views (module docstring)."""
  i1, i2, v1, v2 = views
  x1, pix1 = model.auxiliary(i1, train=train)
  x2, pix2 = model.dominant(i2, train=train)
  x3, _ = model.auxiliary(v1, train=train)
  _, dec4 = model.dominant(v2, train=train)
  inst1 = model.target_instance(x3)
  inst2 = model.online_instance(dec4)
  global_loss, _ = volume_supcon.volume_supcon(inst1, inst2, labels, spec)
  pixel_loss = pixel_supcon(pix1, pix2, labels, spec)
  er_loss = jnp.mean(jnp.abs(downscale(x1, scale) - x2))
  total = (weights[0] * global_loss + weights[1] * pixel_loss +
           weights[2] * er_loss)
  return total, {"global_loss": global_loss, "pixel_loss": pixel_loss,
                 "er_loss": er_loss, "embedding_std":
                     losses.embedding_std(inst1)}


class MACL(volume_supcon.VolumeSupCon):
  """The four views, the two branches and the three losses, on a 2D pool
  (`config.macl.volumes` False; `VolumeMACL` reads volumes)."""

  name = "macl"
  # The encoder and the decoder levels of the dominant branch.
  transfers = ("encoder", "decoder")
  # 2D MACL reads the shared two-view pipeline; volumes have their own.
  host_pipeline = "two_views"
  device_crops = True
  contrastive_crop = False

  @classmethod
  def for_config(cls, config):
    return VolumeMACL if config.macl.volumes else cls

  def prepare_data(self, config):
    methods.Method.prepare_data(self, config)

  def host_dataset(self, config, local_batch, boxes=None, crop_alpha=1.0):
    return methods.Method.host_dataset(self, config, local_batch)

  def labels(self, batch):
    """No positions on 2D images: 'gr' positives use neither label."""
    zeros = jnp.zeros(batch["view1"].shape[:1], jnp.int32)
    return {"partition": zeros, "position": zeros.astype(jnp.float32)}

  def make_model(self, rngs):
    return MACLModel(
        **models.model_kwargs(self.config.model),
        blocks=self.config.macl.blocks, out_dim=self.config.macl.out_dim,
        rngs=rngs)

  def device_views(self, key, batch):
    scale = self.config.macl.scale
    view1, view2 = batch["view1"], batch["view2"]
    v1, v2 = augment.two_views(key, view1, view2, self.spec)
    return ((view1, downscale(view1, scale), v1, downscale(v2, scale)),
            self.labels(batch))

  def loss(self, model, aux, views, step):
    del step
    images, labels = views
    c = self.config.macl
    loss, parts = macl_loss(model, images, labels, self.loss_spec,
                            (c.global_weight, c.pixel_weight, c.er_weight),
                            c.scale)
    return loss, (aux, parts)


class VolumeMACL(MACL):
  """MACL on a volume set (`config.macl.volumes`): PCL's volume pipeline and
  its slice-position positives."""

  host_pipeline = "volumes"
  device_crops = False
  prepare_data = volume_supcon.VolumeSupCon.prepare_data
  host_dataset = volume_supcon.VolumeSupCon.host_dataset

  def labels(self, batch):
    return {k: batch[k] for k in ("partition", "position")}
