"""ARCO's pixel contrastive loss with class-mean positive keys.

For each class present among the valid pixels, query pixels are drawn with
a `pixel_sampling` sampler; every query's positive key is the mean
representation of its class, its negatives are pixels drawn from the other
classes, and

  l_q = -log( e^{q.k+/t} / (e^{q.k+/t} + sum_k- e^{q.k-/t}) ),

averaged over the queries of a class, then over the classes present. Keys
carry no gradient (they come from the EMA teacher when one is given).
Inputs are gathered to the global batch first, so the value and gradients
do not depend on how the batch is sharded. Provenance and where
this differs from the reference code: docs/methods/arco.md.
"""
import jax
import jax.numpy as jnp

from medclr import sharding
from medclr.methods import losses
from medclr.train.arco import sampling as pixel_sampling


def draw_indices(key, labels, valid, num_classes, num_queries, num_negatives,
                 sampler="sg", grid=4):
  """Query and negative pixel indices for each class.

  Args:
    key: PRNG key.
    labels: (B, H, W) int class of each pixel (ground truth or pseudo-label).
    valid: (B, H, W) bool, pixels that may be drawn.
    num_classes, num_queries, num_negatives: static sizes.
    sampler, grid: see `pixel_sampling.sample_pixels`.

  Returns:
    dict of (num_classes, num_queries) 'queries', (num_classes,
    num_negatives) 'negatives' flat indices, and (num_classes,) bool
    'present' (the class has valid pixels and some other class does too).
  """
  queries, negatives, present = [], [], []
  for c, k in enumerate(jax.random.split(key, num_classes)):
    k_query, k_negative = jax.random.split(k)
    is_class = valid & (labels == c)
    others = valid & (labels != c)
    q, has_q = pixel_sampling.sample_pixels(
        k_query, is_class.astype(jnp.float32), num_queries, method=sampler,
        grid=grid)
    n, has_n = pixel_sampling.sample_pixels(
        k_negative, others.astype(jnp.float32), num_negatives,
        method=sampler, grid=grid)
    queries.append(q)
    negatives.append(n)
    present.append(has_q & has_n)
  return {"queries": jnp.stack(queries), "negatives": jnp.stack(negatives),
          "present": jnp.stack(present)}


def class_means(key_rep, labels, valid, num_classes):
  """(num_classes, D) mean of `key_rep` (B, H, W, D) over each class's
  valid pixels (zeros for an absent class)."""
  flat = key_rep.reshape(-1, key_rep.shape[-1]).astype(jnp.float32)
  one_hot = jax.nn.one_hot(labels.reshape(-1), num_classes) * valid.reshape(
      -1, 1)
  counts = one_hot.sum(0)
  return (one_hot.T @ flat) / jnp.maximum(counts, 1.0)[:, None]


def loss_from_indices(rep, key_rep, labels, valid, indices, temperature):
  """The loss for given draws (`draw_indices`); see the module docstring.

  `rep` (B, H, W, D) gives the queries (with gradient); `key_rep` the keys
  (stop-gradient). Both are L2-normalised here.
  """
  num_classes = indices["queries"].shape[0]
  dim = rep.shape[-1]
  rep = losses.l2_normalize(rep.reshape(-1, dim))
  key_rep = jax.lax.stop_gradient(key_rep)
  positives = losses.l2_normalize(
      class_means(key_rep, labels, valid, num_classes))
  keys = losses.l2_normalize(key_rep.reshape(-1, dim))
  q = rep[indices["queries"]]                        # (C, Q, D)
  negatives = keys[indices["negatives"]]             # (C, N, D)
  positive_logit = jnp.einsum("cqd,cd->cq", q, positives) / temperature
  negative_logits = jnp.einsum("cqd,cnd->cqn", q, negatives) / temperature
  logits = jnp.concatenate([positive_logit[..., None], negative_logits], -1)
  per_query = jax.nn.logsumexp(logits, -1) - positive_logit
  per_class = per_query.mean(-1)
  present = indices["present"].astype(jnp.float32)
  return (per_class * present).sum() / jnp.maximum(present.sum(), 1.0)


def pixel_contrast_loss(key, rep, key_rep, labels, valid, *, num_classes=2,
                        num_queries=256, num_negatives=512, temperature=0.5,
                        sampler="sg", grid=4):
  """Draws pixels and returns the loss (module docstring); 0 when fewer
  than two classes have valid pixels.

  Batch-sharded inputs are gathered first: the draws range over the whole
  global batch, whatever the number of devices.
  """
  rep, key_rep, labels, valid = (sharding.gather_to_replicated(x)
                                 for x in (rep, key_rep, labels, valid))
  indices = draw_indices(key, labels, valid, num_classes, num_queries,
                         num_negatives, sampler, grid)
  return loss_from_indices(rep, key_rep, labels, valid, indices, temperature)
