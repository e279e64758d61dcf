"""What each augmentation preset does to one image: a grid of its views.

The views go through the same two stages as pretraining: the host crop
(`crops.random_resized_crop` with the preset's area and aspect ranges) and
the device augmentation (`augment.augment_view`). Rows are presets, columns
views. Used by `python -m launch.preview_augment` and the study notebook.
"""
import jax
import numpy as np

from medclr.augment import ops as augment
from medclr.data import crops
from medclr.data import prepare as data_prepare
from medclr.data import readers
from medclr.data import sources


def dataset_image(data_dir, dataset, split, index):
  """Record `index` of a prepared split, as uint8 (H, W, C).

  The phantom is written on first use; other sets must be prepared.
  Raises readers.DataError naming the set and its size if `index` is out
  of range.
  """
  data_prepare.ensure_phantom(data_dir, [dataset])
  source = sources.open_split(data_dir, dataset, split)
  if not 0 <= index < len(source):
    raise readers.DataError(f"--index={index}: {dataset}:{split} has "
                            f"{len(source)} records")
  return np.asarray(source[index]["image"])


def check_presets(presets):
  """Raises ValueError naming unknown preset names."""
  unknown = sorted(set(presets) - set(augment.PRESETS))
  if unknown:
    raise ValueError(f"--presets: unknown {unknown}; known: "
                     f"{sorted(augment.PRESETS)}")


def preset_views(image, preset, *, num_views=6, size=96, strength=1.0,
                 seed=0):
  """(num_views, size, size, C) float32 views of `image` under `preset`.

  Args:
    image: (H, W, C) uint8 or float in [0, 1].
    preset: a key of `augment.PRESETS`.
    num_views, size: how many views, of which side.
    strength: `config.augment.strength`.
    seed: views are a function of the seed.
  """
  spec = augment.get_spec(preset, strength)
  rng = np.random.default_rng(seed)
  keys = jax.random.split(jax.random.key(seed), num_views)
  views = []
  for key in keys:
    crop = crops.random_resized_crop(np.asarray(image), rng, size,
                                     area=spec.crop_area,
                                     aspect=spec.crop_aspect)
    views.append(np.asarray(augment.augment_view(key, crop, spec)))
  return np.stack(views)


def preview_grid(image, presets=None, *, num_views=6, size=96, strength=1.0,
                 seed=0, gap=4):
  """One uint8 mosaic: a row of views per preset, `gap` white pixels apart.

  Returns:
    (mosaic (rows * (size + gap) - gap, cols * (size + gap) - gap, C) uint8,
     the presets in row order).
  """
  presets = list(presets or augment.PRESETS)
  rows = [preset_views(image, p, num_views=num_views, size=size,
                       strength=strength, seed=seed) for p in presets]
  channels = rows[0].shape[-1]
  step = size + gap
  mosaic = np.ones((len(rows) * step - gap, num_views * step - gap, channels),
                   np.float32)
  for r, views in enumerate(rows):
    for c, view in enumerate(views):
      mosaic[r * step:r * step + size, c * step:c * step + size] = view
  return (np.clip(mosaic, 0, 1) * 255).round().astype(np.uint8), presets
