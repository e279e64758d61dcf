"""Jittable train/eval steps: pure functions of (state, batch); no I/O.

The train state is a plain dict of pytrees, so that jit, donation and Orbax all
see ordinary arrays:
  {'step': int32 scalar, 'params': {...}, 'batch_stats': {...},
   'opt_state': ..., 'aux': {...} (pretraining: the method's extra state)}
`params` / `batch_stats` are `nnx.to_pure_dict` trees of the model; the model
is rebuilt inside the step with `nnx.merge(graphdef, params, batch_stats)`.
Randomness is `fold_in(base_key, step)`, so a resumed run draws the same
augmentations as an uninterrupted one without storing a key.
"""
from flax import nnx
import jax
import jax.numpy as jnp
import optax

from medclr.augment import crops as device_crops
from medclr.augment import ops as augment
from medclr.data import normalize
from medclr.methods import ema
from medclr.methods import losses


def init_state(params, batch_stats, tx, aux=None):
  """A fresh train state at step 0 (`aux`: a method's extra state)."""
  state = {"step": jnp.zeros((), jnp.int32), "params": params,
           "batch_stats": batch_stats, "opt_state": tx.init(params)}
  if aux is not None:
    state["aux"] = aux
  return state


def apply_update(state, grads, batch_stats, tx):
  """The optimizer step: new params, optimizer state and BatchNorm stats."""
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  return dict(state, step=state["step"] + 1,
              params=optax.apply_updates(state["params"], updates),
              batch_stats=batch_stats, opt_state=opt_state)


def normalize_views(views, norm):
  """Applies per-image normalisation `norm` (B, 2, C) to every image view.

  Views are the float (B * r, H, W, C) arrays a method's `device_views`
  returns (image-major when r > 1); other leaves (labels) pass through.
  """
  if norm is None:
    return views

  def one(leaf):
    is_image = (jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.ndim == 4
                and leaf.shape[-1] == norm.shape[-1]
                and leaf.shape[0] % norm.shape[0] == 0)
    return normalize.apply(leaf, norm) if is_image else leaf

  return jax.tree.map(one, views)


# fold_in tag of the device crops' keys, apart from `device_views`' stream.
_CROP_STREAM = 0x63726F70  # "crop"


def make_pretrain_step(graphdef, tx, lr_fn, method, seed, *, frozen=(),
                       freeze_steps=0):
  """One pretraining step for any `methods.Method`.

  Args:
    graphdef: graph of the method's online model.
    tx: optax transformation.
    lr_fn: schedule, logged as `lr`.
    method: the `methods.Method` (views, loss, auxiliary state updates).
    seed: base seed of the augmentation randomness.
    frozen, freeze_steps: parts that get no update (`freeze_gradients`),
      e.g. the encoder in Chaitanya et al.'s decoder stage.

  Returns:
    step(state, batch) -> (state, metrics); jit it with `donate_argnums=0`:
    the old state's buffers are reused for the new one.
  """
  base_key = jax.random.key(seed)

  def step(state, batch):
    key = jax.random.fold_in(base_key, state["step"])
    # data.crop_site='device': the host sent whole images.
    if "extent" in batch:
      batch = device_crops.two_crops(jax.random.fold_in(key, _CROP_STREAM),
                                     batch, method.crop_spec())
    views = normalize_views(method.device_views(key, batch), batch.get("norm"))

    def loss_fn(params, batch_stats):
      model = nnx.merge(graphdef, params, batch_stats)
      loss, (aux, metrics) = method.loss(model, state["aux"], views,
                                         state["step"])
      new_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
      return loss, (new_stats, aux, metrics)

    (loss, (batch_stats, aux, metrics)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state["params"], state["batch_stats"])
    metrics = dict(metrics, loss=loss, lr=lr_fn(state["step"]),
                   grad_norm=optax.tree.norm(grads))
    grads = freeze_gradients(grads, frozen, state["step"], freeze_steps)
    new_state = apply_update(state, grads, batch_stats, tx)
    new_state["aux"] = method.update_aux(aux, new_state["params"],
                                         new_state["batch_stats"],
                                         state["step"])
    return new_state, metrics

  return step


def finetune_inputs(key, batch, spec):
  """(image, mask, weight) the U-Net trains on: augmented, then normalised."""
  image, mask, weight = augment.sharded_augment_segmentation(
      key, batch["image"], batch["mask"], batch["weight"], spec)
  if "norm" in batch:
    image = normalize.apply(image, batch["norm"])
  return image, mask, weight


def freeze_gradients(grads, parts, step, freeze_steps):
  """`grads` with the top-level `parts` zeroed while step < freeze_steps
  (freeze_steps -1: the whole run).

  Zero gradients leave Adam's moments at zero, so a frozen part does not
  move (without decoupled weight decay) and starts with fresh moments.
  """
  if not parts or freeze_steps == 0:
    return grads
  frozen = (jnp.asarray(True) if freeze_steps < 0 else
            jnp.asarray(step) < freeze_steps)
  return {name: jax.tree.map(lambda g: jnp.where(frozen, 0.0, g).astype(
              g.dtype), tree) if name in parts else tree
          for name, tree in grads.items()}


def make_finetune_step(graphdef, tx, lr_fn, spec, seed, *, dice_weight=1.0,
                       ema_decay=0.0, frozen=(), freeze_steps=0):
  """Supervised U-Net step: joint image/mask augmentation, seg loss
  (BCE + `dice_weight` x soft Dice).

  With `ema_decay` > 0 the state's `aux['ema_params']` holds an exponential
  moving average of the parameters, the weights evaluation uses. The U-Net
  parts named in `frozen` get no update for the first `freeze_steps` steps.

  Returns step(state, batch) -> (state, metrics); jit with donate_argnums=0.
  """
  base_key = jax.random.key(seed)

  def step(state, batch):
    key = jax.random.fold_in(base_key, state["step"])
    image, mask, weight = finetune_inputs(key, batch, spec)

    def loss_fn(params, batch_stats):
      model = nnx.merge(graphdef, params, batch_stats)
      logits = model(image, train=True)
      loss = losses.segmentation_loss(logits, mask, weight, dice_weight)
      return loss, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

    (loss, batch_stats), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state["params"], state["batch_stats"])
    metrics = {"loss": loss, "lr": lr_fn(state["step"]),
               "grad_norm": optax.tree.norm(grads)}
    grads = freeze_gradients(grads, frozen, state["step"], freeze_steps)
    new_state = apply_update(state, grads, batch_stats, tx)
    if ema_decay > 0:
      momentum = ema.warmup_momentum(state["step"], ema_decay)
      new_state["aux"] = {"ema_params": ema.ema_update(
          state["aux"]["ema_params"], new_state["params"], momentum)}
    return new_state, metrics

  return step

