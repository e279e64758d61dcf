"""Grain input pipelines for pretraining (two views) and fine-tuning (patches).

Both pipelines follow the same order, chosen for determinism, resumability
and independence from the number of hosts:
  source(s) -> endless epochs, each in a new random order [and cut to a
  multiple of the global batch: pretraining] -> per-example random
  crops -> batch(local_batch) -> this process's batches [p::P] ->
  to_iter_dataset [-> multiprocess prefetch]
Every process defines the same global example stream; global batch b is the
local batches b*P .. b*P+P-1, one per process, in process order, which is
also the order in which `jax.make_array_from_process_local_data` lays them
out. Random crops draw from a generator that Grain derives from the seed and
the global element index. So 1 process with 8 devices and 2 processes with 4
each see exactly the same global batches, and a restored iterator state
reproduces the exact same batches.
"""
import os
import pathlib
import sys
from typing import Any, Sequence

from absl import flags
import grain
import numpy as np

from medclr.data import contrastive_crop
from medclr.data import crops
from medclr.data import readers
from medclr.data import sources as sources_lib


class TwoViews(grain.transforms.RandomMap):
  """Two independent random resized crops of one image (SimCLR, host part).

  With a ContrastiveCrop `boxes` table that is active, each crop's centre is
  drawn inside the image's box (`contrastive_crop.beta_place`). With
  `num_views=1` only 'view1' is cut (the same crop as with two views).
  """

  def __init__(self, image_size: int, in_channels: int,
               area: tuple[float, float], aspect: tuple[float, float],
               boxes=None, crop_alpha: float = 1.0, num_views: int = 2):
    self.keys = ("view1", "view2")[:num_views]
    self.image_size = image_size
    self.in_channels = in_channels
    self.area = tuple(area)
    self.aspect = tuple(aspect)
    self.boxes = boxes
    self.crop_alpha = crop_alpha

  def random_map(self, element: dict[str, Any],
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = element["image"]
    kwargs = {}
    if self.boxes is not None and self.boxes.active:
      kwargs["place"] = contrastive_crop.beta_place(
          self.boxes.boxes[element["pool_index"]], self.crop_alpha)
    views = {}
    for key in self.keys:
      # Crop the uint8 image first: resizing a small window is far cheaper
      # than converting the whole image to float, and channel conversion
      # commutes with the (linear) bilinear resize.
      view = crops.random_resized_crop(image, rng, self.image_size, self.area,
                                       self.aspect, **kwargs)
      views[key] = crops.to_float(view, self.in_channels)
    if "norm" in element:
      views["norm"] = element["norm"]
    return views


class FittedImage:
  """Per-record transform for device crops: the image fitted into a fixed
  `size` canvas (`crops.fit_into`) with its 'extent', plus 'norm' if the
  record has it. Run once per record and cached (`CachedRecords`)."""

  def __init__(self, size: int, in_channels: int, then=None):
    self.size = size
    self.in_channels = in_channels
    self.then = then  # e.g. `preprocess.Preprocess.record`, run first

  def __call__(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
    if self.then is not None:
      record = self.then(record)
    image, extent = crops.fit_into(np.asarray(record["image"]), self.size,
                                   self.in_channels)
    out = {"image": image, "extent": extent}
    if "norm" in record:
      out["norm"] = record["norm"]
    return out


class _PoolIndex(grain.transforms.MapWithIndex):
  """Tags a record with its position in the (concatenated) pool.

  Grain's epoch-aware shuffle asks its parent for `index + epoch * len`, so
  the position is the index modulo the pool size.
  """

  def __init__(self, pool_size: int):
    self.pool_size = pool_size

  def map_with_index(self, index: int,
                     element: dict[str, Any]) -> dict[str, Any]:
    return dict(element, pool_index=index % self.pool_size)


PATCH_SAMPLING = ("uniform", "fov")


class _LabeledPatch(grain.transforms.RandomMap):
  """A random crop_size patch with its mask and FOV weight.

  `sampling`: 'uniform' places the patch anywhere in the image; 'fov' redraws
  it until its centre lies inside the field of view.
  """

  def __init__(self, crop_size: int, in_channels: int,
               sampling: str = "uniform"):
    if sampling not in PATCH_SAMPLING:
      raise ValueError(f"patch sampling must be one of {PATCH_SAMPLING}, "
                       f"got {sampling!r}")
    self.crop_size = crop_size
    self.in_channels = in_channels
    self.centre_in = "fov" if sampling == "fov" else None

  def random_map(self, element: dict[str, Any],
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    patch = crops.random_crop(
        {"image": element["image"], "mask": element["mask"],
         "fov": element["fov"]}, rng, self.crop_size,
        centre_in=self.centre_in)
    out = {
        "image": crops.to_float(patch["image"], self.in_channels),
        "mask": patch["mask"].astype(np.int32),
        "weight": patch["fov"].astype(np.float32),
    }
    if "norm" in element:
      out["norm"] = element["norm"]
    return out


# Decoded records kept in memory per source wrapper (per process / worker).
# Decoding a 584x565 record costs ~10 ms (zlib + proto) against ~0.1 ms for
# a crop, and the sets here are small (tens of images, ~1 MB each decoded), so
# after the first epoch every read is a memory lookup.
_CACHE_BUDGET_BYTES = 512 * 2**20
# Device crops cache the fitted uint8 canvases (1,600 pool images at 448 px
# are 0.96 GB); past the budget a record is decoded and fitted again on
# every read, the host work the device mode exists to avoid.
_DEVICE_CROPS_CACHE_BYTES = 4 * 2**30


class CachedRecords:
  """Random-access view of `source` (optionally only records `indices`).

  Grain's MapDataset only slices by ranges, so an arbitrary labelled subset
  needs a wrapper anyway; it also caches decoded records up to a byte budget.
  Picklable for Grain workers, which each start with an empty cache.
  """

  def __init__(self, source: Sequence, indices: Sequence[int] | None = None,
               budget_bytes: int = _CACHE_BUDGET_BYTES, transform=None):
    self._source = source
    # Per-record work done once and cached (`preprocess.Preprocess.record`).
    self._transform = transform
    self._indices = (list(range(len(source))) if indices is None else
                     [int(i) for i in indices])
    self._budget_bytes = budget_bytes
    self._cache = {}
    self._cached_bytes = 0

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int):
    record = self._cache.get(index)
    if record is None:
      record = self._source[self._indices[index]]
      if self._transform is not None:
        record = self._transform(record)
      size = sum(getattr(v, "nbytes", 0) for v in record.values())
      # Racing reader threads may both insert; the budget is approximate.
      if self._cached_bytes + size <= self._budget_bytes:
        self._cache[index] = record
        self._cached_bytes += size
    return record

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_cache"], state["_cached_bytes"] = {}, 0
    return state


class _Epochs(grain.MapDataset):
  """Endless epochs of the parent, each in its own seeded random order.

  Element i is element order_e[i % per_epoch] of the parent, where
  e = i // per_epoch and order_e is a permutation drawn from (seed, e); with
  per_epoch < len(parent) each epoch is cut to its first per_epoch elements.
  Grain's `shuffle()` draws each index with a cipher whose cost grows as the
  dataset shrinks (10 ms an element for 2 images, slower than the training
  step); a permutation per epoch costs microseconds.
  """

  def __init__(self, parent: grain.MapDataset, seed: int, per_epoch: int):
    super().__init__(parent)
    self._seed = seed
    self._per_epoch = per_epoch
    self._orders = {}

  def __len__(self) -> int:
    return sys.maxsize

  def _order(self, epoch: int) -> np.ndarray:
    order = self._orders.get(epoch)
    if order is None:
      order = np.random.default_rng([self._seed, epoch]).permutation(
          len(self._parent))
      if len(self._orders) >= 4:  # reader threads are within an epoch or two
        self._orders.clear()
      self._orders[epoch] = order
    return order

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, position = divmod(index, self._per_epoch)
    return self._parent[int(self._order(epoch)[position])]


def shuffled(dataset: grain.MapDataset, *, seed: int) -> grain.MapDataset:
  """Endless epochs of `dataset`, reshuffled every epoch."""
  return _Epochs(dataset.seed(seed), seed, len(dataset))


def shuffled_epochs(dataset: grain.MapDataset, *, seed: int,
                    global_batch: int, what: str) -> grain.MapDataset:
  """Endless reshuffled epochs of `dataset` in which no batch repeats one.

  Plain shuffle-then-repeat lets a batch span two epochs, so it can hold an
  element twice, and contrastive losses (NT-Xent, MoCo, AdCo) then treat an
  image as a negative of itself. Each epoch here is cut to the largest
  multiple of the global batch; the few elements dropped differ from epoch
  to epoch because every epoch is shuffled anew.

  Args:
    dataset: the pool (images, slices or slice groups).
    seed: shuffle seed.
    global_batch: elements per global batch (all processes).
    what: names the pool and the setting to change in the error.

  Raises:
    DataError: the pool is smaller than one global batch.
  """
  size = len(dataset)
  per_epoch = size // global_batch * global_batch
  if per_epoch == 0:
    raise readers.DataError(
        f"{what} has {size} elements, fewer than the global batch of "
        f"{global_batch}: every batch would hold an element twice, which "
        "contrastive losses treat as its own negative. Lower "
        "config.batch_size or add images to the pool.")
  return _Epochs(dataset.seed(seed), seed, per_epoch)


def _check_process(process_index: int, process_count: int) -> None:
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, "
                     f"{process_count})")


def batch_for_process(dataset: grain.MapDataset, local_batch: int,
                      process_index: int, process_count: int,
                      worker_count: int) -> grain.IterDataset:
  """Shared tail: batch, this process's share, iterator, optional workers."""
  if local_batch < 1:
    raise ValueError(f"local_batch must be >= 1, got {local_batch}")
  _check_process(process_index, process_count)
  dataset = dataset.batch(local_batch, drop_remainder=True)
  dataset = dataset[process_index::process_count]
  # Reader threads build whole local batches in parallel. Two in flight keep
  # the device fed; Grain's default buffer (500 elements) would hold hundreds
  # of MB of float crops.
  read_options = grain.ReadOptions(
      num_threads=max(1, min(8, os.cpu_count() or 1)),
      prefetch_buffer_size=2)
  iter_ds = dataset.to_iter_dataset(read_options)
  if worker_count > 0:
    if not flags.FLAGS.is_parsed():
      # Grain's workers read absl flags; outside an absl app (notebooks,
      # tests) nothing parsed them, so use their defaults.
      flags.FLAGS.mark_as_parsed()
    iter_ds = iter_ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=worker_count))
  return iter_ds


def concatenated(sources) -> grain.MapDataset:
  """One MapDataset over random-access sources, one after the other."""
  datasets = [grain.MapDataset.source(s) for s in sources]
  return (datasets[0] if len(datasets) == 1 else
          grain.MapDataset.concatenate(datasets))


def pretrain_dataset(data_dir: pathlib.Path | str, sources: str, *,
                     image_size: int, in_channels: int,
                     area: tuple[float, float], aspect: tuple[float, float],
                     local_batch: int, seed: int, process_index: int = 0,
                     process_count: int = 1, worker_count: int = 0,
                     boxes=None, crop_alpha: float = 1.0,
                     preprocess=None, device_crops: int = 0,
                     num_views: int = 2) -> grain.IterDataset:
  """Endless batches of two random resized crops per image (masks ignored).

  Args:
    data_dir: root of the prepared sets.
    sources: comma list of `name:split`, e.g. 'drive:train,hrf:train'.
    image_size: side of each view.
    in_channels: 1 or 3; images are converted to it.
    area: crop area range as a fraction of the image.
    aspect: crop width/height ratio range.
    local_batch: examples per batch on this process.
    seed: pipeline seed (shuffling and crops).
    process_index: this JAX process.
    process_count: number of JAX processes.
    worker_count: Grain worker processes (0: in this process).
    boxes: optional `contrastive_crop.BoxTable` over the pool, in the order
      of `sources` (ContrastiveCrop); read when crops are made.
    crop_alpha: ContrastiveCrop's Beta(alpha, alpha) centre parameter.
    preprocess: optional `preprocess.Preprocess` run once per record
      (resampling; normalisation stats shipped as 'norm').
    device_crops: 0 for host crops; else the side of the canvas each image
      is fitted into (`FittedImage`) for `medclr.augment.crops`, which then
      cuts the views on the device (`boxes` must be None).
    num_views: 2, or 1 for methods that view one crop twice (host crops).

  Returns:
    IterDataset of dict(view1, view2), each float32 (b, S, S, C) in [0, 1]
    (device crops: dict(image, extent), uint8 (b, D, D, C) and int32
    (b, 2)), and 'norm' (b, 2, C) when `preprocess` is given.
    `iter()` of it supports get_state()/set_state().
  """
  transform = preprocess.record if preprocess is not None else None
  budget = _CACHE_BUDGET_BYTES
  if device_crops:
    if boxes is not None:
      raise ValueError("device crops take no ContrastiveCrop boxes")
    transform = FittedImage(device_crops, in_channels, then=transform)
    budget = _DEVICE_CROPS_CACHE_BYTES
  dataset = concatenated(
      CachedRecords(s, transform=transform, budget_bytes=budget)
      for s in sources_lib.open_sources(data_dir, sources))
  if boxes is not None:  # ContrastiveCrop reads each image's box by index
    dataset = dataset.map_with_index(_PoolIndex(len(dataset)))
  dataset = shuffled_epochs(
      dataset, seed=seed, global_batch=local_batch * process_count,
      what=f"pool {sources!r}")
  if not device_crops:
    dataset = dataset.random_map(
        TwoViews(image_size, in_channels, area, aspect, boxes, crop_alpha,
                 num_views))
  return batch_for_process(dataset, local_batch, process_index,
                           process_count, worker_count)


def finetune_dataset(data_dir: pathlib.Path | str, name: str, split: str, *,
                     indices: Sequence[int], crop_size: int, in_channels: int,
                     local_batch: int, seed: int, process_index: int = 0,
                     process_count: int = 1, worker_count: int = 0,
                     preprocess=None,
                     patch_sampling: str = "uniform") -> grain.IterDataset:
  """Endless batches of random labelled patches from records `indices`.

  Args:
    data_dir: root of the prepared sets.
    name: the set, e.g. 'drive'.
    split: its split, e.g. 'train'.
    indices: record indices to use (the labelled subset, see choose_labeled).
    crop_size: patch side; smaller images are zero-padded (weight 0).
    in_channels: 1 or 3.
    local_batch: examples per batch on this process.
    seed: pipeline seed.
    process_index: this JAX process.
    process_count: number of JAX processes.
    worker_count: Grain worker processes (0: in this process).
    preprocess: optional `preprocess.Preprocess` run once per record.
    patch_sampling: 'uniform' or 'fov' (patch centres inside the FOV).

  Returns:
    IterDataset of dict(image float32 (b,P,P,C), mask int32 (b,P,P),
    weight float32 (b,P,P) = field of view[, norm float32 (b,2,C)]).
  """
  source = sources_lib.open_split(data_dir, name, split)
  dataset = _labeled_patches(source, f"{name}:{split}", indices, crop_size,
                             in_channels, seed, preprocess, patch_sampling)
  return batch_for_process(dataset, local_batch, process_index,
                           process_count, worker_count)


def _records(source, where: str, indices: Sequence[int], preprocess):
  """MapDataset of the (preprocessed, cached) records `indices`."""
  indices = list(indices)
  if not indices:
    raise readers.DataError(f"no record indices given for {where}")
  bad = [i for i in indices if not 0 <= i < len(source)]
  if bad:
    raise readers.DataError(
        f"record indices {bad[:5]} out of range for {where} "
        f"({len(source)} records)")
  transform = preprocess.record if preprocess is not None else None
  return grain.MapDataset.source(
      CachedRecords(source, indices, transform=transform))


def _labeled_patches(source, where, indices, crop_size, in_channels, seed,
                     preprocess, patch_sampling):
  """Endless random labelled patches (not batched)."""
  return shuffled(_records(source, where, indices, preprocess),
                  seed=seed).random_map(
                      _LabeledPatch(crop_size, in_channels, patch_sampling))


def choose_labeled(source: Sequence[dict[str, Any]], num_labeled: int,
                   seed: int, key: str = "num_labeled") -> list[int]:
  """Picks the labelled subset for few-label fine-tuning.

  The draw is among the records that have a mask, ordered by stem before
  the seeded permutation, so the choice depends only on (labelled stems,
  num_labeled, seed), not on how TFDS ordered them, nor on unlabelled
  records beside them.

  Args:
    source: the split's records.
    num_labeled: how many to draw.
    seed: the draw's seed.
    key: the config key `num_labeled` came from, named in errors.

  Returns:
    Sorted record indices into `source`.

  Raises:
    DataError: num_labeled is < 1 or more than the labelled records.
  """
  records = []
  for index in range(len(source)):
    record = source[index]
    records.append(
        (sources_lib.stem_of(record), index, bool(record["has_mask"])))
  labeled = sorted(r for r in records if r[2])
  if not 1 <= num_labeled <= len(labeled):
    unlabeled = len(records) - len(labeled)
    extra = (f"; the other {unlabeled} have no mask" if unlabeled else "")
    choose = (f"choose 1..{len(labeled)}" if labeled else
              "fine-tune on a labelled split")
    raise readers.DataError(
        f"{key}={num_labeled} but the split has {len(records)} records, "
        f"{len(labeled)} of them labelled{extra}; {choose}")
  order = np.random.default_rng(seed).permutation(len(labeled))
  return sorted(labeled[k][1] for k in order[:num_labeled])


def check_mask_classes(source: Sequence[dict[str, Any]],
                       indices: Sequence[int], num_classes: int,
                       where: str) -> None:
  """Requires every mask of `indices` to hold classes the model predicts.

  A binary model (num_classes 1) takes masks of 0/1; a model of K >= 2
  classes takes 0..K-1. A mask value beyond would be a target no logit
  stands for: silently wrong with one-hot targets, out of range for the
  binary loss.

  Raises:
    DataError: naming the records, the values found and
      config.model.num_classes.
  """
  allowed = max(2, num_classes)
  bad = []
  for index in indices:
    record = source[index]
    values = np.unique(np.asarray(record["mask"]))
    if values.size and values.max() >= allowed:
      bad.append((sources_lib.stem_of(record), values))
  if bad:
    shown = "; ".join(
        f"{stem}: {', '.join(map(str, values[:6]))}"
        f"{', ...' if len(values) > 6 else ''}" for stem, values in bad[:3])
    kind = ("a binary model (0/1 masks)" if num_classes == 1 else
            f"classes 0..{num_classes - 1}")
    raise readers.DataError(
        f"{where}: {len(bad)} labelled mask(s) hold values beyond "
        f"config.model.num_classes={num_classes}, {kind} ({shown}); set "
        "config.model.num_classes to the number of classes including "
        "background, or fine-tune on other masks")


def labeled_by_name(source: Sequence[dict[str, Any]],
                    names: Sequence[str]) -> list[int]:
  """Record indices of the images named `names` (file stems), sorted.

  Raises:
    DataError: a name is not in the split, is given twice, or has no mask.
  """
  by_stem = {}
  for index in range(len(source)):
    record = source[index]
    by_stem[sources_lib.stem_of(record)] = (index, bool(record["has_mask"]))
  repeated = sorted({n for n in names if list(names).count(n) > 1})
  if repeated:
    raise readers.DataError(
        f"config.data.labeled names {repeated} more than once")
  missing = [n for n in names if n not in by_stem]
  if missing:
    raise readers.DataError(
        f"config.data.labeled: {missing[:5]} not in the split; its images "
        f"are {sorted(by_stem)[:8]}{' ...' if len(by_stem) > 8 else ''}")
  unlabeled = [n for n in names if not by_stem[n][1]]
  if unlabeled:
    raise readers.DataError(
        f"config.data.labeled: {unlabeled[:5]} have no mask; fine-tune on a "
        "labelled split")
  return sorted(by_stem[n][0] for n in names)


class _UnlabeledPatch(grain.transforms.RandomMap):
  """A random patch of an unlabelled image with its FOV weight, its keys
  prefixed 'unlabeled_' so it can sit beside a labelled patch."""

  def __init__(self, crop_size: int, in_channels: int):
    self.crop_size = crop_size
    self.in_channels = in_channels

  def random_map(self, element: dict[str, Any],
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    patch = crops.random_crop(
        {"image": element["image"], "fov": element["fov"]}, rng,
        self.crop_size)
    out = {"unlabeled_image": crops.to_float(patch["image"],
                                             self.in_channels),
           "unlabeled_weight": patch["fov"].astype(np.float32)}
    if "norm" in element:
      out["unlabeled_norm"] = element["norm"]
    return out


class _Merged(grain.MapDataset):
  """Element i is the union of element i of two endless datasets."""

  def __init__(self, first: grain.MapDataset, second: grain.MapDataset):
    super().__init__([first, second])

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return {**self._parents[0][index], **self._parents[1][index]}


def semi_supervised_dataset(data_dir: pathlib.Path | str, name: str,
                            split: str, *, indices: Sequence[int],
                            unlabeled_indices: Sequence[int], crop_size: int,
                            in_channels: int, local_batch: int, seed: int,
                            process_index: int = 0, process_count: int = 1,
                            worker_count: int = 0, preprocess=None,
                            patch_sampling: str = "uniform"
                            ) -> grain.IterDataset:
  """`finetune_dataset`'s labelled batches, each with as many unlabelled
  patches ('unlabeled_image', 'unlabeled_weight'[, 'unlabeled_norm']) cut
  from the records `unlabeled_indices` of the same split."""
  source = sources_lib.open_split(data_dir, name, split)
  where = f"{name}:{split}"
  if not list(unlabeled_indices):
    raise readers.DataError(
        f"{where} has no images left to use as unlabelled data: all "
        f"{len(source)} are labelled. Lower config.data.num_labeled or turn "
        "semi-supervised training off (config.semi.mode='').")
  unlabeled = _records(source, where, unlabeled_indices, preprocess)
  dataset = _Merged(
      _labeled_patches(source, where, indices, crop_size, in_channels, seed,
                       preprocess, patch_sampling),
      shuffled(unlabeled, seed=seed + 1).random_map(
          _UnlabeledPatch(crop_size, in_channels)))
  return batch_for_process(dataset, local_batch, process_index,
                           process_count, worker_count)
