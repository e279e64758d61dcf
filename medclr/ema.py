"""Exponential moving averages of parameters and their momentum schedule.

Shared by the methods with a slow-moving copy of the network: BYOL's target,
DINO's teacher (MoCo and AdCo keep their own key-encoder update).
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


def ema_update(target, online, momentum):
  """target + (1 - m) (online - target), leaf by leaf (BYOL's form)."""
  return jax.tree.map(lambda t, o: t + (1.0 - momentum) * (o - t), target,
                      online)
