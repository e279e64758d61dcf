"""Multi-crop host pipeline (DINO; Caron et al. 2021, docs/methods/dino.md).

Each image gives 2 global crops at `global_size` with area fraction in
`global_scale` and N local crops at `local_size` with area in `local_scale`,
all torchvision RandomResizedCrop windows (`crops.random_resized_crop`), as
facebookresearch/dino main_dino.py `DataAugmentationDINO` makes them; the
colour, blur and solarisation of each crop run later on device.

The pipeline order is `pipeline.pretrain_dataset`'s (source -> seed,
shuffle, repeat -> per-example random crops -> pipeline's shared tail of
batching, process split and workers), so it keeps the same determinism,
resumability and host-count independence.
"""
import pathlib
from typing import Any

import grain
import numpy as np

from medclr.data import crops
from medclr.data import pipeline
from medclr.data import sources as sources_lib

GLOBAL_KEYS = ("global_0", "global_1")


def local_keys(num_local: int) -> tuple[str, ...]:
  """Batch keys of the local crops: local_0 .. local_{N-1}."""
  return tuple(f"local_{j}" for j in range(num_local))


class MultiCrop(grain.transforms.RandomMap):
  """2 global + N local random resized crops of one image."""

  def __init__(self, *, global_size: int, local_size: int, num_local: int,
               in_channels: int, global_scale: tuple[float, float],
               local_scale: tuple[float, float],
               aspect: tuple[float, float]):
    self.global_size = global_size
    self.local_size = local_size
    self.num_local = num_local
    self.in_channels = in_channels
    self.global_scale = tuple(global_scale)
    self.local_scale = tuple(local_scale)
    self.aspect = tuple(aspect)

  def _crop(self, image, rng, size, scale):
    # Crop the uint8 image first, convert channels after (as TwoViews).
    view = crops.random_resized_crop(image, rng, size, scale, self.aspect)
    return crops.to_float(view, self.in_channels)

  def random_map(self, element: dict[str, Any],
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = element["image"]
    out = {key: self._crop(image, rng, self.global_size, self.global_scale)
           for key in GLOBAL_KEYS}
    for key in local_keys(self.num_local):
      out[key] = self._crop(image, rng, self.local_size, self.local_scale)
    if "norm" in element:
      out["norm"] = element["norm"]
    return out


def _check_scale(name: str, scale) -> None:
  if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
    raise ValueError(f"{name} must be (lo, hi) with 0 < lo <= hi <= 1, got "
                     f"{tuple(scale)}")


def multicrop_dataset(data_dir: pathlib.Path | str, sources: str, *,
                      global_size: int, local_size: int, num_local: int,
                      in_channels: int, global_scale: tuple[float, float],
                      local_scale: tuple[float, float],
                      aspect: tuple[float, float], local_batch: int,
                      seed: int, process_index: int = 0,
                      process_count: int = 1, worker_count: int = 0,
                      preprocess=None) -> grain.IterDataset:
  """Endless batches of DINO multi-crops (masks ignored).

  Args:
    data_dir: root of the prepared sets.
    sources: comma list of `name:split`, e.g. 'drive:train,hrf:train'.
    global_size: side of the two global crops.
    local_size: side of the local crops.
    num_local: number of local crops per image (0 allowed).
    in_channels: 1 or 3; images are converted to it.
    global_scale: area range of the global crops, fraction of the image.
    local_scale: area range of the local crops.
    aspect: crop width/height ratio range (torchvision (3/4, 4/3)).
    local_batch: examples per batch on this process.
    seed: pipeline seed (shuffling and crops).
    process_index: this JAX process.
    process_count: number of JAX processes.
    worker_count: Grain worker processes (0: in this process).
    preprocess: optional `preprocess.Preprocess` run once per record.

  Returns:
    IterDataset of dict(global_0, global_1: float32 (b, G, G, C);
    local_0 .. local_{N-1}: float32 (b, L, L, C)), in [0, 1]. `iter()` of it
    supports get_state()/set_state().

  Raises:
    ValueError: a size, count or scale range is invalid.
  """
  if global_size < 1 or local_size < 1:
    raise ValueError(f"crop sizes must be >= 1, got global_size={global_size}"
                     f", local_size={local_size}")
  if num_local < 0:
    raise ValueError(f"num_local must be >= 0, got {num_local}")
  _check_scale("global_scale", global_scale)
  _check_scale("local_scale", local_scale)
  # pipeline's record cache and batching tail, shared so both pretraining
  # pipelines read, batch and split across processes alike.
  # pylint: disable=protected-access
  transform = preprocess.record if preprocess is not None else None
  dataset = pipeline.concatenated(
      pipeline.CachedRecords(s, transform=transform)
      for s in sources_lib.open_sources(data_dir, sources))
  dataset = pipeline.shuffled_epochs(
      dataset, seed=seed, global_batch=local_batch * process_count,
      what=f"pool {sources!r}")
  dataset = (
      dataset
      .random_map(MultiCrop(global_size=global_size, local_size=local_size,
                            num_local=num_local, in_channels=in_channels,
                            global_scale=global_scale,
                            local_scale=local_scale, aspect=aspect)))
  return pipeline.batch_for_process(dataset, local_batch, process_index,
                                    process_count, worker_count)
