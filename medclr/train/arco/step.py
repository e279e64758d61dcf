"""ARCO-style semi-supervised fine-tuning step (jittable, no I/O).

Each batch holds labelled patches and as many unlabelled patches. An EMA
teacher labels the unlabelled patches; the student is trained on

  L_sup + ramp(t) (unsup_weight L_unsup + contrast_weight L_contrast),

L_sup the fine-tuning loss on labelled patches, L_unsup the pseudo-label
cross-entropy on an intensity-perturbed copy of the unlabelled patches (the
teacher's confident pixels only), L_contrast the pixel contrastive loss of
`pixel_contrast` on ground truth and pseudo-labels. Recipe and differences
from the reference code: docs/methods/arco.md.
"""
import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from medclr.augment import ops as augment
from medclr.data import normalize
from medclr.methods import ema
from medclr.methods import losses
from medclr.train import steps
from medclr.train.arco import loss as pixel_contrast


@dataclasses.dataclass(frozen=True)
class SemiSpec:
  """Static settings of the semi-supervised step (`config.semi`)."""
  teacher_decay: float = 0.99
  confidence: float = 0.9
  unsup_weight: float = 1.0
  contrast_weight: float = 0.01
  temperature: float = 0.5
  num_queries: int = 256
  num_negatives: int = 512
  sampler: str = "sg"
  grid: int = 4
  rampup_steps: int = 0
  strong_preset: str = "chaitanya_local"


def spec_from_config(semi_cfg) -> SemiSpec:
  fields = {f.name for f in dataclasses.fields(SemiSpec)}
  return SemiSpec(**{k: v for k, v in semi_cfg.items() if k in fields})


def rampup(step, rampup_steps):
  """exp(-5 (1 - t)^2), t = step / rampup_steps clipped to 1 (the sigmoid
  ramp-up of mean-teacher code); 1 throughout when rampup_steps is 0."""
  if rampup_steps <= 0:
    return jnp.float32(1.0)
  t = jnp.clip(jnp.asarray(step, jnp.float32) / rampup_steps, 0.0, 1.0)
  return jnp.exp(-5.0 * (1.0 - t) ** 2)


def _unlabeled_views(key, batch, spec, strong):
  """(teacher view, student view, FOV weight) of the unlabelled patches:
  one geometric augmentation, then intensity-only noise for the student."""
  k_geometry, k_strong = jax.random.split(key)
  image = batch["unlabeled_image"]
  weak, _, weight = augment.sharded_augment_segmentation(
      k_geometry, image, jnp.zeros(image.shape[:3], jnp.int32),
      batch["unlabeled_weight"], spec)
  student = augment.sharded_augment(k_strong, weak, strong)
  if "unlabeled_norm" in batch:
    weak = normalize.apply(weak, batch["unlabeled_norm"])
    student = normalize.apply(student, batch["unlabeled_norm"])
  return weak, student, weight


def pseudo_labels(logits, weight, confidence):
  """(labels, confident) from teacher logits (B, H, W, 1): the sigmoid
  thresholded at 0.5, and the FOV pixels whose max(p, 1 - p) >= confidence."""
  prob = jax.nn.sigmoid(logits[..., 0])
  labels = (prob > 0.5).astype(jnp.int32)
  confident = (jnp.maximum(prob, 1.0 - prob) >= confidence) & (weight > 0)
  return labels, confident


def teach(graphdef, state, image, weak, u_weight, confidence):
  """The EMA teacher on labelled and weak unlabelled patches: (pixel
  embeddings of both, pseudo-labels and confident pixels of the latter)."""
  teacher = nnx.merge(graphdef, state["aux"]["teacher"], state["batch_stats"])
  # Batch statistics, as the reference runs its teacher in train mode; the
  # teacher's BatchNorm updates are discarded.
  logits, rep = teacher(jnp.concatenate([image, weak]), train=True,
                        with_representation=True)
  labels, confident = pseudo_labels(logits[image.shape[0]:], u_weight,
                                    confidence)
  return rep, labels, confident


def make_semi_step(graphdef, tx, lr_fn, spec, seed, semi, *, dice_weight=1.0,
                   frozen=(), freeze_steps=0):
  """The semi-supervised step; state['aux']['teacher'] holds the teacher.

  Returns step(state, batch) -> (state, metrics); jit with donate_argnums=0.
  """
  strong = augment.get_spec(semi.strong_preset)
  base_key = jax.random.key(seed)

  def step(state, batch):
    key = jax.random.fold_in(base_key, state["step"])
    k_labeled, k_unlabeled, k_pixels = jax.random.split(key, 3)
    image, mask, weight = steps.finetune_inputs(k_labeled, batch, spec)
    weak, student_view, u_weight = _unlabeled_views(k_unlabeled, batch,
                                                    spec, strong)
    num = image.shape[0]
    t_rep, labels_u, confident = teach(graphdef, state, image, weak, u_weight,
                                       semi.confidence)
    labels = jnp.concatenate([mask, labels_u])
    valid = jnp.concatenate([weight > 0, confident])
    ramp = rampup(state["step"], semi.rampup_steps)

    def loss_fn(params, batch_stats):
      model = nnx.merge(graphdef, params, batch_stats)
      logits, rep = model(jnp.concatenate([image, student_view]), train=True,
                          with_representation=True)
      sup = losses.segmentation_loss(logits[:num], mask, weight, dice_weight)
      unsup = losses.weighted_cross_entropy(
          logits[num:], labels_u, confident.astype(jnp.float32))
      contrast = pixel_contrast.pixel_contrast_loss(
          k_pixels, rep, t_rep, labels, valid, num_classes=2,
          num_queries=semi.num_queries, num_negatives=semi.num_negatives,
          temperature=semi.temperature, sampler=semi.sampler, grid=semi.grid)
      loss = sup + ramp * (semi.unsup_weight * unsup
                           + semi.contrast_weight * contrast)
      parts = {"sup_loss": sup, "unsup_loss": unsup,
               "contrast_loss": contrast}
      return loss, (nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)), parts)

    (loss, (batch_stats, parts)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state["params"], state["batch_stats"])
    u_fov = jnp.maximum(jnp.sum(u_weight > 0), 1)
    metrics = {"loss": loss, "lr": lr_fn(state["step"]),
               "grad_norm": optax.tree.norm(grads), "rampup": ramp,
               "confident_fraction": jnp.sum(confident) / u_fov,
               "pseudo_vessel_fraction":
                   jnp.sum(labels_u * (u_weight > 0)) / u_fov, **parts}
    grads = steps.freeze_gradients(grads, frozen, state["step"], freeze_steps)
    new_state = steps.apply_update(state, grads, batch_stats, tx)
    new_state["aux"] = dict(state["aux"], teacher=ema.ema_update(
        state["aux"]["teacher"], new_state["params"],
        ema.warmup_momentum(state["step"], semi.teacher_decay)))
    return new_state, metrics

  return step
