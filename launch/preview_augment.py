r"""Renders each augmentation preset's views of one image as a PNG grid.

  python -m launch.preview_augment --out=/tmp/presets.png
  python -m launch.preview_augment --dataset=drive --index=3 \
      --presets=simclr_strong,basic_medical --strength=0.5 --out=/tmp/p.png

Rows are presets (top to bottom as listed), columns views. The default image
is the embedded phantom's first training image (generated on first use).
"""
import sys

from absl import app
from absl import flags
from PIL import Image

from launch import cli
from medclr.augment import preview as augment_preview
from medclr.data import readers
from medclr.data import sources

_OUT = flags.DEFINE_string("out", None, "PNG file to write")
_DATASET = flags.DEFINE_string("dataset", "phantom", "a prepared dataset")
_SPLIT = flags.DEFINE_string("split", "train", "its split")
_INDEX = flags.DEFINE_integer("index", 0, "record index in the split")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, f"prepared sets; default ${sources.DATA_DIR_ENV} or "
    "~/medclr_data")
_PRESETS = flags.DEFINE_string("presets", "", "comma list (default: all)")
_VIEWS = flags.DEFINE_integer("views", 6, "views per preset")
_SIZE = flags.DEFINE_integer("size", 96, "view side in pixels")
_STRENGTH = flags.DEFINE_float("strength", 1.0, "config.augment.strength")
_SEED = flags.DEFINE_integer("seed", 0, "views are a function of the seed")
flags.mark_flags_as_required(["out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  presets = [p.strip() for p in _PRESETS.value.split(",") if p.strip()]
  try:
    augment_preview.check_presets(presets)
    image = augment_preview.dataset_image(
        _DATA_DIR.value or sources.default_data_dir(), _DATASET.value,
        _SPLIT.value, _INDEX.value)
    grid, shown = augment_preview.preview_grid(
        image, presets or None, num_views=_VIEWS.value, size=_SIZE.value,
        strength=_STRENGTH.value, seed=_SEED.value)
  except (readers.DataError, ValueError) as e:
    sys.exit(f"error: {e}")
  Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid).save(
      _OUT.value)
  print(f"wrote {_OUT.value}: rows {', '.join(shown)}; {_VIEWS.value} views "
        "each")


if __name__ == "__main__":
  cli.run(main)
