"""Host pipeline of the volume-aware methods (Chaitanya G^D, PCL).

Two crops per slice of a volume set, labelled with the slice's volume id,
partition and relative position; 'random' sampling (PCL) or one slice per
partition of each volume ('partition', Chaitanya). The loss that reads the
labels is medclr/methods/volume_supcon.py.
"""
import pathlib
from typing import Any

import grain
import numpy as np

from medclr.data import pipeline
from medclr.data import readers
from medclr.data import sources as sources_lib
from medclr.data import volume_builder
from medclr.data import volumes

SAMPLINGS = ("random", "partition")
# Label fields the host pipeline adds to each example (besides the views).
LABEL_KEYS = ("volume_id", "partition", "position")
# The shared host-pipeline pieces of pipeline.py (same crops, caching,
# batching and process split as every other method).
TwoViews = pipeline.TwoViews
CachedRecords = pipeline.CachedRecords


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


def source_names(sources: str) -> list[str]:
  """Set names of a 'name:split,...' sources string."""
  return [name for name, _ in sources_lib.parse_sources(sources)]
