"""DiRA (Haghighi et al. 2022): discriminative, restorative, adversarial.

MoCo v2 on the U-Net's encoder (queue, EMA key encoder of the whole model)
plus restoration: the U-Net decoder rebuilds the undistorted first view
from its distorted copy (`medclr.augment.distortions`), judged by mean squared
error
and, from `dira.adversarial_start` on, by a PatchGAN critic trained with
the least-squares loss and its own Adam. Generator loss:

  1 x InfoNCE + 10 x MSE(restored, view) + 0.001 x MSE(D(restored), 1),

critic loss 0.5 [MSE(D(view), 1) + MSE(D(restored), 0)]. The critic's
parameters and optimiser state live in the method's auxiliary state, so
they are checkpointed and restored with everything else. Method page:
docs/methods/dira.md.

The generator, `DiRAModel`, holds `encoder` and `decoder` under the U-Net's
names, so the whole pretrained U-Net body hands over to fine-tuning by
path; `projector` (the MoCo MLP on the pooled bottleneck) and `restore` (a
1x1 convolution with a sigmoid, reconstructing the image) exist only in
pretraining. `PatchCritic` is the reference's discriminator: 3x3
convolutions with stride 2, 2, 2, 1 and 64-512 channels, instance norm
after the first, leaky ReLU 0.2, then a 3x3 convolution to one score per
patch.
"""
from collections.abc import Sequence
import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from medclr import models
from medclr.augment import distortions
from medclr.augment import ops as augment
from medclr.methods import mocov2
from medclr.models import encoder as encoder_lib
from medclr.models import heads
from medclr.models import unet as unet_lib


# ---------------------------------------------------------------------------
# Model. Attribute names are parameter paths: `encoder` and `decoder` are
# the U-Net's, so pretrained weights hand over by path.


class DiRAModel(nnx.Module):
  """U-Net body + MoCo projection + image restoration head."""

  def __init__(self, in_channels: int, widths: Sequence[int],
               norm: str = "batch", hidden_dim: int = 512,
               out_dim: int = 128, *, bounded: bool = True,
               dtype: jnp.dtype | None = None, rngs: nnx.Rngs):
    self.encoder = encoder_lib.Encoder(in_channels, widths, norm, dtype=dtype,
                                       rngs=rngs)
    self.decoder = unet_lib.Decoder(widths, norm, dtype=dtype, rngs=rngs)
    self.projector = heads.ProjectionHead(
        self.encoder.widths[-1], hidden_dim, out_dim, dtype=dtype, rngs=rngs)
    self.restore = nnx.Conv(self.encoder.widths[0], in_channels, (1, 1),
                            dtype=dtype, rngs=rngs)
    # Images in [0, 1] are restored through a sigmoid (the reference);
    # standardised images (config.data.normalize) are unbounded.
    self.bounded = bounded

  def __call__(self, x: jax.Array, *, train: bool):
    """(z projections (B, out_dim), restored images (B, H, W, C)), both
    float32; restorations in [0, 1] when `bounded`."""
    features = self.encoder(x, train=train)
    pooled = jnp.mean(features[-1].astype(jnp.float32), axis=(1, 2))
    z = self.projector(pooled).astype(jnp.float32)
    restored = self.restore(self.decoder(features, train=train)).astype(
        jnp.float32)
    return z, jax.nn.sigmoid(restored) if self.bounded else restored


class PatchCritic(nnx.Module):
  """The reference's discriminator: one score per image patch."""

  CHANNELS = (64, 128, 256, 512)
  STRIDES = (2, 2, 2, 1)

  def __init__(self, in_channels: int, *, rngs: nnx.Rngs):
    previous = in_channels
    for index, (width, stride) in enumerate(zip(self.CHANNELS,
                                                self.STRIDES)):
      setattr(self, f"conv{index}", nnx.Conv(
          previous, width, (3, 3), strides=(stride, stride), rngs=rngs))
      if index:  # InstanceNorm2d (no affine) after all but the first
        setattr(self, f"norm{index}", nnx.GroupNorm(
            width, num_groups=width, use_scale=False, use_bias=False,
            rngs=rngs))
      previous = width
    self.score = nnx.Conv(previous, 1, (3, 3), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for index in range(len(self.CHANNELS)):
      x = getattr(self, f"conv{index}")(x)
      if index:
        x = getattr(self, f"norm{index}")(x)
      x = jax.nn.leaky_relu(x, 0.2)
    return self.score(x).astype(jnp.float32)


# ---------------------------------------------------------------------------
# The method.


def _flip_rows(key, images):
  """Each image mirrored left-right with probability 1/2 (per example)."""
  flips = jax.random.bernoulli(key, 0.5, images.shape[:1])
  return jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)


def critic_loss(critic, real, fake):
  """Least-squares critic loss on real images and (fixed) restorations."""
  return 0.5 * (jnp.mean((critic(real) - 1.0) ** 2) +
                jnp.mean(critic(jax.lax.stop_gradient(fake)) ** 2))


class DiRA(mocov2.MoCoV2):
  """MoCo v2 + restoration + adversarial restoration (module docstring)."""

  name = "dira"
  # The whole U-Net body: the decoder restores the image.
  transfers = ("encoder", "decoder")

  def __init__(self, config):
    super().__init__(config)
    cfg = config.dira
    self.weights = (float(cfg.contrast_weight), float(cfg.restore_weight),
                    float(cfg.adversarial_weight))
    self.adversarial_start = int(cfg.adversarial_start)
    # The reference flips after colour jitter and blur, and restores the
    # crop before them; here the flip comes first so the target is flipped
    # with its input (docs/methods/dira.md).
    self.intensity = dataclasses.replace(self.spec, hflip_p=0.0)
    self.critic_tx = optax.adam(float(cfg.critic_lr), b1=0.5, b2=0.999)
    self.critic_graphdef = nnx.graphdef(self._critic())

  def _critic(self):
    return PatchCritic(int(self.config.model.in_channels),
                                 rngs=nnx.Rngs(self.config.seed + 7))

  def make_model(self, rngs):
    return DiRAModel(
        **models.model_kwargs(self.config.model),
        hidden_dim=int(self.config.head.hidden_dim),
        out_dim=int(self.config.head.out_dim),
        # The target is normalised with the inputs (steps.normalize_views).
        bounded=self.config.data.get("normalize", "none") == "none",
        rngs=rngs)

  def init_aux(self, params, batch_stats):
    critic = nnx.to_pure_dict(nnx.state(self._critic(), nnx.Param))
    return dict(super().init_aux(params, batch_stats), critic=critic,
                critic_opt=self.critic_tx.init(critic))

  def device_views(self, key, batch):
    k_flip, k_views, k_distort1, k_distort2 = jax.random.split(key, 4)
    flipped = [_flip_rows(k, batch[name]) for k, name in zip(
        jax.random.split(k_flip), ("view1", "view2"))]
    view1, view2 = augment.two_views(k_views, *flipped, self.intensity)
    return (distortions.sharded_distort(k_distort1, view1),
            distortions.sharded_distort(k_distort2, view2), flipped[0])

  def loss(self, model, aux, views, step):
    input1, input2, target = views
    adversarial = step >= self.adversarial_start
    q1, restored = model(input1, train=True)
    (k2,), target_stats = self.encode_keys(aux, [input2])
    contrast = mocov2.queue_loss(mocov2.l2_normalize(q1), k2, aux["queue"],
                               self.temperature)
    restore = jnp.mean((restored - target) ** 2)
    # Both stages run the critic and stage 1 zeroes its effect: XLA's CPU
    # backend runs convolutions inside a lax.cond about 60x slower than
    # outside one (benchmarks/cond_conv.py), which made a stage-2 step
    # 20-40x slower than a stage-1 step.
    on = adversarial.astype(jnp.float32)
    fool = on * self._fool_loss(aux["critic"], restored)
    w_c, w_r, w_a = self.weights
    loss = w_c * contrast + w_r * restore + w_a * fool
    stepped = self._critic_step(aux, target, restored)
    critic_params, critic_opt = jax.tree.map(
        lambda new, old: jnp.where(adversarial, new, old), stepped[:2],
        (aux["critic"], aux["critic_opt"]))
    d_loss = on * stepped[2]
    queue, pointer = mocov2.enqueue(aux["queue"], aux["queue_ptr"], k2)
    aux = dict(aux, target_stats=target_stats, queue=queue, queue_ptr=pointer,
               critic=critic_params, critic_opt=critic_opt)
    metrics = {"contrast_loss": contrast, "restore_loss": restore,
               "adversarial_loss": fool, "critic_loss": d_loss}
    return loss, (aux, metrics)

  def _fool_loss(self, critic_params, restored):
    """The generator's least-squares loss against the (fixed) critic."""
    critic = nnx.merge(self.critic_graphdef,
                       jax.lax.stop_gradient(critic_params))
    return jnp.mean((critic(restored) - 1.0) ** 2).astype(jnp.float32)

  def _critic_step(self, aux, real, fake):
    """One Adam step of the critic on this batch (used once adversarial)."""
    def objective(params):
      return critic_loss(nnx.merge(self.critic_graphdef, params), real, fake)
    d_loss, grads = jax.value_and_grad(objective)(aux["critic"])
    updates, opt = self.critic_tx.update(grads, aux["critic_opt"],
                                         aux["critic"])
    return (optax.apply_updates(aux["critic"], updates), opt,
            d_loss.astype(jnp.float32))
