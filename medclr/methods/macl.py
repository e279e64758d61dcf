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
"""
import jax
import jax.numpy as jnp

from medclr.augment import ops as augment
from medclr.methods import losses
from medclr import methods
from medclr import models
from medclr.methods import volume_supcon
from medclr.models import macl_head


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
  """The four views, the two branches and the three losses."""

  name = "macl"

  def __init__(self, config):
    super().__init__(config)
    self.volumes = bool(config.macl.volumes)
    # 2D MACL reads the shared two-view pipeline; volumes have their own.
    self.device_crops = not self.volumes

  def prepare_data(self, config):
    if self.volumes:
      super().prepare_data(config)
    else:
      methods.Method.prepare_data(self, config)

  def host_dataset(self, config, local_batch, boxes=None, crop_alpha=1.0):
    if self.volumes:
      return super().host_dataset(config, local_batch)
    return methods.Method.host_dataset(self, config, local_batch)

  def make_model(self, rngs):
    return macl_head.MACLModel(
        **models.model_kwargs(self.config.model),
        blocks=self.config.macl.blocks, out_dim=self.config.macl.out_dim,
        rngs=rngs)

  def device_views(self, key, batch):
    scale = self.config.macl.scale
    view1, view2 = batch["view1"], batch["view2"]
    v1, v2 = augment.two_views(key, view1, view2, self.spec)
    if self.volumes:
      labels = {k: batch[k] for k in ("partition", "position")}
    else:  # 2D: no positions; 'gr' positives use neither label
      zeros = jnp.zeros(view1.shape[:1], jnp.int32)
      labels = {"partition": zeros, "position": zeros.astype(jnp.float32)}
    return (view1, downscale(view1, scale), v1, downscale(v2, scale)), labels

  def loss(self, model, aux, views, step):
    del step
    images, labels = views
    c = self.config.macl
    loss, parts = macl_loss(model, images, labels, self.loss_spec,
                            (c.global_weight, c.pixel_weight, c.er_weight),
                            c.scale)
    return loss, (aux, parts)


def make(config):
  return MACL(config)
