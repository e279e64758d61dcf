"""Tests for medclr.data.fov: FOV estimation and FOV diameter."""
import logging
import os
import pathlib
import time

import numpy as np
from PIL import Image
import pytest

from medclr.data import fov as fov_lib
from medclr.data import phantom
from medclr.data import readers

DataError = readers.DataError

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
_SHARED_DATA = pathlib.Path(
    os.environ.get("MEDCLR_SHARED_DATA", _REPO_ROOT.parent / "shared" / "data"))
_MIN_IOU = 0.97


def _iou(a: np.ndarray, b: np.ndarray) -> float:
  a, b = a.astype(bool), b.astype(bool)
  return float((a & b).sum() / (a | b).sum())


def _disc_mask(height: int, width: int, radius: float,
               centre: tuple[float, float] | None = None) -> np.ndarray:
  cy, cx = centre if centre is not None else ((height - 1) / 2,
                                               (width - 1) / 2)
  y, x = np.mgrid[:height, :width]
  return np.hypot(y - cy, x - cx) <= radius


def _fundus_like(height: int = 480, width: int = 520, radius: float = 220,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """uint8 RGB: a vignetted, noisy reddish disc with a dark vessel on black.

  Returns:
    (image, disc) with disc the bool (H, W) true field of view.
  """
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:height, :width]
  cy, cx = (height - 1) / 2, (width - 1) / 2
  r = np.hypot(y - cy, x - cx) / radius
  disc = r <= 1.0
  shading = 1.0 - 0.5 * r**2  # Dim rim, as in a real fundus photo.
  image = np.array([0.75, 0.38, 0.15])[None, None] * shading[..., None]
  # A dark vessel-like curve crossing the disc, 4 px wide.
  curve = cy + 0.4 * radius * np.sin((x - cx) / radius * 2.0)
  vessel = disc & (np.abs(y - curve) < 2.0)
  image[vessel] *= 0.35
  image += rng.normal(0.0, 0.03, image.shape)
  image = np.where(disc[..., None], image,
                   0.02 + rng.normal(0.0, 0.01, image.shape))
  return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), disc


# ---------------------------------------------------------------------------
# Synthetic images (no data needed).


class TestEstimateFov:

  def test_bright_disc_on_black(self, caplog):
    image, disc = _fundus_like()
    with caplog.at_level(logging.WARNING, logger="medclr.data.fov"):
      fov = fov_lib.estimate_fov(image)
    assert fov.shape == disc.shape and fov.dtype == np.uint8
    assert set(np.unique(fov)) == {0, 1}
    assert _iou(fov, disc) > 0.98
    assert not caplog.records  # A real frame: no fallback.

  def test_disc_cut_by_frame_top_and_bottom(self):
    image, disc = _fundus_like(height=400, width=560, radius=240, seed=1)
    fov = fov_lib.estimate_fov(image)
    assert disc[0].any() and disc[-1].any()  # The frame cuts the disc.
    assert _iou(fov, disc) > 0.98

  def test_input_forms_agree(self):
    image, _ = _fundus_like(seed=2)
    expected = fov_lib.estimate_fov(image)
    np.testing.assert_array_equal(fov_lib.estimate_fov(image / 255.0),
                                  expected)
    red = image[..., 0]
    np.testing.assert_array_equal(fov_lib.estimate_fov(red), expected)
    np.testing.assert_array_equal(fov_lib.estimate_fov(red[..., None]),
                                  expected)

  def test_large_image_is_analysed_downscaled(self):
    image, disc = _fundus_like(height=1300, width=1500, radius=620, seed=3)
    fov = fov_lib.estimate_fov(image)
    assert fov.shape == disc.shape
    assert _iou(fov, disc) > 0.98

  def test_phantom_fov(self):
    for example in phantom.generate(4, 256, seed=0):
      assert _iou(fov_lib.estimate_fov(example["image"]), example["fov"]) > 0.98

  @pytest.mark.parametrize("kind, reason", [
      ("texture", "no dark frame"),  # Bright noise and a dark line, no frame.
      ("vignetted", "no sharp FOV edge"),  # Black corners, but no rim.
      ("ramp", "no dark frame"),
      ("uniform", "nearly uniform"),
      ("black", "nearly uniform"),
  ])
  def test_no_dark_border_falls_back_to_whole_frame(self, kind, reason,
                                                    caplog):
    rng = np.random.default_rng(0)
    height, width = 584, 565
    y, x = np.mgrid[:height, :width]
    r = np.hypot(y - height / 2, x - width / 2) / np.hypot(height / 2,
                                                           width / 2)
    noise = rng.normal(0, 0.02, (height, width))
    if kind == "texture":
      image = rng.uniform(0.4, 1.0, (height, width, 3))
      image[np.abs(y - 0.5 * x - 40) < 2] = 0.05
    elif kind == "vignetted":  # Falls from 0.9 to 0.03 over the whole image.
      image = np.clip(0.03 + 0.87 * (1 - r**2)**2 + noise, 0, 1)
    elif kind == "ramp":
      image = np.clip(0.15 + 0.7 * x / width + noise, 0, 1)
    elif kind == "uniform":
      image = np.full((height, width, 3), 0.6)
    else:
      image = np.zeros((height, width))
    with caplog.at_level(logging.WARNING, logger="medclr.data.fov"):
      fov = fov_lib.estimate_fov(image)
    assert fov.dtype == np.uint8 and fov.shape == (height, width)
    assert fov.all()
    assert reason in caplog.text and "using the whole 565x584" in caplog.text

  def test_small_bright_spot_falls_back(self, caplog):
    image = np.zeros((200, 200), np.uint8)
    image[80:120, 80:120] = 200  # 4% of the image: not an FOV.
    with caplog.at_level(logging.WARNING, logger="medclr.data.fov"):
      assert fov_lib.estimate_fov(image).all()
    assert "using the whole 200x200" in caplog.text

  @pytest.mark.parametrize("shape", [(10,), (4, 5, 2), (4, 5, 4), (2, 4, 5, 3),
                                     (0, 5), (5, 0, 3)])
  def test_bad_shape_raises(self, shape):
    with pytest.raises(DataError, match="expected an image"):
      fov_lib.estimate_fov(np.zeros(shape, np.uint8))

  def test_bad_dtype_or_range_raises(self):
    with pytest.raises(DataError, match="dtype int16"):
      fov_lib.estimate_fov(np.zeros((8, 8), np.int16))
    with pytest.raises(DataError, match=r"in \[0, 1\]"):
      fov_lib.estimate_fov(np.full((8, 8), 2.0))
    with pytest.raises(DataError, match=r"in \[0, 1\]"):
      fov_lib.estimate_fov(np.full((8, 8), np.nan))


class TestFovDiameter:

  @pytest.mark.parametrize("radius", [60, 150, 300])
  def test_disc_cut_by_frame_top_and_bottom(self, radius):
    # The frame keeps only the middle 80% of the disc's height.
    height, width = int(1.6 * radius), 2 * radius + 40
    disc = _disc_mask(height, width, radius)
    assert disc[0].any() and disc[-1].any()
    diameter = fov_lib.fov_diameter(disc.astype(np.uint8))
    assert abs(diameter - 2 * radius) <= 0.02 * 2 * radius
    # What the cut does to the area-based estimate, for comparison.
    assert 2 * np.sqrt(disc.sum() / np.pi) < 0.95 * 2 * radius

  def test_disc_cut_on_all_sides(self):
    disc = _disc_mask(500, 500, 300)  # Octagon-like: cut by all four edges.
    assert abs(fov_lib.fov_diameter(disc) - 600) <= 12

  def test_whole_disc_and_estimate(self):
    assert abs(fov_lib.fov_diameter(_disc_mask(300, 300, 100)) - 200) <= 4
    image, disc = _fundus_like()
    estimated = fov_lib.fov_diameter(fov_lib.estimate_fov(image))
    assert abs(estimated - fov_lib.fov_diameter(disc)) <= 0.01 * 440

  def test_not_round_gives_widest_extent(self):
    assert fov_lib.fov_diameter(np.ones((50, 80), np.uint8)) == 80.0
    box = np.zeros((100, 120), np.uint8)
    box[10:70, 20:110] = 1
    assert fov_lib.fov_diameter(box) == 90.0

  def test_bad_input_raises(self):
    with pytest.raises(DataError, match="2-D"):
      fov_lib.fov_diameter(np.ones((4, 4, 1)))
    with pytest.raises(DataError, match="empty mask"):
      fov_lib.fov_diameter(np.zeros((4, 4)))


# ---------------------------------------------------------------------------
# Official FOV masks of DRIVE and STARE (../shared/data); skipped when absent.


def _drive_pairs(root: pathlib.Path) -> list[tuple[pathlib.Path, pathlib.Path]]:
  pairs = []
  for split in ("training", "test"):
    for image in sorted((root / split / "images").glob("*.tif")):
      pairs.append((image, root / split / "mask" / f"{image.stem}_mask.gif"))
  return pairs


def _stare_pairs(root: pathlib.Path) -> list[tuple[pathlib.Path, pathlib.Path]]:
  pairs = []
  for split in ("train", "test"):
    for image in sorted((root / split / "images").glob("*.png")):
      pairs.append((image, root / split / "fov" / image.name))
  return pairs


@pytest.mark.real_data
@pytest.mark.parametrize("dataset, folder, pairs_fn, count", [
    ("DRIVE", "drive", _drive_pairs, 40),
    ("STARE", "stare", _stare_pairs, 20),
])
def test_iou_against_official_masks(dataset, folder, pairs_fn, count):
  root = _SHARED_DATA / folder
  if not root.is_dir():
    pytest.skip(f"{dataset} not found at {root} (real data lives in "
                "../shared/data next to the repository, or set "
                "MEDCLR_SHARED_DATA); skipping the official-mask comparison")
  pairs = pairs_fn(root)
  assert len(pairs) == count, f"expected {count} {dataset} images in {root}"
  ious, diameters, seconds = {}, [], []
  for image_path, mask_path in pairs:
    image = readers.load_image(image_path)
    official = np.asarray(Image.open(mask_path).convert("L")) > 127
    start = time.perf_counter()
    estimate = fov_lib.estimate_fov(image)
    seconds.append(time.perf_counter() - start)
    ious[image_path.stem] = _iou(estimate, official)
    diameters.append(fov_lib.fov_diameter(estimate))
  worst = min(ious, key=ious.get)
  summary = (f"{dataset}: FOV IoU mean {np.mean(list(ious.values())):.4f}, "
             f"min {ious[worst]:.4f} ({worst}); mean FOV diameter "
             f"{np.mean(diameters):.1f} px; {1e3 * np.mean(seconds):.0f} ms "
             "per image")
  print(summary)
  assert ious[worst] >= _MIN_IOU, summary
