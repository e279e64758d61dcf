"""Volume-aware positives: Chaitanya's G^R / G^D- / G^D and PCL's threshold.

One SupCon-style loss over the global batch of 2N views with a positive mask
built from each slice's volume id, relative position and partition index
(`positives` 'gr', 'gd-', 'gd', 'pcl'; `form` 'supcon' or 'pairwise'). It
runs per device inside `jax.shard_map` with `all_gather`, so 1 and 8 devices
give the same loss and gradients. Definitions, the two forms and where the
reference code differs: docs/methods/volume_supcon.md.
"""
import dataclasses

import jax
import jax.numpy as jnp

from medclr import errors
from medclr import methods
from medclr import models
from medclr.augment import ops as augment
from medclr.data import volume_builder
from medclr.data import volume_pipeline
from medclr.evaluate import guard
from medclr.methods import losses

POSITIVES = ("gr", "gd-", "gd", "pcl")
FORMS = ("supcon", "pairwise")
# Stands in for -inf in masked log-sum-exps: finite, so a row with nothing
# unmasked (e.g. no negatives) gives finite values and zero gradients, where
# -inf would give NaN gradients.
_MASKED = -1e9


# ---------------------------------------------------------------------------
# Loss.


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """The loss's static settings (see the module docstring).

  Attributes:
    positives: 'gr' | 'gd-' | 'gd' | 'pcl'.
    temperature: tau of s = cos / tau.
    form: 'supcon' | 'pairwise'.
    threshold: PCL's slice_threshold on |position_i - position_j| (strict
      '<', as positional_cl); used by 'pcl' only.
    tau_base: when > 0 the loss is multiplied by temperature / tau_base.
  """
  positives: str = "gd"
  temperature: float = 0.1
  form: str = "supcon"
  threshold: float = 0.1
  tau_base: float = 0.0

  def __post_init__(self):
    if self.positives not in POSITIVES:
      raise errors.ConfigError(
          f"config.loss.positives={self.positives!r}: expected "
          f"one of {POSITIVES}")
    if self.form not in FORMS:
      raise errors.ConfigError(
          f"config.loss.form={self.form!r}: expected one of "
          f"{FORMS}")
    if self.temperature <= 0:
      raise errors.ConfigError(
          f"config.loss.temperature={self.temperature}: must be "
          "> 0")
    if self.positives == "pcl" and not 0 < self.threshold <= 1:
      raise errors.ConfigError(
          f"config.loss.threshold={self.threshold}: must be in "
          "(0, 1] for positives='pcl'")
    if self.tau_base < 0:
      raise errors.ConfigError(
          f"config.loss.tau_base={self.tau_base}: must be >= 0 "
          "(0 disables the temperature/tau_base factor)")

  @property
  def scale(self) -> float:
    return self.temperature / self.tau_base if self.tau_base else 1.0


def loss_spec(loss_cfg) -> LossSpec:
  """LossSpec from `config.loss` (fields as LossSpec's)."""
  return LossSpec(
      positives=str(loss_cfg.positives),
      temperature=float(loss_cfg.temperature),
      form=str(loss_cfg.get("form", "supcon")),
      threshold=float(loss_cfg.get("threshold", 0.1)),
      tau_base=float(loss_cfg.get("tau_base", 0.0)))


def _view_labels(labels: dict[str, jax.Array], n: int,
                 offset) -> dict[str, jax.Array]:
  """Labels of the 2n views [first views; second views] of n examples."""
  example = jnp.arange(n) + offset
  return {
      "example": jnp.concatenate([example, example]),
      "view": jnp.concatenate([jnp.zeros(n, jnp.int32),
                               jnp.ones(n, jnp.int32)]),
      "partition": jnp.concatenate([labels["partition"]] * 2),
      "position": jnp.concatenate([labels["position"]] * 2).astype(
          jnp.float32),
  }


def pair_masks(anchors: dict[str, jax.Array], candidates: dict[str, jax.Array],
               positives: str,
               threshold: float = 0.1) -> tuple[jax.Array, jax.Array]:
  """(positive, negative) boolean masks, (anchors, candidates).

  Args:
    anchors: 1-D label arrays 'example' (index of the slice in the global
      batch), 'view' (0 or 1), 'partition', 'position' of the anchor views.
    candidates: the same for the candidate views.
    positives: 'gr' | 'gd-' | 'gd' | 'pcl' (module docstring).
    threshold: the 'pcl' position threshold.

  Returns:
    Two bool arrays; neither ever marks an anchor's own view (self), and a
    view is never both positive and negative.
  """
  def pair(key, op):
    return op(anchors[key][:, None], candidates[key][None, :])

  same_example = pair("example", jnp.equal)
  is_self = same_example & pair("view", jnp.equal)
  same_partition = pair("partition", jnp.equal)
  if positives == "gr":
    return same_example & ~is_self, ~same_example
  if positives == "gd-":
    return same_example & ~is_self, ~same_partition
  if positives == "gd":
    return same_partition & ~is_self, ~same_partition
  if positives == "pcl":
    close = jnp.abs(pair("position", jnp.subtract)) < threshold
    return close & ~is_self, ~close & ~is_self
  raise ValueError(f"positives={positives!r}: expected one of {POSITIVES}")


def _anchor_losses(anchors: jax.Array, candidates: jax.Array,
                   positive: jax.Array, negative: jax.Array,
                   spec: LossSpec) -> tuple[jax.Array, jax.Array]:
  """Per-anchor loss and positive count from normalised projections."""
  logits = anchors @ candidates.T / spec.temperature
  if spec.form == "supcon":
    denominator = jax.nn.logsumexp(
        jnp.where(positive | negative, logits, _MASKED), axis=1,
        keepdims=True)
    log_prob = logits - denominator
  else:
    negatives = jax.nn.logsumexp(jnp.where(negative, logits, _MASKED),
                                 axis=1, keepdims=True)
    log_prob = logits - jnp.logaddexp(logits, negatives)
  count = jnp.sum(positive, axis=1)
  mean_log_prob = jnp.sum(jnp.where(positive, log_prob, 0.0), axis=1) / count
  return -spec.scale * mean_log_prob, count.astype(jnp.float32)


def _normalize(z: jax.Array) -> jax.Array:
  z = z.astype(jnp.float32)
  return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def _check_inputs(z1, z2, labels) -> None:
  if z1.ndim != 2 or z1.shape != z2.shape:
    raise ValueError("volume SupCon expects two (batch, dim) projections of "
                     f"the same shape, got {z1.shape} and {z2.shape}")
  for key in ("partition", "position"):
    if key not in labels or labels[key].shape != z1.shape[:1]:
      raise ValueError(f"volume SupCon needs labels[{key!r}] of shape "
                       f"{z1.shape[:1]}, got "
                       f"{getattr(labels.get(key), 'shape', None)}")


def volume_supcon_reference(z1: jax.Array, z2: jax.Array,
                            labels: dict[str, jax.Array],
                            spec: LossSpec) -> tuple[jax.Array, jax.Array]:
  """Single-device loss on the whole batch (see the module docstring).

  Args:
    z1: first-view projections (N, dim).
    z2: second-view projections (N, dim); row i pairs with z1[i].
    labels: 'partition' (N,) int and 'position' (N,) float of each slice.
    spec: the loss settings.

  Returns:
    (loss, mean number of positives per anchor), float32 scalars.
  """
  _check_inputs(z1, z2, labels)
  n = z1.shape[0]
  z = _normalize(jnp.concatenate([z1, z2]))
  view_labels = _view_labels(labels, n, 0)
  positive, negative = pair_masks(view_labels, view_labels, spec.positives,
                                  spec.threshold)
  per_anchor, count = _anchor_losses(z, z, positive, negative, spec)
  return jnp.mean(per_anchor), jnp.mean(count)


def volume_supcon_local(z1: jax.Array, z2: jax.Array,
                        labels: dict[str, jax.Array], spec: LossSpec,
                        axis_name: str = "data"
                        ) -> tuple[jax.Array, jax.Array]:
  """The loss over the global batch, for use INSIDE `jax.shard_map`.

  Each device gathers all normalised projections and labels, scores its own
  2n anchor views against the 2N global views (layout [all first views; all
  second views], as the reference), and the per-device sums are psummed.
  """
  _check_inputs(z1, z2, labels)
  n = z1.shape[0]
  local1, local2 = _normalize(z1), _normalize(z2)
  global1 = jax.lax.all_gather(local1, axis_name, tiled=True)
  global2 = jax.lax.all_gather(local2, axis_name, tiled=True)
  global_labels = {key: jax.lax.all_gather(labels[key], axis_name, tiled=True)
                   for key in ("partition", "position")}
  global_n = global1.shape[0]
  offset = jax.lax.axis_index(axis_name) * n
  positive, negative = pair_masks(
      _view_labels(labels, n, offset),
      _view_labels(global_labels, global_n, 0), spec.positives,
      spec.threshold)
  per_anchor, count = _anchor_losses(
      jnp.concatenate([local1, local2]), jnp.concatenate([global1, global2]),
      positive, negative, spec)
  total = 2 * global_n
  return (jax.lax.psum(jnp.sum(per_anchor), axis_name) / total,
          jax.lax.psum(jnp.sum(count), axis_name) / total)


def volume_supcon(z1: jax.Array, z2: jax.Array, labels: dict[str, jax.Array],
                  spec: LossSpec,
                  axis_name: str = "data") -> tuple[jax.Array, jax.Array]:
  """The loss on global arrays under the ambient mesh (like losses.nt_xent).

  Without a mesh (or an `axis_name` axis) it is the reference; inside a
  shard_map over `axis_name` it is `volume_supcon_local`; otherwise it runs
  that per device with `jax.shard_map`, resharding Explicit inputs to the
  batch split first.

  Returns:
    (loss, mean positives per anchor), replicated float32 scalars.
  """
  _check_inputs(z1, z2, labels)
  labels = {key: labels[key] for key in ("partition", "position")}
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or axis_name not in mesh.axis_names:
    return volume_supcon_reference(z1, z2, labels, spec)
  axis_type = mesh.axis_types[mesh.axis_names.index(axis_name)]
  if axis_type == jax.sharding.AxisType.Manual:
    return volume_supcon_local(z1, z2, labels, spec, axis_name)
  if z1.shape[0] % mesh.shape[axis_name]:
    raise ValueError(
        f"volume SupCon batch {z1.shape[0]} is not divisible by the "
        f"{mesh.shape[axis_name]} devices of mesh axis {axis_name!r}")
  data = jax.P(axis_name)
  if axis_type == jax.sharding.AxisType.Explicit:
    z1, z2, labels = jax.tree.map(
        lambda x: jax.sharding.reshard(x, data), (z1, z2, labels))
  return jax.shard_map(
      lambda a, b, l: volume_supcon_local(a, b, l, spec, axis_name),
      in_specs=(data, data, {key: data for key in labels}),
      out_specs=(jax.P(), jax.P()))(z1, z2, labels)


# ---------------------------------------------------------------------------
# The method.


class VolumeSupCon(methods.Method):
  """Encoder + projection MLP trained with the volume-aware SupCon loss."""

  name = "volume_supcon"
  host_pipeline = "volumes"  # its own host crops, labelled by slice
  device_crops = False
  contrastive_crop = False

  def __init__(self, config):
    super().__init__(config)
    self.loss_spec = loss_spec(config.loss)
    self.partitions = int(config.loss.get("partitions", 4))
    self.sampling = str(config.data.get("sampling", "random"))

  def prepare_data(self, config):
    super().prepare_data(config)
    volume_builder.ensure_synthetic_volumes(
        config.data.data_dir,
        volume_pipeline.source_names(config.data.sources))

  def host_dataset(self, config, local_batch, boxes=None, crop_alpha=1.0):
    del boxes, crop_alpha  # contrastive_crop is False: never given
    return volume_pipeline.volume_pretrain_dataset(
        config.data.data_dir, config.data.sources,
        image_size=config.data.image_size,
        in_channels=config.data.in_channels, area=self.spec.crop_area,
        aspect=self.spec.crop_aspect, partitions=self.partitions,
        sampling=self.sampling, local_batch=local_batch, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        worker_count=config.data.worker_count)

  def make_model(self, rngs):
    return models.make_contrastive(self.config.model, self.config.head, rngs)

  def device_views(self, key, batch):
    view1, view2 = augment.two_views(key, batch["view1"], batch["view2"],
                                     self.spec)
    return view1, view2, {k: batch[k] for k in volume_pipeline.LABEL_KEYS}

  def loss(self, model, aux, views, step):
    del step
    view1, view2, labels = views
    b = view1.shape[0]
    # As SimCLR: one forward pass over both views keeps each device's
    # examples local while BatchNorm sees all 2N views.
    stacked = jnp.stack([view1, view2], axis=1).reshape(
        (2 * b,) + view1.shape[1:])
    z, _ = model(stacked, train=True)
    z = z.reshape((b, 2) + z.shape[1:])
    z1, z2 = z[:, 0], z[:, 1]
    loss, positives = volume_supcon(z1, z2, labels, self.loss_spec)
    return loss, (aux, {"embedding_std": losses.embedding_std(z1),
                        "positives_per_anchor": positives,
                        "loss_chance": guard.nt_xent_chance(2 * b)})
