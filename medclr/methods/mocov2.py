"""MoCo v2 (Chen et al. 2020): momentum keys and a queue.

Method page: docs/methods/mocov2.md.

The query encoder (online `ContrastiveModel`) is trained with InfoNCE against
the positive key of the other view and K negative keys in a FIFO queue:
  logits = [q . k, q . queue] / t,  loss = CE with the positive at index 0,
with q, k L2-normalised and k from a key encoder that is an exponential moving
average (EMA) of the query encoder (encoder + MLP head):
  theta_k <- m theta_k + (1 - m) theta_q.
After the loss, the keys of the whole global batch are enqueued at the queue
pointer (facebookresearch/moco `moco/builder.py` `_dequeue_and_enqueue`).

State: the key encoder (`target_params`, `target_stats`), the queue and its
pointer live in the train state's `aux`, so they are checkpointed and restored
on resume with everything else.

No shuffle-BN. MoCo shuffles the key batch across GPUs so that a query and its
key never share BatchNorm statistics: otherwise the model could find the
positive by the "signature" of its sub-batch instead of by content. Here the
step runs on one global batch under `jax.jit`, so BatchNorm computes its
statistics over the whole global batch (as SimCLR's `global_bn=True`), which
removes the per-device sub-batch signature that shuffle-BN was built against.
A residual risk remains: all current keys share the current batch's
statistics while the queue holds keys of earlier batches, so the positive is
the only logit computed under the same statistics, and with the small batches
of medical data that signature is stronger than with 256 ImageNet images.
Set `config.model.norm='group'` (GroupNorm normalises each image on its own)
to remove any coupling between the examples of a batch; watch
`embedding_std` and a loss that drops suspiciously fast.

`KeyEncoderMethod` (the EMA key encoder) is shared with AdCo
(`medclr/methods/adco.py`).
"""
import math

from flax import nnx
import jax
import jax.numpy as jnp

from medclr import errors
from medclr import methods
from medclr import models
from medclr import sharding
from medclr.methods import losses

# torch.nn.functional.normalize's eps, as the reference code normalises with it.


# One normalisation everywhere (losses.l2_normalize); re-exported for AdCo.
l2_normalize = losses.l2_normalize
gather_to_replicated = sharding.gather_to_replicated


def queue_loss(q: jax.Array, k: jax.Array, queue: jax.Array,
               temperature: float) -> jax.Array:
  """MoCo InfoNCE: CE over [q . k, q . queue] / t with the positive at 0.

  Written as logsumexp(logits) - positive logit, which is the cross-entropy
  with label 0 and needs no label array (so it works unchanged on global
  arrays sharded over the batch).

  Args:
    q: L2-normalised queries, (N, d).
    k: L2-normalised positive keys, (N, d), no gradient expected.
    queue: L2-normalised negative keys, (K, d).
    temperature: softmax temperature t (MoCo v2: 0.2).

  Returns:
    Scalar float32, the mean over the N queries.
  """
  positive = jnp.sum(q * k, axis=-1) / temperature
  negatives = q @ queue.T / temperature
  logits = jnp.concatenate([positive[:, None], negatives], axis=1)
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive)


def enqueue(queue: jax.Array, pointer: jax.Array,
            keys: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Writes `keys` at `pointer` (FIFO: overwrites the oldest) and advances it.

  Args:
    queue: (K, d); K must be a multiple of the number of keys.
    pointer: int32 scalar, the next row to write.
    keys: (N, d) global keys (all devices' keys, in global batch order).

  Returns:
    (queue, (pointer + N) mod K).
  """
  keys = gather_to_replicated(keys).astype(queue.dtype)
  queue = jax.lax.dynamic_update_slice(queue, keys, (pointer, 0))
  return queue, (pointer + keys.shape[0]) % queue.shape[0]


def ema(target, online, momentum):
  """theta_target <- m * theta_target + (1 - m) * theta_online, leaf-wise."""
  return jax.tree.map(lambda t, o: momentum * t + (1 - momentum) * o, target,
                      online)


class KeyEncoderMethod(methods.Method):
  """Base of MoCo-style methods: an online model and its EMA key encoder.

  The key encoder has the online model's architecture; its parameters and
  BatchNorm statistics are `aux['target_params']` / `aux['target_stats']`.
  Only parameters are averaged: like `_momentum_update_key_encoder` (which
  loops over `parameters()`), the key encoder's BatchNorm running statistics
  are its own, updated by its own forward passes.
  """

  def __init__(self, config, momentum):
    super().__init__(config)
    if not 0.0 <= momentum <= 1.0:
      raise errors.ConfigError(
          f"{self.name}: key-encoder momentum={momentum} must be in [0, 1]")
    self.momentum = momentum
    self.graphdef = nnx.graphdef(
        nnx.eval_shape(lambda: self.make_model(nnx.Rngs(0))))

  def make_model(self, rngs):
    return models.make_contrastive(self.config.model, self.config.head, rngs)

  def init_target(self, params, batch_stats):
    """The key encoder starts as a copy of the query encoder (both refs)."""
    return {"target_params": jax.tree.map(jnp.copy, params),
            "target_stats": jax.tree.map(jnp.copy, batch_stats)}

  def encode_keys(self, aux, images_list):
    """L2-normalised key embeddings of each batch in `images_list`.

    The key encoder runs in train mode (batch statistics), as in the
    reference, and gets no gradient.

    Returns:
      (list of (N, d) keys, the key encoder's updated BatchNorm statistics).
    """
    target = nnx.merge(self.graphdef,
                       jax.lax.stop_gradient(aux["target_params"]),
                       jax.lax.stop_gradient(aux["target_stats"]))
    keys = [jax.lax.stop_gradient(l2_normalize(target(x, train=True)[0]))
            for x in images_list]
    stats = nnx.to_pure_dict(nnx.state(target, nnx.BatchStat))
    return keys, stats

  def update_aux(self, aux, params, batch_stats, step):
    del batch_stats, step  # the key encoder keeps its own BN statistics
    return dict(aux, target_params=ema(aux["target_params"], params,
                                       self.momentum))


class MoCoV2(KeyEncoderMethod):
  """MoCo v2: EMA key encoder + FIFO queue of global-batch keys."""

  name = "mocov2"

  def __init__(self, config):
    super().__init__(config, config.moco.momentum)
    self.queue_size = int(config.moco.queue_size)
    self.temperature = float(config.loss.temperature)
    self.symmetric = bool(config.loss.symmetric)
    batch = int(config.batch_size)
    if self.queue_size <= 0 or self.queue_size % batch:
      # facebookresearch/moco asserts K % batch_size == 0 "for simplicity":
      # every enqueue then writes one whole contiguous block.
      raise errors.ConfigError(
          f"config.moco.queue_size={self.queue_size} must be a positive "
          f"multiple of config.batch_size={batch} (the global batch of keys "
          "enqueued each step)")

  def init_aux(self, params, batch_stats):
    # facebookresearch/moco: queue = normalize(randn(dim, K)); stored here as
    # (K, dim) rows. A fixed key keeps init reproducible from config.seed.
    key = jax.random.fold_in(jax.random.key(self.config.seed), 1)
    queue = l2_normalize(jax.random.normal(
        key, (self.queue_size, int(self.config.head.out_dim)), jnp.float32))
    return dict(self.init_target(params, batch_stats), queue=queue,
                queue_ptr=jnp.zeros((), jnp.int32))

  def loss(self, model, aux, views, step):
    del step
    view1, view2 = views
    q1 = model(view1, train=True)[0]
    if self.symmetric:
      # Both views are queries against the other view's key; MoCo v2 itself
      # is asymmetric (off by default), the symmetrised form is MoCo v3's.
      q2 = model(view2, train=True)[0]
      (k2, k1), target_stats = self.encode_keys(aux, [view2, view1])
      loss = 0.5 * (
          queue_loss(l2_normalize(q1), k2, aux["queue"], self.temperature)
          + queue_loss(l2_normalize(q2), k1, aux["queue"], self.temperature))
    else:
      (k2,), target_stats = self.encode_keys(aux, [view2])
      loss = queue_loss(l2_normalize(q1), k2, aux["queue"], self.temperature)
    # Only the second view's keys are enqueued, in both modes, so K stays a
    # multiple of the global batch (the views are identically distributed).
    queue, pointer = enqueue(aux["queue"], aux["queue_ptr"], k2)
    aux = dict(aux, target_stats=target_stats, queue=queue, queue_ptr=pointer)
    metrics = {"embedding_std": losses.embedding_std(q1),
               "queue_ptr": pointer.astype(jnp.float32),
               # One positive among 1 + K candidates.
               "loss_chance": math.log(1 + aux["queue"].shape[0])}
    return loss, (aux, metrics)
