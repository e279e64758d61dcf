"""BYOL (Grill et al. 2020; docs/methods/byol.md): predict an EMA target.

The online network (encoder -> projector -> predictor) regresses the target
network's projection of the other view; the target (encoder -> projector)
is an exponential moving average of the online weights and receives no
gradient. Values follow google-deepmind/deepmind-research `byol/`
(byol_experiment.py, utils/networks.py, utils/schedules.py,
utils/augmentations.py, configs/byol.py):

* loss: `regression_loss(p, z) = |p/|p| - z/|z||^2 = 2 - 2 cos(p, z)`, summed
  over the two directions (p1 vs z'2, p2 vs z'1) and averaged over the batch;
* projector and predictor: Linear(bias) -> BatchNorm(decay 0.9, eps 1e-5) ->
  ReLU -> Linear(no bias) (`networks.MLP`), 4096 hidden and 256 out;
* target EMA: tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2
  (`schedules.target_ema`), applied after the optimizer step to the new
  online weights: target += (1 - tau_k) (online - target);
* each view goes through each network in its own forward pass (BatchNorm
  statistics per view), and the target runs in training mode: it normalises
  with batch statistics and keeps its own running averages, which are never
  averaged from the online network (only parameters are);
* the target is initialised from its own random key, not copied from the
  online network (`_make_initial_state`: "Online and target parameters are
  initialized using different rngs"); the paper's pseudo-code copies them.
  We follow the code.
* views: the asymmetric pair `byol_asym` (`augmentations.augment_config`):
  both views flip, jitter (brightness 0.4 additive, contrast 0.4, saturation
  0.2, hue 0.1, random order) with p 0.8, grayscale p 0.2; view 1 blur p 1.0,
  solarize p 0; view 2 blur p 0.1, solarize p 0.2 (docs/methods/byol.md).

BatchNorm statistics cover the global batch (GSPMD inserts the cross-device
reduction), which is BYOL's `cross_replica_axis='i'`.
"""
from flax import nnx
import jax
import jax.numpy as jnp

from medclr import errors
from medclr import methods
from medclr import models
from medclr.augment import ops as augment
from medclr.methods import ema
from medclr.methods import losses
from medclr.models import encoder as encoder_lib

# haiku BatchNorm settings of BYOL's bn_config (configs/byol.py).
_HEAD_BN_DECAY = 0.9
_HEAD_BN_EPS = 1e-5
# byol/utils/helpers.py l2_normalize: rsqrt(max(sum x^2, 1e-12)).
_NORM_EPS_SQUARED = 1e-12
# Subtrees of the online parameters that the target network mirrors.
TARGET_PARTS = ("encoder", "projector")

# The view pairs `config.augment.views` selects. Each names, per view, the
# intensity fields that replace the base preset's; flips, rotations and the
# host crop stay the base preset's (`config.augment.preset`). Values:
# deepmind byol utils/augmentations.py `augment_config` (brightness is
# additive there, `adjust_brightness(x, delta)`).
VIEW_PAIRS = {
    "same": None,
    "byol_asym": (
        dict(jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, gray_p=0.2,
             blur_p=1.0, solarize_p=0.0, brightness_mode="add"),
        dict(jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, gray_p=0.2,
             blur_p=0.1, solarize_p=0.2, brightness_mode="add"),
    ),
}


def view_specs(augment_cfg):
  """(view1 spec, view2 spec) for `config.augment` (preset, strength, views).

  Raises:
    errors.ConfigError: unknown `views` name.
  """
  base = augment.get_spec(augment_cfg.preset, augment_cfg.strength)
  views = augment_cfg.get("views", "same")
  if views not in VIEW_PAIRS:
    raise errors.ConfigError(
        f"config.augment.views={views!r}: expected one of {sorted(VIEW_PAIRS)}")
  if VIEW_PAIRS[views] is None:
    return base, base
  return tuple(
      augment.with_intensity(base, augment_cfg.strength,
                             f"{views}_view{i + 1}", **fields)
      for i, fields in enumerate(VIEW_PAIRS[views]))


def regression_loss(p, z):
  """Per-example |p/|p| - z/|z||^2 = 2 - 2 cos(p, z) (BYOL helpers.py)."""
  def normalize(x):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(
        jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), _NORM_EPS_SQUARED))

  return jnp.sum((normalize(p) - normalize(z)) ** 2, axis=-1)


class MLP(nnx.Module):
  """BYOL's head: Linear(bias) -> BatchNorm -> ReLU -> Linear(no bias).

  `heads.ProjectionHead` has no normalisation (it is the SimCLR canonical
  head), so BYOL's BatchNorm MLP is its own module. The BatchNorm stays a
  BatchNorm with `config.model.norm='group'` too, as in the reference.
  """

  def __init__(self, in_dim, hidden_dim, out_dim, *, dtype=None, rngs):
    self.hidden = nnx.Linear(in_dim, hidden_dim, dtype=dtype, rngs=rngs)
    self.norm = nnx.BatchNorm(hidden_dim, momentum=_HEAD_BN_DECAY,
                              epsilon=_HEAD_BN_EPS, dtype=dtype, rngs=rngs)
    self.output = nnx.Linear(hidden_dim, out_dim, use_bias=False, dtype=dtype,
                             rngs=rngs)

  def __call__(self, x, *, train):
    x = self.norm(self.hidden(x), use_running_average=not train)
    return self.output(nnx.relu(x))


class TargetNetwork(nnx.Module):
  """Encoder -> global average pool -> projector (BYOL's target branch)."""

  def __init__(self, model_kwargs, hidden_dim, out_dim, *, rngs):
    """Builds the network.

    Args:
      model_kwargs: `models.model_kwargs(config.model)` (encoder arguments).
      hidden_dim: projector hidden width (4096 in BYOL).
      out_dim: projection dimension (256 in BYOL).
      rngs: NNX random streams.
    """
    self.encoder = encoder_lib.Encoder(**model_kwargs, rngs=rngs)
    self.projector = MLP(self.encoder.widths[-1], hidden_dim, out_dim,
                         dtype=model_kwargs.get("dtype"), rngs=rngs)

  def project(self, x, *, train):
    """Projections z (batch, out_dim), float32."""
    deepest = self.encoder(x, train=train)[-1]
    # Pool in float32: a mean over many pixels loses precision in bfloat16.
    h = jnp.mean(deepest.astype(jnp.float32), axis=(1, 2))
    return self.projector(h, train=train).astype(jnp.float32)

  def __call__(self, x, *, train):
    return self.project(x, train=train)


class OnlineNetwork(TargetNetwork):
  """The trained network: the target's layers plus the predictor."""

  def __init__(self, model_kwargs, hidden_dim, out_dim, predictor_hidden_dim,
               *, rngs):
    super().__init__(model_kwargs, hidden_dim, out_dim, rngs=rngs)
    self.predictor = MLP(out_dim, predictor_hidden_dim, out_dim,
                         dtype=model_kwargs.get("dtype"), rngs=rngs)

  def __call__(self, x, *, train):
    """(predictions p, projections z), both (batch, out_dim) float32."""
    z = self.project(x, train=train)
    p = self.predictor(z, train=train).astype(jnp.float32)
    return p, z


class BYOL(methods.Method):
  """Online network + predictor regressing an EMA target (see module doc)."""

  name = "byol"

  def __init__(self, config):
    super().__init__(config)
    self.view1_spec, self.view2_spec = view_specs(config.augment)
    self.model_kwargs = models.model_kwargs(config.model)
    head = config.head
    self.head_dims = (int(head.hidden_dim), int(head.out_dim))
    self.predictor_hidden_dim = int(head.predictor_hidden_dim)
    self.base_momentum = float(config.ema.base_momentum)
    if not 0.0 <= self.base_momentum <= 1.0:
      raise errors.ConfigError(
          f"config.ema.base_momentum={self.base_momentum}: must be in [0, 1]")
    self.total_steps = int(config.num_steps)
    self.target_graphdef = nnx.graphdef(
        nnx.eval_shape(lambda: self.make_target(nnx.Rngs(0))))

  def make_model(self, rngs):
    return OnlineNetwork(self.model_kwargs, *self.head_dims,
                         self.predictor_hidden_dim, rngs=rngs)

  def make_target(self, rngs):
    return TargetNetwork(self.model_kwargs, *self.head_dims, rngs=rngs)

  def init_aux(self, params, batch_stats):
    del params, batch_stats  # the target has its own initialisation
    # deepmind byol splits the init key into online and target keys.
    target = self.make_target(nnx.Rngs(self.config.seed + 1))
    _, target_params, target_stats = models.split_model(target)
    return {"target_params": target_params, "target_stats": target_stats}

  def device_views(self, key, batch):
    key1, key2 = jax.random.split(key)
    return (augment.sharded_augment(key1, batch["view1"], self.view1_spec),
            augment.sharded_augment(key2, batch["view2"], self.view2_spec))

  def loss(self, model, aux, views, step):
    view1, view2 = views
    p1, z1 = model(view1, train=True)
    p2, _ = model(view2, train=True)
    target = nnx.merge(self.target_graphdef, aux["target_params"],
                       aux["target_stats"])
    t1 = jax.lax.stop_gradient(target(view1, train=True))
    t2 = jax.lax.stop_gradient(target(view2, train=True))
    loss = jnp.mean(regression_loss(p1, t2) + regression_loss(p2, t1))
    aux = dict(aux, target_stats=nnx.to_pure_dict(
        nnx.state(target, nnx.BatchStat)))
    metrics = {"embedding_std": losses.embedding_std(z1),
               "target_embedding_std": losses.embedding_std(t1),
               "ema_momentum": self.momentum(step)}
    return loss, (aux, metrics)

  def momentum(self, step):
    return ema.cosine_momentum(step, self.base_momentum, self.total_steps)

  def update_aux(self, aux, params, batch_stats, step):
    del batch_stats  # the target keeps its own BatchNorm statistics
    online = {part: params[part] for part in TARGET_PARTS}
    return dict(aux, target_params=ema.ema_update(
        aux["target_params"], online, self.momentum(step)))
