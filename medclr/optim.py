"""Optimisers and learning-rate schedules built from `config.optim`.

Fields: `name` (adam, adamw, lars, sgd), `learning_rate`, `lr_scaling`
('none' or 'linear': x batch/256), `schedule` ('cosine' or 'constant'),
`warmup_steps`, `end_learning_rate` (cosine floor, default 0), `momentum`,
`weight_decay`, `weight_decay_end` (if set, the decay follows a cosine
from `weight_decay` to it over the run, DINO's schedule), `weight_decay_on`
('all', or 'kernels': only parameters with 2 or more dimensions, i.e. no
biases and no norm scales/offsets, which is what BYOL's
`exclude_bias_and_norm` and DINO's `get_params_groups` do; for LARS it also
masks the trust-ratio adaptation), `grad_clip_norm`.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from medclr import errors

WEIGHT_DECAY_ON = ("all", "kernels")


def learning_rate_fn(optim_cfg, num_steps, global_batch):
  """Linear warm-up then cosine decay (or constant) of the base rate.

  `lr_scaling='linear'` multiplies the base rate by batch/256, SimCLR's rule
  (google-research/simclr `learning_rate_scaling`).
  """
  base = optim_cfg.learning_rate
  if optim_cfg.get("lr_scaling", "none") == "linear":
    base = base * global_batch / 256
  warmup = min(int(optim_cfg.get("warmup_steps", 0)), max(num_steps - 1, 0))
  schedule = optim_cfg.get("schedule", "cosine")
  if schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0 if warmup else base, base, warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1),
        end_value=float(optim_cfg.get("end_learning_rate", 0.0)))
  if schedule == "constant":
    if not warmup:
      return optax.constant_schedule(base)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, base, warmup), optax.constant_schedule(base)],
        [warmup])
  raise errors.ConfigError(
      f"config.optim.schedule={schedule!r}: expected 'cosine' or "
      "'constant'")


def schedule_values(lr_fn, num_steps):
  """`lr_fn` at steps 0 .. num_steps - 1: a float32 array on the host.

  Computed on this process's default device, outside any mesh, so every
  process of a multi-host run holds the whole table.
  """
  steps = jnp.arange(num_steps, dtype=jnp.int32)
  return np.asarray(jax.jit(jax.vmap(lr_fn))(steps), np.float32)


def kernels_mask(params):
  """True for parameters with >= 2 dimensions (conv / dense kernels)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def weight_decay_mask(optim_cfg):
  """None (decay everything) or `kernels_mask`, from `weight_decay_on`."""
  on = optim_cfg.get("weight_decay_on", "all")
  if on not in WEIGHT_DECAY_ON:
    raise errors.ConfigError(
        f"config.optim.weight_decay_on={on!r}: expected one of "
        f"{', '.join(WEIGHT_DECAY_ON)}")
  return kernels_mask if on == "kernels" else None


def weight_decay_fn(optim_cfg, num_steps):
  """The weight decay: a constant, or a cosine to `weight_decay_end`.

  DINO's `cosine_scheduler(weight_decay, weight_decay_end)`: end +
  (start - end) (1 + cos(pi t / T)) / 2, i.e. optax's cosine decay from
  `start` with alpha = end / start.
  """
  wd = float(optim_cfg.get("weight_decay", 0.0))
  end = optim_cfg.get("weight_decay_end", None)
  if end is None or not wd:
    return wd
  return optax.cosine_decay_schedule(wd, max(num_steps, 1),
                                     alpha=float(end) / wd)


def make_optimizer(optim_cfg, num_steps, global_batch):
  """Returns (optax transformation, learning-rate schedule)."""
  lr = learning_rate_fn(optim_cfg, num_steps, global_batch)
  return transformation(optim_cfg, num_steps, lr), lr


def transformation(optim_cfg, num_steps, lr):
  """`optim_cfg`'s optax transformation at learning rate `lr`.

  `lr` is a callable of the update count: the schedule, or
  `lambda count: lr` for a rate a jitted step takes as an argument (the
  same optimiser state either way: optax keeps the count for any callable).
  """
  name = optim_cfg.name
  wd = weight_decay_fn(optim_cfg, num_steps)
  mask = weight_decay_mask(optim_cfg)
  if name == "adam":
    tx = optax.adam(lr)
  elif name == "adamw":
    tx = optax.adamw(lr, weight_decay=wd, mask=mask)
  elif name == "lars":
    masks = {} if mask is None else {"weight_decay_mask": mask,
                                     "trust_ratio_mask": mask}
    tx = optax.lars(lr, weight_decay=wd,
                    momentum=optim_cfg.get("momentum", 0.9), **masks)
  elif name == "sgd":
    # torch-style coupled weight decay (added to the gradient), as the PCL /
    # MoCo reference optimisers use.
    decay = (optax.add_decayed_weights(wd, mask=mask) if wd
             else optax.identity())
    tx = optax.chain(decay,
                     optax.sgd(lr, momentum=optim_cfg.get("momentum", 0.9)))
  else:
    raise errors.ConfigError(
        f"config.optim.name={name!r}: expected one of adam, adamw, "
        "lars, sgd")
  clip = optim_cfg.get("grad_clip_norm", 0.0)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx
