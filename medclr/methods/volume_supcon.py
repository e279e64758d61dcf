"""Volume-aware positives: Chaitanya's G^R / G^D- / G^D and PCL's threshold.

One SupCon-style loss over the global batch of 2N views with a positive mask
built from each slice's volume id, relative position and partition index
(`positives` 'gr', 'gd-', 'gd', 'pcl'; `form` 'supcon' or 'pairwise'). It
runs per device inside `jax.shard_map` with `all_gather`, so 1 and 8 devices
give the same loss and gradients. Definitions, the two forms and where the
reference code differs: docs/methods/volume_supcon.md.
"""
import dataclasses
import pathlib
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np

from medclr import augment
from medclr import errors
from medclr import guard
from medclr import losses
from medclr import methods
from medclr import models
from medclr.data import pipeline
from medclr.data import readers
from medclr.data import sources as sources_lib
from medclr.data import volume_builder
from medclr.data import volumes

POSITIVES = ("gr", "gd-", "gd", "pcl")
FORMS = ("supcon", "pairwise")
SAMPLINGS = ("random", "partition")
# Label fields the host pipeline adds to each example (besides the views).
LABEL_KEYS = ("volume_id", "partition", "position")
# The shared host-pipeline pieces of pipeline.py (same crops, caching,
# batching and process split as every other method).
TwoViews = pipeline.TwoViews
CachedRecords = pipeline.CachedRecords
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
# Host pipeline.


def _labels(record: dict[str, Any], volume_offset: int,
            partitions: int) -> dict[str, np.ndarray]:
  slice_index, num_slices = int(record["slice_index"]), int(
      record["num_slices"])
  return {
      "volume_id": np.int32(volume_offset + int(record["volume_id"])),
      "partition": np.int32(volumes.partition_of(slice_index, num_slices,
                                                 partitions)),
      "position": np.float32(record["position"]),
  }


class _SliceViews(grain.transforms.RandomMap):
  """Two host crops of a slice plus its volume id, partition and position."""

  def __init__(self, two_views: TwoViews, partitions: int):
    self.two_views = two_views
    self.partitions = partitions

  def views(self, record, volume_offset, rng) -> dict[str, np.ndarray]:
    example = self.two_views.random_map(record, rng)
    example.update(_labels(record, volume_offset, self.partitions))
    return example

  def random_map(self, element, rng):
    record, volume_offset = element
    return self.views(record, volume_offset, rng)


class _WithOffset:
  """A source whose records come with their source's volume-id offset."""

  def __init__(self, records, volume_offset: int):
    self._records = records
    self._volume_offset = volume_offset

  def __len__(self):
    return len(self._records)

  def __getitem__(self, index):
    return self._records[index], self._volume_offset


class _PartitionGroup(grain.transforms.RandomMap):
  """One random slice from each partition of one volume, both views each."""

  def __init__(self, records: list, groups: list, slice_views: _SliceViews):
    self.records = records
    self.groups = groups
    self.slice_views = slice_views

  def random_map(self, element, rng):
    source_index, volume_offset, parts = self.groups[element]
    examples = []
    for part in parts:
      record = self.records[source_index][int(rng.choice(part))]
      examples.append(self.slice_views.views(record, volume_offset, rng))
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


def _volume_groups(tables: list[np.ndarray], offsets: list[int],
                   partitions: int, names: list[str]) -> list:
  """(source index, volume offset, [record indices per partition]) per volume.

  Raises:
    DataError: a volume has fewer slices than partitions.
  """
  groups = []
  for source_index, table in enumerate(tables):
    part = volumes.partition_of(table[:, 1], table[:, 2], partitions)
    for volume_id in np.unique(table[:, 0]):
      rows = table[:, 0] == volume_id
      parts = [np.flatnonzero(rows & (part == p)) for p in range(partitions)]
      if any(len(p) == 0 for p in parts):
        raise readers.DataError(
            f"volume {int(volume_id)} of {names[source_index]} has "
            f"{int(table[rows][0, 2])} slices, fewer than config.loss."
            f"partitions={partitions}; use fewer partitions or "
            "config.data.sampling='random'")
      groups.append((source_index, offsets[source_index], parts))
  return groups


def _flatten_groups(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """(b / S, S, ...) batches of partition groups -> (b, ...)."""
  return {key: value.reshape((-1,) + value.shape[2:])
          for key, value in batch.items()}


def _open_volume_sources(data_dir, sources):
  """(names, opened splits, slice tables, volume-id offsets) of `sources`.

  Each source numbers its volumes from 0; the offsets make them unique.
  """
  parsed = sources_lib.parse_sources(sources)
  names = [f"{name}:{split}" for name, split in parsed]
  opened = [volume_builder.open_volume_split(data_dir, name, split)
            for name, split in parsed]
  tables = [volume_builder.slice_table(data_dir, name, split, source)
            for (name, split), source in zip(parsed, opened)]
  sizes = [int(table[:, 0].max()) + 1 for table in tables]
  offsets = [int(o) for o in np.cumsum([0] + sizes)[:-1]]
  return names, opened, tables, offsets


def volume_pretrain_dataset(data_dir: pathlib.Path | str, sources: str, *,
                            image_size: int, in_channels: int,
                            area: tuple[float, float],
                            aspect: tuple[float, float], partitions: int,
                            sampling: str, local_batch: int, seed: int,
                            process_index: int = 0, process_count: int = 1,
                            worker_count: int = 0) -> grain.IterDataset:
  """Endless batches of two crops per slice with volume labels.

  Same order of operations as `pipeline.pretrain_dataset` (shuffle per
  epoch -> repeat -> per-example crops -> batch -> this process's share),
  so it is deterministic, resumable and independent of the host count.

  Args (the rest as `pipeline.pretrain_dataset`):
    sources: comma list of `name:split` volume sets.
    in_channels: 1 or 3 (gray slices are repeated to 3 channels).
    area, aspect: crop area (fraction of the slice) and aspect ranges.
    partitions: S, the number of equal parts of each volume.
    sampling: 'random' (slices uniformly, PCL) or 'partition' (per volume,
      one random slice from each of its S parts, Chaitanya).
    local_batch: examples per batch on this process (a multiple of S for
      'partition').

  Returns:
    IterDataset of dict(view1, view2 float32 (b, S, S, C), volume_id int32
    (b,), partition int32 (b,), position float32 (b,)). Volume ids are made
    unique across sources by offsetting each source's ids.
  """
  if sampling not in SAMPLINGS:
    raise readers.DataError(f"config.data.sampling={sampling!r}: expected "
                            f"one of {SAMPLINGS}")
  if partitions < 1:
    raise readers.DataError(f"config.loss.partitions={partitions}: must be "
                            ">= 1")
  if sampling == "partition" and local_batch % partitions:
    raise readers.DataError(
        f"sampling='partition' needs the per-process batch ({local_batch}) "
        f"to be a multiple of config.loss.partitions={partitions}")
  names, opened, tables, offsets = _open_volume_sources(data_dir, sources)
  records = [CachedRecords(s) for s in opened]
  slice_views = _SliceViews(TwoViews(image_size, in_channels, area, aspect),
                            partitions)
  # Items are slices ('random') or groups of one slice per partition.
  if sampling == "random":
    dataset = pipeline.concatenated(
        _WithOffset(r, o) for r, o in zip(records, offsets))
    per_item, what = 1, f"slice pool {sources!r}"
  else:
    groups = _volume_groups(tables, offsets, partitions, names)
    dataset = grain.MapDataset.range(len(groups))
    slice_views = _PartitionGroup(records, groups, slice_views)
    per_item, what = partitions, f"volume-partition groups of {sources!r}"
  dataset = pipeline.shuffled_epochs(
      dataset, seed=seed, global_batch=local_batch // per_item * process_count,
      what=what).random_map(slice_views)
  batched = pipeline.batch_for_process(dataset, local_batch // per_item,
                                       process_index, process_count,
                                       worker_count)
  return batched if sampling == "random" else batched.map(_flatten_groups)


# ---------------------------------------------------------------------------
# The method.


def source_names(sources: str) -> list[str]:
  """Set names of a 'name:split,...' sources string."""
  return [name for name, _ in sources_lib.parse_sources(sources)]


class VolumeSupCon(methods.Method):
  """Encoder + projection MLP trained with the volume-aware SupCon loss."""

  name = "volume_supcon"
  contrastive_crop = False  # its own host crops

  def __init__(self, config):
    super().__init__(config)
    self.loss_spec = loss_spec(config.loss)
    self.partitions = int(config.loss.get("partitions", 4))
    self.sampling = str(config.data.get("sampling", "random"))

  def prepare_data(self, config):
    super().prepare_data(config)
    volume_builder.ensure_synthetic_volumes(
        config.data.data_dir, source_names(config.data.sources))

  def host_dataset(self, config, local_batch, boxes=None, crop_alpha=1.0):
    del boxes, crop_alpha  # contrastive_crop is False: never given
    return volume_pretrain_dataset(
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
    return view1, view2, {k: batch[k] for k in LABEL_KEYS}

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


def make(config):
  return VolumeSupCon(config)
