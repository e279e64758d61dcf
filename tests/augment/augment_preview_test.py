"""The augmentation preview: one row of views per preset, as pretraining
makes them."""
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import REPO_ROOT
from medclr.augment import preview as augment_preview
from medclr.data import crops
from medclr.data import phantom


def test_grid_rows_are_presets_and_views_follow_the_seed():
  image = phantom.generate(1, 64, seed=0)[0]["image"]
  grid, presets = augment_preview.preview_grid(
      image, ["none", "simclr_strong"], num_views=3, size=32, gap=2)
  assert presets == ["none", "simclr_strong"]
  assert grid.shape == (2 * 34 - 2, 3 * 34 - 2, 3) and grid.dtype == np.uint8
  # 'none' keeps the whole image: every view is the image resized.
  whole = (crops.resize_whole(crops.to_float(image, 3), 32) * 255).round()
  for col in range(3):
    view = grid[:32, col * 34:col * 34 + 32].astype(np.float32)
    np.testing.assert_allclose(view, whole, atol=1)
  # simclr_strong views differ from each other and are fixed by the seed.
  strong = augment_preview.preset_views(image, "simclr_strong", num_views=3,
                                        size=32, seed=5)
  assert not np.allclose(strong[0], strong[1])
  np.testing.assert_array_equal(
      strong, augment_preview.preset_views(image, "simclr_strong",
                                           num_views=3, size=32, seed=5))


def test_preview_command_writes_png_and_names_bad_presets(tmp_path):
  out = tmp_path / "p.png"
  base = [sys.executable, "-m", "launch.preview_augment",
          f"--data_dir={tmp_path / 'data'}", "--views=2", "--size=32"]
  result = subprocess.run(base + [f"--out={out}",
                                  "--presets=basic_medical,none"],
                          cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert Image.open(out).size == (2 * 36 - 4, 2 * 36 - 4)
  assert "rows basic_medical, none" in result.stdout
  bad = subprocess.run(base + [f"--out={tmp_path / 'q.png'}",
                               "--presets=simclr_strng"],
                       cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=300)
  assert bad.returncode != 0 and "simclr_strng" in bad.stderr
  assert not (tmp_path / "q.png").exists()
