"""Optimisers and learning-rate schedules built from `config.optim`."""
import optax


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
        decay_steps=max(num_steps, warmup + 1), end_value=0.0)
  if schedule == "constant":
    if not warmup:
      return optax.constant_schedule(base)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, base, warmup), optax.constant_schedule(base)],
        [warmup])
  raise ValueError(f"config.optim.schedule={schedule!r}: expected 'cosine' or "
                   "'constant'")


def make_optimizer(optim_cfg, num_steps, global_batch):
  """Returns (optax transformation, learning-rate schedule)."""
  lr = learning_rate_fn(optim_cfg, num_steps, global_batch)
  name = optim_cfg.name
  wd = optim_cfg.get("weight_decay", 0.0)
  if name == "adam":
    tx = optax.adam(lr)
  elif name == "adamw":
    tx = optax.adamw(lr, weight_decay=wd)
  elif name == "lars":
    tx = optax.lars(lr, weight_decay=wd, momentum=optim_cfg.get("momentum", 0.9))
  elif name == "sgd":
    # torch-style coupled weight decay (added to the gradient), as the PCL /
    # MoCo reference optimisers use.
    tx = optax.chain(optax.add_decayed_weights(wd) if wd else optax.identity(),
                     optax.sgd(lr, momentum=optim_cfg.get("momentum", 0.9)))
  else:
    raise ValueError(f"config.optim.name={name!r}: expected one of adam, adamw, "
                     "lars, sgd")
  clip = optim_cfg.get("grad_clip_norm", 0.0)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx, lr
