"""Exponential moving averages of parameters and their momentum schedule.

Shared by the methods with a slow-moving copy of the network: BYOL's target,
DINO's teacher, fine-tuning's evaluation weights (MoCo and AdCo keep their
own key-encoder update).
"""
import math

import jax
import jax.numpy as jnp


def cosine_momentum(step, base, total_steps):
  """EMA momentum rising from `base` at step 0 to 1 at `total_steps`.

  1 - (1 - base) (cos(pi k / K) + 1) / 2 with k clipped to K: deepmind byol
  `schedules.target_ema`, and DINO's `cosine_scheduler(base, 1, ...)` whose
  k runs over the K = epochs x iterations training steps.
  """
  k = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps)
  decay = 0.5 * (1.0 + jnp.cos(math.pi * k / total_steps))
  return 1.0 - (1.0 - base) * decay


def warmup_momentum(step, decay):
  """EMA momentum after update `step` (0-based) for a fixed `decay`.

  min(decay, (1 + t) / (10 + t)): early on the average follows the weights
  closely instead of remembering the random initialisation (the warm-up of
  TensorFlow's `ExponentialMovingAverage(num_updates=...)`).
  """
  t = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def ema_update(target, online, momentum):
  """target + (1 - m) (online - target), leaf by leaf (BYOL's form)."""
  return jax.tree.map(lambda t, o: t + (1.0 - momentum) * (o - t), target,
                      online)
