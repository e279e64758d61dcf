"""AdCo (Hu et al. 2021; docs/methods/adco.md): learned negative adversaries.

MoCo's queue is replaced by K learnable vectors W (the "memory bank",
maple-research-lab/AdCo `model/AdCo.py` `Adversary_Negatives`), used as
L2-normalised negatives. Two players are updated every step:

* the encoder minimises, at temperature t (`moco_t` 0.12),
    CE over [q . k_all, q . normalise(W)] / t, the positive = q's own key,
  where k_all are the keys of the whole global batch from the EMA key
  encoder: the other images' keys are negatives too. The paper describes the
  positive alone; the code (`training/train.py` `update_network`) uses all
  keys, and the authors keep them for stability (AdCo issue #10). We follow
  the code.
* the bank maximises the same loss at its own temperature t_m (`mem_t`):
  g = grad_W(-L_{t_m}) with the queries held fixed (stop-gradient), then
  SGD with momentum and weight decay on W (`v = 0.9 v + g + wd W`,
  `W = W - lr v`), i.e. `optax.sgd` after `optax.add_decayed_weights`. The
  code writes this gradient out by hand; `jax.grad` gives the same one
  (tested in tests/methods/adco_test.py).

Initialisation (`training/train.py` `init_memory`, "the key to adversarial
training", issue #9): the bank starts as standard normal vectors; for the
first ceil(K / batch) steps the encoder trains with a MoCo-style loss (the
own key as the only positive logit, the bank as negatives, temperature
`moco_t`) while the bank's rows are filled, block by block, with the
all-gathered keys of each batch; after the last of these steps the key
encoder is set to a copy of the query encoder. The reference runs this as an
extra pass before epoch 0; here it is the first steps of the run, so the
phase is a function of `state['step']` (already checkpointed; no second
counter to keep in sync) and resuming inside it continues filling.

State in `aux`: the key encoder (`target_params`, `target_stats`), the bank
`bank` (K, d) (rows are the reference's columns) and its SGD momentum
`bank_velocity`.
"""
import math

import jax
import jax.numpy as jnp
import optax

from medclr import errors
from medclr.methods import losses
from medclr.methods import mocov2


def adco_loss(q: jax.Array, k: jax.Array, keys_all: jax.Array,
              bank: jax.Array, temperature: float) -> jax.Array:
  """CE over [q . keys_all, q . normalise(bank)] / t, positive = own key.

  Args:
    q: L2-normalised queries, (N, d).
    k: L2-normalised keys, (N, d); k[i] is q[i]'s positive and equals row i
      of `keys_all` (it is passed separately so the positive logit is an
      elementwise product of two batch-sharded arrays).
    keys_all: the global batch of keys, (N, d), replicated.
    bank: the raw (unnormalised) bank W, (K, d).
    temperature: softmax temperature.

  Returns:
    Scalar float32, the mean over the N queries.
  """
  positive = jnp.sum(q * k, axis=-1) / temperature
  logits = jnp.concatenate(
      [q @ keys_all.T, q @ mocov2.l2_normalize(bank).T], axis=1) / temperature
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive)


def fill_rows(bank: jax.Array, keys: jax.Array, start: jax.Array) -> jax.Array:
  """`bank` with rows start .. start + N - 1 (those below K) set to `keys`.

  Unlike MoCo's queue, K need not be a multiple of the batch: the reference
  copies only the part of the last block that fits
  (`output[:end_point - start_point]`).

  Args:
    bank: (K, d).
    keys: (N, d) global keys, replicated.
    start: int32 scalar, first row to write.

  Returns:
    The updated (K, d) bank.
  """
  rows = jnp.arange(bank.shape[0])
  in_block = (rows >= start) & (rows < start + keys.shape[0])
  source = keys[jnp.clip(rows - start, 0, keys.shape[0] - 1)]
  return jnp.where(in_block[:, None], source.astype(bank.dtype), bank)


class AdCo(mocov2.KeyEncoderMethod):
  """AdCo: EMA key encoder + negative bank trained by gradient ascent."""

  name = "adco"

  def __init__(self, config):
    super().__init__(config, config.adco.momentum)
    cfg = config.adco
    self.bank_size = int(cfg.bank_size)
    self.temperature = float(config.loss.temperature)
    self.symmetric = bool(config.loss.symmetric)
    self.bank_temperature = float(cfg.bank_temperature)
    self.batch = int(config.batch_size)
    if self.bank_size <= 0:
      raise errors.ConfigError(
          f"config.adco.bank_size={self.bank_size} must be positive")
    self.init_steps = math.ceil(self.bank_size / self.batch)
    if self.init_steps >= config.num_steps:
      raise errors.ConfigError(
          f"config.adco.bank_size={self.bank_size} needs {self.init_steps} "
          f"bank-initialisation steps at config.batch_size={self.batch}, but "
          f"config.num_steps={config.num_steps}: the adversarial phase would "
          "never run; lower the bank size or train longer")
    # `v = m v + g + wd W; W = W - lr v` (train.py): coupled weight decay
    # before the momentum trace, exactly optax's chain below.
    self.bank_tx = optax.chain(
        optax.add_decayed_weights(float(cfg.bank_weight_decay)),
        optax.sgd(float(cfg.bank_lr), momentum=float(cfg.bank_momentum)))

  def init_aux(self, params, batch_stats):
    # `Adversary_Negatives`: W = randn(dim, K) (normalised only when used),
    # v = 0. A fixed key keeps init reproducible from config.seed.
    key = jax.random.fold_in(jax.random.key(self.config.seed), 2)
    shape = (self.bank_size, int(self.config.head.out_dim))
    return dict(self.init_target(params, batch_stats),
                bank=jax.random.normal(key, shape, jnp.float32),
                bank_velocity=jnp.zeros(shape, jnp.float32))

  def _pairs(self, model, aux, views):
    """(query, key) pairs of the loss and the key encoder's new BN stats."""
    view1, view2 = views
    q1 = mocov2.l2_normalize(model(view1, train=True)[0])
    if not self.symmetric:
      (k2,), stats = self.encode_keys(aux, [view2])
      return [(q1, k2)], stats
    # `update_sym_network`: both views are queries against the other's keys.
    q2 = mocov2.l2_normalize(model(view2, train=True)[0])
    (k2, k1), stats = self.encode_keys(aux, [view2, view1])
    return [(q1, k2), (q2, k1)], stats

  def _pair_loss(self, pairs, bank, temperature):
    return sum(adco_loss(q, k, mocov2.gather_to_replicated(k), bank,
                         temperature) for q, k in pairs) / len(pairs)

  def _adversary_step(self, pairs, bank, velocity):
    """One gradient-ascent SGD step of the bank against fixed queries."""
    fixed = [(jax.lax.stop_gradient(q), k) for q, k in pairs]
    bank_loss, grad = jax.value_and_grad(
        lambda w: self._pair_loss(fixed, w, self.bank_temperature))(bank)
    state = optax.tree_utils.tree_set(self.bank_tx.init(bank), trace=velocity)
    # Ascent: descend on -loss.
    updates, state = self.bank_tx.update(-grad, state, bank)
    velocity = optax.tree_utils.tree_get(state, "trace")
    return optax.apply_updates(bank, updates), velocity, bank_loss

  def loss(self, model, aux, views, step):
    if views[0].shape[0] != self.batch:
      raise ValueError(f"AdCo got a global batch of {views[0].shape[0]} "
                       f"views, config.batch_size={self.batch}")
    pairs, target_stats = self._pairs(model, aux, views)
    bank, velocity = aux["bank"], aux["bank_velocity"]
    initialising = step < self.init_steps

    # `init_memory`: positive = own key only, the bank as negatives, moco_t.
    q1, k2 = pairs[0]
    init_loss = mocov2.queue_loss(q1, k2, mocov2.l2_normalize(bank),
                                self.temperature)
    adco = self._pair_loss(pairs, bank, self.temperature)
    loss = jnp.where(initialising, init_loss, adco)

    trained_bank, trained_velocity, bank_loss = self._adversary_step(
        pairs, bank, velocity)
    start = jnp.minimum(step, self.init_steps) * self.batch
    filled_bank = fill_rows(bank, mocov2.gather_to_replicated(k2), start)
    aux = dict(aux, target_stats=target_stats,
               bank=jnp.where(initialising, filled_bank, trained_bank),
               bank_velocity=jnp.where(initialising, velocity,
                                       trained_velocity))
    filled = jnp.minimum((step + 1) * self.batch, self.bank_size)
    # One positive among 1 + K (bank initialisation) or N + K candidates.
    chance = jnp.where(initialising, math.log(1 + self.bank_size),
                       math.log(self.batch + self.bank_size))
    metrics = {"embedding_std": losses.embedding_std(q1),
               "loss_chance": chance,
               "bank_filled": filled.astype(jnp.float32),
               # The adversary's objective (rises while the bank wins).
               "bank_loss": bank_loss}
    return loss, (aux, metrics)

  def update_aux(self, aux, params, batch_stats, step):
    aux = super().update_aux(aux, params, batch_stats, step)
    # End of `init_memory`: encoder_k <- encoder_q (parameters only).
    copy = step == self.init_steps - 1
    return dict(aux, target_params=jax.tree.map(
        lambda t, p: jnp.where(copy, p, t), aux["target_params"], params))
