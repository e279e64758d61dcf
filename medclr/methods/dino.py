"""DINO (Caron et al. 2021; docs/methods/dino.md): self-distillation.

A student (encoder -> DINO head) matches the sharpened, centred softmax of a
teacher that is an EMA of the student. Values follow facebookresearch/dino
main_dino.py (`DINOLoss`, `DataAugmentationDINO`, `train_one_epoch`) and
vision_transformer.py (`DINOHead`, here below):

* head: MLP in -> 2048 -> 2048 -> 256 (Linear weights N(0, 0.02), biases 0,
  exact GELU, no BatchNorm: `use_bn_in_head` False), L2 normalisation, then a
  weight-normalised bias-free Linear 256 -> K; with `norm_last_layer` its
  scale g is fixed at 1, otherwise learnt;
* loss: teacher probabilities softmax((t - c) / tau_t) of the 2 global crops,
  student log-probabilities log_softmax(s / tau_s) of all 2 + N crops,
  cross-entropy averaged over every (teacher crop i, student crop v) pair
  with v != i; tau_s 0.1; tau_t warms up linearly from 0.04 (np.linspace,
  both ends included) and then stays constant;
* centre c: c <- m c + (1 - m) mean(teacher outputs of the global batch),
  m 0.9, updated after the loss with the old c (`update_center`);
* teacher EMA of every student parameter with momentum rising from 0.996 to
  1 on a cosine (`cosine_scheduler(0.996, 1, ...)`), after the optimizer
  step; teacher and student start equal (`load_state_dict`), the teacher
  runs in training mode (BatchNorm batch statistics, its own running
  averages: the EMA covers parameters, not buffers);
* the last layer gets no gradient during the first `freeze_last_layer`
  epochs (`cancel_gradients_last_layer`), here `freeze_last_layer_steps`;
* multi-crop: global crops at config.data.image_size, local crops at
  `config.multicrop.local_size`; the student sees crops of one size in one
  forward pass (`MultiCropWrapper`), the teacher only the global crops.
  Device augmentation (`DataAugmentationDINO`): flip, ColorJitter(0.4, 0.4,
  0.2, 0.1) p 0.8, grayscale p 0.2; global crop 1 blur p 1.0; global crop 2
  blur p 0.1 and solarize p 0.2; local crops blur p 0.5.

Every reduction is a plain global mean over the batch axis, so BatchNorm, the
loss and the centre see the global batch on any number of devices.
"""
import math

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp

from medclr import errors
from medclr import methods
from medclr import models
from medclr.augment import crop_presets
from medclr.augment import ops as augment
from medclr.data import multicrop
from medclr.methods import ema
from medclr.methods import losses
from medclr.models import encoder as encoder_lib

# Guards the L2 normalisations (torch F.normalize's eps).
_NORM_EPS = 1e-12
# DINO's local crops are 96 px for 224 px global crops (main_dino.py).
LOCAL_TO_GLOBAL = 96 / 224


# DataAugmentationDINO per-view probabilities (jitter, grayscale, blur,
# solarize); brightness is torchvision's multiplicative one.
_VIEW_PROBS = {
    "global_1": dict(jitter_p=0.8, gray_p=0.2, blur_p=1.0, solarize_p=0.0),
    "global_2": dict(jitter_p=0.8, gray_p=0.2, blur_p=0.1, solarize_p=0.2),
    "local": dict(jitter_p=0.8, gray_p=0.2, blur_p=0.5, solarize_p=0.0),
}


def default_local_size(image_size, levels):
  """image_size * 96/224, rounded to a multiple of the encoder's 2**(levels-1).

  The U-Net encoder pools levels - 1 times, so its input side must be a
  multiple of 2**(levels - 1).
  """
  multiple = 2 ** (levels - 1)
  return max(multiple,
             int(round(image_size * LOCAL_TO_GLOBAL / multiple)) * multiple)


def _as_tuple(value):
  return tuple(float(v) for v in value)


def resolve_multicrop(multicrop_cfg):
  """The `CropPreset` that `config.multicrop` selects.

  A named preset must agree with the explicit fields (the config files copy
  the preset's values into them), so the saved config always shows what
  ran; 'custom' takes the fields as they are.

  Raises:
    errors.ConfigError: unknown preset, or fields that contradict it.
  """
  name = multicrop_cfg.preset
  fields = crop_presets.CropPreset(_as_tuple(multicrop_cfg.global_scale),
                                   _as_tuple(multicrop_cfg.local_scale),
                                   _as_tuple(multicrop_cfg.jitter))
  if name == "custom":
    return fields
  if name not in crop_presets.CROP_PRESETS:
    raise errors.ConfigError(
        f"config.multicrop.preset={name!r}: expected one of "
        f"{sorted(crop_presets.CROP_PRESETS) + ['custom']}")
  preset = crop_presets.CROP_PRESETS[name]
  for field in ("global_scale", "local_scale", "jitter"):
    want, got = getattr(preset, field), getattr(fields, field)
    if not all(math.isclose(a, b) for a, b in zip(want, got)) or len(
        want) != len(got):
      raise errors.ConfigError(
          f"config.multicrop.{field}={got} but multi-crop preset {name!r} "
          f"uses {want}: set config.multicrop.preset='custom' to run the "
          f"explicit fields, or choose the preset with "
          f"configs/pretrain_dino.py:multicrop={name} (which fills the "
          f"fields)")
  return preset


def view_specs(augment_cfg, crop_preset):
  """(global 1, global 2, local) `AugmentSpec`s: DINO's intensity per view.

  Flips, rotations and the crop aspect ratio come from the base preset
  (`config.augment.preset`), the jitter strengths from the crop preset.
  """
  base = augment.get_spec(augment_cfg.preset, augment_cfg.strength)
  return tuple(
      augment.with_intensity(base, augment_cfg.strength, f"dino_{view}",
                             jitter=crop_preset.jitter,
                             brightness_mode="multiply", **probs)
      for view, probs in _VIEW_PROBS.items())


def teacher_temperature(step, warmup_temp, temp, warmup_steps):
  """np.linspace(warmup_temp, temp, warmup_steps)[step], then `temp`."""
  step = jnp.asarray(step, jnp.float32)
  ramp = warmup_temp + (temp - warmup_temp) * step / max(warmup_steps - 1, 1)
  return jnp.where(step < warmup_steps, ramp, temp)


def dino_loss(student, teacher, center, student_temp, teacher_temp):
  """DINOLoss on logits grouped per image.

  Args:
    student: (B, V, K) student logits of the V = 2 + N crops, the 2 global
      crops first.
    teacher: (B, 2, K) teacher logits of the 2 global crops.
    center: (1, K) centre subtracted from the teacher logits.
    student_temp: tau_s.
    teacher_temp: tau_t (scalar, may be traced).

  Returns:
    (loss, teacher probabilities (B, 2, K)); the loss is the mean over the
    2 (V - 1) pairs (i, v != i) of the batch-mean cross-entropy.
  """
  num_views = student.shape[1]
  probs = jax.lax.stop_gradient(
      jax.nn.softmax((teacher - center) / teacher_temp, axis=-1))
  log_probs = jax.nn.log_softmax(student / student_temp, axis=-1)
  cross_entropy = -jnp.einsum("bik,bvk->biv", probs, log_probs)
  pair_means = jnp.mean(cross_entropy, axis=0)  # (2, V)
  other_view = jnp.arange(2)[:, None] != jnp.arange(num_views)[None, :]
  loss = jnp.sum(jnp.where(other_view, pair_means, 0.0)) / jnp.sum(other_view)
  return loss, probs


def updated_center(center, teacher, momentum):
  """m c + (1 - m) mean over the global batch and both global crops."""
  batch_center = jnp.mean(teacher, axis=(0, 1))[None, :]
  return center * momentum + batch_center * (1.0 - momentum)


def _group(x, batch):
  """(batch * n, ...) in image-major order -> (batch, n, ...)."""
  return x.reshape((batch, x.shape[0] // batch) + x.shape[1:])


def _flatten(x):
  """(batch, n, ...) -> (batch * n, ...), keeping each image's rows together."""
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


# ---------------------------------------------------------------------------
# Model. Attribute names are parameter paths: `encoder` is the U-Net's, so
# pretrained weights hand over by path.


class WeightNormLinear(nnx.Module):
  """torch weight_norm(Linear(in, out, bias=False)): w = g v / |v|.

  The norm runs over the input dimension, one per output unit (torch's
  dim=0 of its (out, in) weight). Without `learn_scale`, g is the constant 1
  (DINO's `norm_last_layer`, where weight_g has requires_grad False).
  """

  def __init__(self, in_dim, out_dim, *, learn_scale, dtype=None, rngs):
    self.direction = nnx.Param(nnx.initializers.lecun_normal()(
        rngs.params(), (in_dim, out_dim), jnp.float32))
    self.scale = (nnx.Param(jnp.ones((out_dim,), jnp.float32))
                  if learn_scale else None)
    self.dtype = dtype

  def __call__(self, x, frozen=None):
    """x @ w; `frozen` (traced bool) blocks the gradient to v and g."""
    v = self.direction[...]
    g = None if self.scale is None else self.scale[...]
    if frozen is not None:
      v = jnp.where(frozen, jax.lax.stop_gradient(v), v)
      if g is not None:
        g = jnp.where(frozen, jax.lax.stop_gradient(g), g)
    w = v / jnp.maximum(jnp.linalg.norm(v, axis=0, keepdims=True), _NORM_EPS)
    if g is not None:
      w = w * g
    dtype = self.dtype or x.dtype
    return x.astype(dtype) @ w.astype(dtype)


class DINOHead(nnx.Module):
  """MLP -> L2 normalise -> weight-normalised last layer (DINO's head)."""

  def __init__(self, in_dim, out_dim, *, hidden_dim, bottleneck_dim,
               num_layers, norm_last_layer, use_bn=False, dtype=None, rngs):
    if num_layers < 1:
      raise errors.ConfigError(
          f"config.head.num_layers={num_layers}: must be >= 1")
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
    self.num_layers = num_layers
    self.use_bn = use_bn
    # DINOHead._init_weights: trunc_normal_(std=.02) cuts at +-2 in absolute
    # value, i.e. at 100 std, so it is a plain N(0, 0.02); biases 0.
    for index in range(num_layers):
      # Named attributes, not a list: Orbax stores list indices as strings.
      setattr(self, f"layer{index}", nnx.Linear(
          dims[index], dims[index + 1], dtype=dtype, rngs=rngs,
          kernel_init=nnx.initializers.normal(0.02)))
      # DINOHead(use_bn=True): BatchNorm1d after every hidden Linear.
      if use_bn and index < num_layers - 1:
        setattr(self, f"norm{index}", encoder_lib.make_norm(
            dims[index + 1], "batch", dtype=dtype, rngs=rngs))
    self.last_layer = WeightNormLinear(
        bottleneck_dim, out_dim, learn_scale=not norm_last_layer, dtype=dtype,
        rngs=rngs)

  def __call__(self, h, freeze_last_layer=None, *, train=True):
    x = h
    for index in range(self.num_layers):
      x = getattr(self, f"layer{index}")(x)
      if index < self.num_layers - 1:
        if self.use_bn:
          x = encoder_lib.apply_norm(getattr(self, f"norm{index}"), x,
                                     train=train)
        # torch nn.GELU() is the exact (erf) GELU.
        x = nnx.gelu(x, approximate=False)
    x = x.astype(jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _NORM_EPS)
    return self.last_layer(x, frozen=freeze_last_layer)


class DINOModel(nnx.Module):
  """Encoder -> global average pool -> `DINOHead` (student and teacher)."""

  def __init__(self, model_kwargs, head_kwargs, *, rngs):
    self.encoder = encoder_lib.Encoder(**model_kwargs, rngs=rngs)
    self.head = DINOHead(self.encoder.widths[-1], **head_kwargs,
                         dtype=model_kwargs.get("dtype"), rngs=rngs)

  def __call__(self, x, *, train, freeze_last_layer=None):
    """(logits (batch, out_dim), pooled features (batch, widths[-1])), f32."""
    deepest = self.encoder(x, train=train)[-1]
    h = jnp.mean(deepest.astype(jnp.float32), axis=(1, 2))
    logits = self.head(h, freeze_last_layer, train=train)
    return logits.astype(jnp.float32), h


# ---------------------------------------------------------------------------
# The method.


class DINO(methods.Method):
  """Student/teacher self-distillation with multi-crop (see module doc)."""

  name = "dino"
  host_pipeline = "multicrop"  # its own host crops
  device_crops = False
  contrastive_crop = False

  def __init__(self, config):
    super().__init__(config)
    self.crop_preset = resolve_multicrop(config.multicrop)
    self.global_spec, self.global2_spec, self.local_spec = view_specs(
        config.augment, self.crop_preset)
    self.model_kwargs = models.model_kwargs(config.model)
    levels = len(self.model_kwargs["widths"])
    self.num_local = int(config.multicrop.num_local)
    if self.num_local < 0:
      raise errors.ConfigError(
          f"config.multicrop.num_local={self.num_local}: must be >= 0")
    self.local_size = int(config.multicrop.local_size) or default_local_size(
        config.data.image_size, levels)
    multiple = 2 ** (levels - 1)
    if self.local_size % multiple:
      raise errors.ConfigError(
          f"config.multicrop.local_size={self.local_size} must be a multiple "
          f"of 2**{levels - 1}={multiple} for a {levels}-level encoder (0 "
          f"picks image_size * 96/224 rounded to one)")
    head = config.head
    self.head_kwargs = dict(
        out_dim=int(head.out_dim), hidden_dim=int(head.hidden_dim),
        bottleneck_dim=int(head.bottleneck_dim),
        num_layers=int(head.num_layers),
        norm_last_layer=bool(head.norm_last_layer),
        use_bn=bool(head.use_bn))
    self.freeze_last_layer_steps = int(head.freeze_last_layer_steps)
    loss = config.loss
    self.student_temp = float(loss.student_temp)
    self.teacher_temp = float(loss.teacher_temp)
    self.warmup_teacher_temp = float(loss.warmup_teacher_temp)
    self.warmup_teacher_temp_steps = int(loss.warmup_teacher_temp_steps)
    self.center_momentum = float(loss.center_momentum)
    for field in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
      if getattr(self, field) <= 0:
        raise errors.ConfigError(
            f"config.loss.{field}={getattr(self, field)}: must be > 0")
    self.base_momentum = float(config.ema.base_momentum)
    if not 0.0 <= self.base_momentum <= 1.0:
      raise errors.ConfigError(
          f"config.ema.base_momentum={self.base_momentum}: must be in [0, 1]")
    self.total_steps = int(config.num_steps)
    # The teacher is the student's architecture.
    self.teacher_graphdef = nnx.graphdef(
        nnx.eval_shape(lambda: self.make_model(nnx.Rngs(0))))
    logging.info("DINO multi-crop %r: global %s scale %s, %d local %s "
                 "scale %s, jitter %s", config.multicrop.preset,
                 config.data.image_size, self.crop_preset.global_scale,
                 self.num_local, self.local_size, self.crop_preset.local_scale,
                 self.crop_preset.jitter)

  def host_dataset(self, config, local_batch, boxes=None, crop_alpha=1.0):
    del boxes, crop_alpha  # contrastive_crop is False: never given
    return multicrop.multicrop_dataset(
        config.data.data_dir, config.data.sources,
        global_size=config.data.image_size, local_size=self.local_size,
        num_local=self.num_local, in_channels=config.data.in_channels,
        global_scale=self.crop_preset.global_scale,
        local_scale=self.crop_preset.local_scale,
        aspect=self.spec.crop_aspect, local_batch=local_batch,
        seed=config.seed, process_index=jax.process_index(),
        process_count=jax.process_count(),
        worker_count=config.data.worker_count,
        preprocess=methods.pretrain_preprocess(config))

  def make_model(self, rngs):
    return DINOModel(self.model_kwargs, self.head_kwargs, rngs=rngs)

  def init_aux(self, params, batch_stats):
    # Teacher = student at the start (main_dino.py load_state_dict).
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    return {"teacher_params": copy(params), "teacher_stats": copy(batch_stats),
            "center": jnp.zeros((1, self.head_kwargs["out_dim"]), jnp.float32)}

  def device_views(self, key, batch):
    """[global 1, global 2, (B * N) local crops image-major] (or 2 views)."""
    keys = jax.random.split(key, 3)
    views = [augment.sharded_augment(keys[0], batch["global_0"],
                                     self.global_spec),
             augment.sharded_augment(keys[1], batch["global_1"],
                                     self.global2_spec)]
    if self.num_local:
      # One call for all local crops: crop j of image i has global index
      # i * N + j, so keys do not depend on the device count.
      local = _flatten(jnp.stack(
          [batch[k] for k in multicrop.local_keys(self.num_local)], axis=1))
      views.append(augment.sharded_augment(keys[2], local, self.local_spec))
    return views

  def loss(self, model, aux, views, step):
    batch = views[0].shape[0]
    global_views = _flatten(jnp.stack(views[:2], axis=1))  # (2B, ...)
    frozen = step < self.freeze_last_layer_steps
    student_global, _ = model(global_views, train=True,
                              freeze_last_layer=frozen)
    student = [_group(student_global, batch)]
    if self.num_local:
      student_local, _ = model(views[2], train=True, freeze_last_layer=frozen)
      student.append(_group(student_local, batch))
    student = jnp.concatenate(student, axis=1)  # (B, 2 + N, K)

    teacher_model = nnx.merge(self.teacher_graphdef, aux["teacher_params"],
                              aux["teacher_stats"])
    teacher_global, _ = teacher_model(global_views, train=True)
    teacher = jax.lax.stop_gradient(_group(teacher_global, batch))

    temp = teacher_temperature(step, self.warmup_teacher_temp,
                               self.teacher_temp,
                               self.warmup_teacher_temp_steps)
    loss, probs = dino_loss(student, teacher, aux["center"],
                            self.student_temp, temp)
    center = updated_center(aux["center"], teacher, self.center_momentum)
    aux = dict(aux, center=center, teacher_stats=nnx.to_pure_dict(
        nnx.state(teacher_model, nnx.BatchStat)))
    entropy = -jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-30)), axis=-1)
    metrics = {
        "embedding_std": losses.embedding_std(student_global),
        "teacher_entropy": jnp.mean(entropy),
        "entropy_max": math.log(probs.shape[-1]),  # uniform teacher: ln K
        "center_norm": jnp.linalg.norm(center),
        "teacher_temp": temp,
        "ema_momentum": self.momentum(step),
    }
    return loss, (aux, metrics)

  def momentum(self, step):
    return ema.cosine_momentum(step, self.base_momentum, self.total_steps)

  def update_aux(self, aux, params, batch_stats, step):
    del batch_stats  # the teacher keeps its own BatchNorm statistics
    return dict(aux, teacher_params=ema.ema_update(
        aux["teacher_params"], params, self.momentum(step)))
