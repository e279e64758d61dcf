"""Hostile inputs: each is accepted with a stated meaning or refused with a
user error (medclr.errors / DataError) naming the file, key or flag and what
was expected, and a refused run leaves nothing half-written behind.

Existing cases live elsewhere and are not repeated here: a corrupt .tif, a
PNG cut to 60 bytes, a mask whose size differs from its image, a missing
mask, palette images without transparency (tests/data/data_test.py); a garbage
NIfTI, mixed DICOM series and a garbage .dcm (tests/data/volumes_test.py).
"""
import io
import os
import pathlib
import re
import subprocess
import sys

import jax
import nibabel as nib
import numpy as np
from PIL import Image
from PIL import ImageFile
from pydicom import uid as dicom_uid
import pytest

from conftest import REPO_ROOT, smoke_config, write_dicom_slice
from medclr import errors
from medclr import sharding
from medclr.data import phantom
from medclr.data import pipeline
from medclr.data import prepare as prepare_lib
from medclr.data import readers
from medclr.data import sources
from medclr.data import tfds_builder
from medclr.data import volume_builder
from medclr.data import volumes
from medclr.evaluate import evaluate
from medclr.train import finetune
from medclr.train import pretrain

DataError = readers.DataError


def _save(path, array, mode=None, **kwargs):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array, mode).save(path, **kwargs)
  return path


def _folder_set(root, image_name="a.png", image=None, mask=None,
                mask_name="a.png"):
  """<root>/train/{images,masks}/ with one good image b and one given one."""
  rng = np.random.default_rng(0)
  good = rng.integers(0, 256, (8, 8), np.uint8)
  _save(root / "train/images/b.png", good)
  _save(root / "train/masks/b.png", (good > 128).astype(np.uint8) * 255)
  if image is not None:
    _save(root / "train/images" / image_name, image)
  if mask is not None:
    _save(root / "train/masks" / mask_name, mask)
  return root


def _encoded(array, fmt, mode=None):
  buffer = io.BytesIO()
  Image.fromarray(array, mode).save(buffer, format=fmt)
  return buffer.getvalue()


def _no_leftovers(data_dir):
  """Nothing but what was there: no records, no staging directory."""
  data_dir = pathlib.Path(data_dir)
  if not data_dir.exists():
    return True
  return not any(p.name.startswith(".medclr-staging") or p.name == "medclr2d"
                 for p in data_dir.iterdir())


# ---------------------------------------------------------------------------
# Corrupt and truncated files.


@pytest.mark.parametrize("fmt, suffix, keep", [
    ("JPEG", ".jpg", 0.5), ("TIFF", ".tif", 0.5), ("GIF", ".gif", 0.5),
    ("PPM", ".ppm", 0.5), ("PNG", ".png", 0.0)])
def test_truncated_or_empty_files_are_named_and_nothing_is_written(
    tmp_path, fmt, suffix, keep):
  root = _folder_set(tmp_path / "set")
  data = _encoded(np.random.default_rng(1).integers(0, 256, (40, 50, 3),
                                                    np.uint8), fmt)
  path = root / "train/images" / f"a{suffix}"
  path.write_bytes(data[:int(len(data) * keep)])
  _save(root / "train/masks/a.png", np.zeros((40, 50), np.uint8))
  with pytest.raises(DataError, match=rf"cannot decode .*images/a\{suffix} "
                     r"as an image.*expected a readable"):
    prepare_lib.prepare("folder", root, tmp_path / "data", name="s")
  assert _no_leftovers(tmp_path / "data")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_truncated_file_fails_even_if_pillow_was_told_to_allow_it(
    tmp_path, monkeypatch, fmt):
  # TFDS's thumbnail helper sets this process-wide; Pillow would then fill
  # the missing half of a photo with grey instead of failing.
  monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
  data = _encoded(np.random.default_rng(1).integers(0, 256, (40, 50, 3),
                                                    np.uint8), fmt)
  path = tmp_path / f"cut.{fmt.lower()}"
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(DataError, match=r"(?i)cut\.\w+ as an image.*truncated"):
    readers.load_image(path)
  assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_failed_overwrite_leaves_the_previous_set_untouched(tmp_path):
  root = _folder_set(tmp_path / "set")
  data_dir = tmp_path / "data"
  prepare_lib.prepare("folder", root, data_dir, name="s")
  before = sorted((p.name, p.stat().st_size) for p in
                  tfds_builder.dataset_dir(data_dir, "s").iterdir())
  (root / "train/images/c.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
  _save(root / "train/masks/c.png", np.zeros((8, 8), np.uint8))
  with pytest.raises(DataError, match=r"images/c\.png"):
    prepare_lib.prepare("folder", root, data_dir, name="s", overwrite=True)
  assert sorted((p.name, p.stat().st_size) for p in
                tfds_builder.dataset_dir(data_dir, "s").iterdir()) == before
  assert sources.stems(sources.open_split(data_dir, "s", "train")) == ["b"]


def test_write_interrupted_midway_keeps_the_previous_set(tmp_path,
                                                         monkeypatch):
  data_dir = tmp_path / "data"
  tfds_builder.write_dataset(data_dir, "s",
                             {"train": phantom.generate(2, 32, 0)})

  def crash_after_one(self, examples):
    for example in examples[:1]:
      yield example["stem"], self._record(example)
    raise KeyboardInterrupt  # e.g. Ctrl-C or a full disk mid-write

  monkeypatch.setattr(tfds_builder.Medclr2d, "_generate_examples",
                      crash_after_one)
  with pytest.raises(KeyboardInterrupt):
    tfds_builder.write_dataset(data_dir, "s",
                               {"train": phantom.generate(3, 32, 5)},
                               overwrite=True)
  assert sources.split_size(data_dir, "s", "train") == 2
  assert sorted(sources.stems(sources.open_split(data_dir, "s", "train"))) == [
      "phantom0_0000", "phantom0_0001"]
  assert [p.name for p in data_dir.iterdir()] == ["medclr2d"]
  # A data_dir the failed call created is removed again.
  with pytest.raises(KeyboardInterrupt):
    tfds_builder.write_dataset(tmp_path / "new" / "data", "s",
                               {"train": phantom.generate(2, 32, 0)})
  assert not (tmp_path / "new").exists()


def test_multi_frame_files_are_refused(tmp_path):
  frames = [Image.fromarray(np.full((6, 6), v, np.uint8)) for v in (0, 99)]
  frames[0].save(tmp_path / "stack.tif", save_all=True,
                 append_images=frames[1:])
  with pytest.raises(DataError, match=r"stack\.tif holds 2 frames.*one 2D "
                     r"image per file.*prepare_volumes"):
    readers.load_image(tmp_path / "stack.tif")


@pytest.mark.parametrize("launcher, args, message", [
    ("launch.prepare", ["--dataset=folder", "--name=s"],
     r"^error: cannot decode \S*images/a\.png as an image"),
    ("launch.prepare_volumes", ["--name=s", "--size=0"],
     r"^error: \S*flat\.nii: its voxel-to-world affine"),
])
def test_launchers_print_one_line_and_write_nothing(tmp_path, launcher, args,
                                                    message):
  raw = tmp_path / "raw"
  if launcher == "launch.prepare":
    _folder_set(raw)
    (raw / "train/images/a.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    _save(raw / "train/masks/a.png", np.zeros((8, 8), np.uint8))
  else:
    _nifti(raw / "flat.nii", np.ones((4, 4, 3), np.float32),
           np.diag([1.0, 1.0, 0.0, 1.0]))
  result = subprocess.run(
      [sys.executable, "-m", launcher, *args, f"--manual_dir={raw}",
       f"--data_dir={tmp_path / 'data'}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 1, result.stderr
  lines = result.stderr.strip().splitlines()
  assert "Traceback" not in result.stderr
  assert len(lines) == 1, result.stderr
  assert re.match(message, lines[0]), lines[0]
  assert _no_leftovers(tmp_path / "data")


# Command-line mistakes, each refused by the real launcher before it writes
# anything: {w} is the workdir (or data folder) the command names.
PRETRAIN_SMOKE = ["--config=configs/pretrain_simclr.py:smoke", "--workdir={w}"]
FINETUNE_SMOKE = ["--config=configs/finetune_unet.py:smoke", "--workdir={w}"]


@pytest.mark.parametrize("launcher, args, message", [
    # A config file that does not exist, with the nearest one.
    pytest.param(
        "launch.pretrain",
        ["--config=configs/pretrain_simclrr.py", "--workdir={w}"],
        r"error: --config=configs/pretrain_simclrr\.py: no such config file "
        r"configs/pretrain_simclrr\.py \(did you mean "
        r"configs/pretrain_simclr\.py\?\)$", id="missing-config-file"),
    # An unknown key, with the nearest key; one misplaced at the top level
    # is found where it lives.
    pytest.param(
        "launch.finetune", [*FINETUNE_SMOKE, "--config.data.num_labled=2"],
        r"error: unknown config key data\.num_labled \(did you mean "
        r"data\.num_labeled\?\)$", id="unknown-key"),
    pytest.param(
        "launch.finetune", [*FINETUNE_SMOKE, "--config.num_labeled=2"],
        r"error: unknown config key num_labeled \(did you mean "
        r"data\.num_labeled\?\)$", id="misplaced-key"),
    # A value of the wrong type for its key.
    pytest.param(
        "launch.pretrain", [*PRETRAIN_SMOKE, "--config.num_steps=abc"],
        r"error: --config\.num_steps=abc: expected int \(the config's value "
        r"is 2\)$", id="wrong-type"),
    # A profile after the colon that the config file does not define.
    pytest.param(
        "launch.pretrain",
        ["--config=configs/pretrain_simclr.py:quik", "--workdir={w}"],
        r"error: --config=configs/pretrain_simclr\.py:quik: unknown config "
        r"argument 'quik' in 'quik'; known: \[.*\] \(did you mean "
        r"'quick'\?\)$", id="bad-profile"),
    pytest.param(
        "launch.study",
        ["--config=configs/study_drive.py:quik", "--workdir={w}"],
        r"error: --config=configs/study_drive\.py:quik: unknown config "
        r"argument 'quik'.*\(did you mean 'quick'\?\)$",
        id="study-bad-profile"),
    # An unknown flag or choice, with the nearest one.
    pytest.param(
        "launch.pretrain",
        ["--config=configs/pretrain_simclr.py:smoke", "--work_dir={w}"],
        r"error: unknown flag --work_dir \(did you mean --workdir\?\)$",
        id="unknown-flag"),
    pytest.param(
        "launch.evaluate", ["--workdir={w}", "--stpe=3"],
        r"error: unknown flag --stpe \(did you mean --step\?\)$",
        id="evaluate-unknown-flag"),
    # JAX's own flags are defined when one is given (launch/cli.py), so a
    # mistyped one gets its nearest name too.
    pytest.param(
        "launch.pretrain",
        ["--config=configs/pretrain_simclr.py:smoke", "--workdir={w}",
         "--jax_platformz=cpu"],
        r"error: unknown flag --jax_platformz \(did you mean "
        r"--jax_platforms\?\)$", id="jax-flag"),
    pytest.param(
        "launch.prepare", ["--dataset=phantm", "--data_dir={w}"],
        r"error: --dataset=phantm: value should be one of <.*> \(did you "
        r"mean phantom\?\)$", id="prepare-bad-choice"),
    # A value without its flag; a required flag left out.
    pytest.param(
        "launch.pretrain", [*PRETRAIN_SMOKE, "--config.num_steps", "5", "6"],
        r"error: unexpected arguments 6 \(flags are written --name=value\)$",
        id="positional-argument"),
    pytest.param(
        "launch.pretrain", ["--config=configs/pretrain_simclr.py:smoke"],
        r"error: --workdir is required$", id="missing-workdir"),
    # A key, argument or config file under the name it had before issue 26
    # is refused with its new name (medclr/train/renames.py).
    pytest.param(
        "launch.pretrain", [*PRETRAIN_SMOKE, "--config.data.crops=device"],
        r"error: config key data\.crops was renamed to data\.crop_site "
        r"\(see CHANGELOG\.md\)$", id="renamed-key-crop-site"),
    pytest.param(
        "launch.pretrain", [*PRETRAIN_SMOKE, "--config.crop.mode=ccrop"],
        r"error: config key crop\.mode was renamed to contrastive_crop\.mode "
        r"\(see CHANGELOG\.md\)$", id="renamed-key-contrastive-crop"),
    pytest.param(
        "launch.pretrain", ["--config=configs/pretrain_dino.py:smoke",
                            "--workdir={w}", "--config.crops.num_local=2"],
        r"error: config key crops\.num_local was renamed to "
        r"multicrop\.num_local \(see CHANGELOG\.md\)$",
        id="renamed-key-multicrop"),
    pytest.param(
        "launch.finetune",
        [*FINETUNE_SMOKE, "--config.init.pretrain_step=3"],
        r"error: config key init\.pretrain_step was renamed to "
        r"init\.pretrain_checkpoint_step \(see CHANGELOG\.md\)$",
        id="renamed-key-checkpoint-step"),
    pytest.param(
        "launch.pretrain",
        ["--config=configs/pretrain_dino.py:smoke,crops=weak", "--workdir={w}"],
        r"error: --config=configs/pretrain_dino\.py:smoke,crops=weak: config "
        r"argument 'crops' in 'smoke,crops=weak' was renamed to 'multicrop' "
        r"\(see CHANGELOG\.md\)$", id="renamed-argument"),
    pytest.param(
        "launch.pretrain",
        ["--config=configs/pretrain_chaitanya.py:smoke", "--workdir={w}"],
        r"error: --config=configs/pretrain_chaitanya\.py:smoke: config file "
        r"configs/pretrain_chaitanya\.py was renamed to "
        r"configs/pretrain_volume_supcon\.py:chaitanya,smoke "
        r"\(see CHANGELOG\.md\)$", id="renamed-config-file"),
    pytest.param(
        "launch.pretrain", ["--config=configs/pretrain_pcl.py", "--workdir={w}"],
        r"error: --config=configs/pretrain_pcl\.py: config file "
        r"configs/pretrain_pcl\.py was renamed to "
        r"configs/pretrain_volume_supcon\.py:pcl \(see CHANGELOG\.md\)$",
        id="renamed-config-file-no-argument"),
])
def test_command_line_mistakes_are_one_line_and_write_nothing(
    tmp_path, launcher, args, message):
  workdir = tmp_path / "w"
  result = subprocess.run(
      [sys.executable, "-m", launcher,
       *[a.format(w=workdir) for a in args]],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode != 0, result.stdout
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("error: ")
  assert re.match(message, lines[0]), lines[0]
  assert not workdir.exists()


@pytest.mark.parametrize("module, old, value, new", [
    ("pretrain_simclr", "data.crops", "device", "data.crop_site"),
    ("pretrain_simclr", "crop", {"mode": "ccrop"}, "contrastive_crop"),
    ("pretrain_dino", "crops", {"num_local": 2}, "multicrop"),
    ("finetune_unet", "init.pretrain_step", 3,
     "init.pretrain_checkpoint_step"),
])
def test_a_config_with_a_renamed_key_is_refused_and_writes_nothing(
    tmp_path, phantom_data_dir, module, old, value, new):
  # E.g. a config file of one's own, or one built in a notebook, that still
  # sets a key by its old name: it would otherwise be ignored silently.
  config = smoke_config(module, phantom_data_dir)
  *parents, leaf = old.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  node[leaf] = value
  train = finetune if module == "finetune_unet" else pretrain
  workdir = tmp_path / "w"
  with pytest.raises(errors.ConfigError, match=(
      rf"^config key {re.escape(old)} was renamed to {re.escape(new)} "
      r"\(see CHANGELOG\.md\)$")):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_prepare_flags_out_of_range_name_the_flag(tmp_path):
  with pytest.raises(DataError, match=r"--long_side=-5: expected a positive"):
    prepare_lib.prepare("folder", _folder_set(tmp_path / "set"),
                        tmp_path / "data", name="s", long_side=-5)
  with pytest.raises(DataError, match=r"--size=8: expected an integer >= 16"):
    prepare_lib.prepare("phantom", None, tmp_path / "data", size=8)
  with pytest.raises(DataError, match=r"--num_train=0: expected an integer "
                     ">= 1"):
    prepare_lib.prepare("phantom", None, tmp_path / "data", num_train=0)
  assert _no_leftovers(tmp_path / "data")


# ---------------------------------------------------------------------------
# Bit depths, float pixels, transparency.


def test_sixteen_bit_grayscale_is_scaled_by_its_bit_depth(tmp_path):
  full = np.array([[0, 257, 32768], [40000, 65278, 65535]], np.uint16)
  twelve = np.array([[0, 1000, 2048], [3000, 4000, 4095]], np.uint16)
  for suffix in (".png", ".tif"):
    _save(tmp_path / f"full{suffix}", full)
    _save(tmp_path / f"twelve{suffix}", twelve)
    np.testing.assert_array_equal(
        readers.load_image(tmp_path / f"full{suffix}")[..., 0],
        np.round(full / 257.0))  # 255 / 65535 = 1 / 257
    np.testing.assert_array_equal(
        readers.load_image(tmp_path / f"twelve{suffix}")[..., 0],
        np.round(twelve * 255.0 / 4095.0))
  # A darker and a brighter 16-bit image keep their relative brightness
  # (the old per-image [min, max] stretch made both span 0..255).
  _save(tmp_path / "dark.png", (full // 2).astype(np.uint16))
  dark = readers.load_image(tmp_path / "dark.png")[..., 0].astype(int)
  bright = readers.load_image(tmp_path / "full.png")[..., 0].astype(int)
  assert np.abs(2 * dark - bright).max() <= 2 and dark.max() < 130


def test_sixteen_bit_rgb_tiff_keeps_its_high_byte(tmp_path):
  tifffile = pytest.importorskip("tifffile")
  rgb = np.zeros((2, 2, 3), np.uint16)
  rgb[0, 1] = [65535, 32768, 256]
  rgb[1, 1] = [1000, 20000, 60000]
  tifffile.imwrite(tmp_path / "fundus16.tif", rgb, photometric="rgb")
  image = readers.load_image(tmp_path / "fundus16.tif")
  assert image.dtype == np.uint8 and image.shape == (2, 2, 3)
  np.testing.assert_array_equal(image, rgb // 256)


def test_float_tiffs_in_unit_range_scale_by_255_others_by_their_range(
    tmp_path):
  # Inside [0, 1] but not spanning it: v * 255, not stretched.
  unit = np.array([[0.2, 0.25], [0.5, 0.6]], np.float32)
  _save(tmp_path / "unit.tif", unit)
  np.testing.assert_array_equal(readers.load_image(tmp_path / "unit.tif"),
                                [[[51], [64]], [[128], [153]]])
  hounsfield = np.array([[-1000.0, 0.0], [1000.0, 3000.0]], np.float32)
  _save(tmp_path / "ct.tif", hounsfield)
  np.testing.assert_array_equal(readers.load_image(tmp_path / "ct.tif"),
                                [[[0], [64]], [[128], [255]]])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_pixels_are_refused_naming_the_file(tmp_path, bad):
  root = _folder_set(tmp_path / "set")
  image = np.full((8, 8), 0.5, np.float32)
  image[2, 3] = image[5, 5] = bad
  _save(root / "train/images/a.tif", image)
  _save(root / "train/masks/a.png", np.zeros((8, 8), np.uint8))
  with pytest.raises(DataError, match=r"images/a\.tif has 2 NaN or infinite "
                     r"pixel\(s\) \(of 64\); expected finite values"):
    prepare_lib.prepare("folder", root, tmp_path / "data", name="s")
  assert _no_leftovers(tmp_path / "data")


def test_transparency_is_composited_over_black(tmp_path):
  rgba = np.zeros((2, 2, 4), np.uint8)
  rgba[..., :3] = [200, 100, 50]
  rgba[..., 3] = [[255, 0], [128, 255]]
  _save(tmp_path / "rgba.png", rgba)
  np.testing.assert_array_equal(
      readers.load_image(tmp_path / "rgba.png"),
      [[[200, 100, 50], [0, 0, 0]], [[100, 50, 25], [200, 100, 50]]])
  grey_alpha = np.stack([np.full((2, 2), 200, np.uint8), rgba[..., 3]], -1)
  _save(tmp_path / "la.png", grey_alpha, "LA")
  np.testing.assert_array_equal(readers.load_image(tmp_path / "la.png"),
                                [[[200], [0]], [[100], [200]]])
  palette = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
  palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
  for suffix in (".png", ".gif"):  # index 2 (green) is transparent
    palette.save(tmp_path / f"pal{suffix}", transparency=2)
    np.testing.assert_array_equal(
        readers.load_image(tmp_path / f"pal{suffix}"),
        [[[0, 0, 0], [255, 0, 0]], [[0, 0, 0], [255, 0, 0]]])


# ---------------------------------------------------------------------------
# Masks.


@pytest.mark.parametrize("values, what", [
    (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, "64 distinct values"),
    # A binary mask with anti-aliased edges.
    (np.where(np.eye(8, dtype=bool), 128,
              np.tri(8, dtype=np.uint8) * 255).astype(np.uint8),
     r"3 distinct values \(0, 128, 255; 8 pixel\(s\) strictly between"),
])
def test_grey_level_masks_are_refused_naming_the_file(tmp_path, values,
                                                      what):
  root = _folder_set(tmp_path / "set", image=np.zeros((8, 8), np.uint8),
                     mask=values)
  with pytest.raises(DataError, match=rf"mask \S*masks/a\.png holds {what}.*"
                     r"expected a binary mask \(0/255 or 0/1\) or class "
                     r"indices 0\.\.63"):
    prepare_lib.prepare("folder", root, tmp_path / "data", name="s")
  assert _no_leftovers(tmp_path / "data")


def test_colour_and_bad_float_masks_are_refused(tmp_path):
  colour = np.zeros((8, 8, 3), np.uint8)
  colour[2:5, 2:5] = [255, 0, 0]
  _save(tmp_path / "colour.png", colour)
  with pytest.raises(DataError, match=r"colour\.png is a colour image.*"
                     r"map each colour to a class index"):
    readers.load_mask(tmp_path / "colour.png")
  with pytest.raises(DataError, match=r"colour\.png is a colour image"):
    readers.load_binary(tmp_path / "colour.png")  # red would read as 0
  half = np.zeros((8, 8), np.float32)
  half[0, 0] = 0.5
  _save(tmp_path / "half.tif", half)
  with pytest.raises(DataError, match=r"half\.tif holds non-integer values "
                     r"\(e\.g\. 0\.5\)"):
    readers.load_mask(tmp_path / "half.tif")
  half[0, 0] = np.nan
  _save(tmp_path / "nan.tif", half)
  with pytest.raises(DataError, match=r"nan\.tif has 1 NaN"):
    readers.load_mask(tmp_path / "nan.tif")


def test_transparent_mask_pixels_are_background(tmp_path):
  mask = np.zeros((4, 4, 4), np.uint8)
  mask[..., :3] = 255  # white everywhere, opaque only on the top row
  mask[0, :, 3] = 255
  _save(tmp_path / "m.png", mask)
  want = np.zeros((4, 4), np.uint8)
  want[0] = 1
  np.testing.assert_array_equal(readers.load_mask(tmp_path / "m.png"), want)


def _write_set(data_dir, name, masks):
  """A prepared 2D set whose train masks are `masks` (32 px phantoms)."""
  examples = phantom.generate(len(masks), 32, 0)
  for example, mask in zip(examples, masks):
    if mask is None:
      example["has_mask"] = False
      example["mask"] = np.zeros_like(example["mask"])
    else:
      example["mask"] = mask
  tfds_builder.write_dataset(data_dir, name, {"train": examples})


def test_finetuning_refuses_masks_beyond_the_model_classes(tmp_path):
  three = np.zeros((32, 32), np.uint8)
  three[4:8, 4:8], three[20:24, 20:24] = 1, 2
  binary = (three > 0).astype(np.uint8)
  _write_set(tmp_path / "data", "classes", [binary, three, binary])
  config = smoke_config("finetune_unet", str(tmp_path / "data"),
                        **{"data.dataset": "classes", "data.num_labeled": 3})
  workdir = tmp_path / "work"
  with pytest.raises(DataError, match=r"classes:train: 1 labelled mask\(s\) "
                     r"hold values beyond config\.model\.num_classes=1, a "
                     r"binary model \(0/1 masks\) \(phantom0_0001: 0, 1, 2\)"):
    finetune.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()
  # The same masks are fine for a three-class model.
  source = sources.open_split(tmp_path / "data", "classes", "train")
  pipeline.check_mask_classes(source, [0, 1, 2], 3, "classes:train")
  with pytest.raises(DataError, match=r"num_classes=2, classes 0\.\.1"):
    pipeline.check_mask_classes(source, [0, 1, 2], 2, "classes:train")


def test_evaluation_refuses_test_masks_beyond_the_model_classes(
    tmp_path, phantom_data_dir):
  workdir = tmp_path / "work"
  finetune.train_and_evaluate(
      smoke_config("finetune_unet", phantom_data_dir), str(workdir))
  three = np.zeros((32, 32), np.uint8)
  three[4:8, 4:8], three[20:24, 20:24] = 1, 2
  _write_set(tmp_path / "data", "classes", [(three > 0).astype(np.uint8),
                                           three])
  with pytest.raises(DataError, match=r"classes:train: 1 labelled mask\(s\) "
                     r"hold values beyond config\.model\.num_classes=1"):
    evaluate.evaluate(str(workdir), dataset="classes", split="train",
                      data_dir=str(tmp_path / "data"))
  assert not (workdir / "eval_classes").exists()


# ---------------------------------------------------------------------------
# Empty splits and label budgets.


def test_split_folder_with_masks_but_no_images_is_named(tmp_path):
  root = _folder_set(tmp_path / "set")
  _save(root / "test/masks/x.png", np.zeros((8, 8), np.uint8))
  with pytest.raises(DataError, match=r"split folder \S*set/test has masks/ "
                     r"but no images/"):
    prepare_lib.prepare("folder", root, tmp_path / "data", name="s")
  assert _no_leftovers(tmp_path / "data")


def test_label_budget_larger_than_the_labelled_set(tmp_path,
                                                   phantom_data_dir):
  config = smoke_config("finetune_unet", phantom_data_dir,
                        **{"data.num_labeled": 25})
  workdir = tmp_path / "work"
  with pytest.raises(DataError, match=r"config\.data\.num_labeled=25 but the "
                     r"split has 24 records, 24 of them labelled; choose "
                     r"1\.\.24"):
    finetune.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_labelled_draw_skips_unlabelled_records_for_every_seed(tmp_path):
  masks = [np.zeros((32, 32), np.uint8), None] * 3  # 3 labelled of 6
  _write_set(tmp_path / "data", "mixed", masks)
  source = sources.open_split(tmp_path / "data", "mixed", "train")
  labelled = {i for i in range(len(source)) if source[i]["has_mask"]}
  for seed in range(8):
    assert set(pipeline.choose_labeled(source, 3, seed)) == labelled
    assert set(pipeline.choose_labeled(source, 2, seed)) < labelled
  with pytest.raises(DataError, match=r"num_labeled=4 but the split has 6 "
                     r"records, 3 of them labelled; the other 3 have no mask;"
                     r" choose 1\.\.3"):
    pipeline.choose_labeled(source, 4, seed=0)


# ---------------------------------------------------------------------------
# Devices and batch.


@pytest.mark.parametrize("phase", ["pretrain_simclr", "finetune_unet"])
@pytest.mark.parametrize("override, message", [
    ({"mesh.data": 16},
     r"config\.mesh\.data=16: must be -1 or between 1 and the 8 available "
     "devices"),
    ({"batch_size": 12},
     r"config\.batch_size=12 must be divisible by the 8 devices"),
])
def test_devices_and_batch_errors_name_the_key_and_write_nothing(
    tmp_path, phantom_data_dir, phase, override, message):
  config = smoke_config(phase, phantom_data_dir, **override)
  train = pretrain if phase.startswith("pretrain") else finetune
  with pytest.raises(errors.ConfigError, match=message):
    train.train_and_evaluate(config, str(tmp_path / "work"))
  assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("flags, message", [
    ((None, 2, 0), r"--num_processes=2 / --process_id=0 without "
     "--coordinator_address"),
    (("localhost:1234", 2, 2), r"--process_id=2 with --num_processes=2: "
     "expected 0 <= process_id < num_processes"),
    (("localhost:1234", None, None), r"--coordinator_address needs "
     "--num_processes and --process_id"),
])
def test_inconsistent_process_flags_are_refused(monkeypatch, flags, message):
  for name in ("MEDCLR_COORDINATOR", "MEDCLR_NUM_PROCESSES",
               "MEDCLR_PROCESS_ID", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  with pytest.raises(errors.ConfigError, match=message):
    sharding.maybe_initialize_distributed(*flags)


# ---------------------------------------------------------------------------
# Volumes.


def _nifti(path, data, affine):
  """Saves `data` with `affine` as the sform, as is (nibabel would refuse to
  derive a qform from a singular affine)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  image = nib.Nifti1Image(data, np.eye(4))
  header = image.header
  header["qform_code"], header["sform_code"] = 0, 1
  header["srow_x"], header["srow_y"], header["srow_z"] = affine[:3]
  nib.Nifti1Image(data, None, header=header).to_filename(str(path))
  return path


@pytest.mark.parametrize("affine", [
    np.diag([1.0, 1.0, 0.0, 1.0]),  # a zero slice spacing
    np.array([[1.0, 2.0, 0, 0], [1.0, 2.0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
    np.diag([1.0, np.nan, 1.0, 1.0]),
])
def test_nifti_with_a_non_invertible_affine_is_refused(tmp_path, affine):
  path = _nifti(tmp_path / "raw/scan.nii.gz",
                np.random.default_rng(0).random((4, 5, 6), np.float32),
                affine)
  with pytest.raises(DataError, match=r"scan\.nii\.gz: its voxel-to-world "
                     r"affine \(sform/qform\) is not finite and invertible.*"
                     "expected three independent voxel axes"):
    volumes.load_volume(path)


def test_failed_volume_prepare_keeps_the_previous_set(tmp_path):
  data_dir = tmp_path / "data"
  raw = tmp_path / "raw"
  volumes.write_nifti(raw, volumes.synthetic_volumes(1, 3, 8), "v")
  volume_builder.prepare_volumes(raw, data_dir, "vols", quiet=True)
  before = sources.stems(sources.open_split(data_dir, "vols", "train"))
  bad = np.ones((4, 4, 3), np.float32)
  bad[1, 1, 1] = np.nan
  _nifti(raw / "w_000.nii.gz", bad, np.eye(4))
  with pytest.raises(DataError, match=r"w_000\.nii\.gz has 1 NaN or infinite "
                     r"voxel\(s\) \(of 48\)"):
    volume_builder.prepare_volumes(raw, data_dir, "vols", overwrite=True,
                                   quiet=True)
  assert sources.stems(sources.open_split(data_dir, "vols", "train")) == before
  assert [p.name for p in data_dir.iterdir()] == ["medclr2d"]


def _dicom_series(folder, num_slices=4, *, z=None, orientation=None,
                  numbers=None, geometry=True, sizes=None):
  """One small axial series, one file a slice; per-slice overrides."""
  folder.mkdir(parents=True)
  series_uid = dicom_uid.generate_uid()
  z = list(z) if z is not None else [2.0 * k for k in range(num_slices)]
  for k in range(num_slices):
    rows, cols = sizes[k] if sizes else (4, 5)
    geometry_tags = {}
    if geometry:
      geometry_tags = {"orientation": (orientation[k] if orientation else
                                       [1, 0, 0, 0, 1, 0]),
                       "position": [0.0, 0.0, z[k]]}
    write_dicom_slice(folder / f"IM{k:03d}.dcm",
                      np.full((rows, cols), 100 * k, np.uint16), series_uid,
                      instance_number=numbers[k] if numbers else k + 1,
                      **geometry_tags)
  return folder


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path):
  _dicom_series(tmp_path / "gap", 5, z=[0.0, 2.0, 4.0, 8.0, 10.0])
  with pytest.raises(DataError, match=r"gap: its slices are 2 mm apart along "
                     r"the slice normal, but IM002\.dcm and IM003\.dcm are 4 "
                     r"mm apart; expected evenly spaced slices \(is a slice "
                     r"missing\?\)"):
    volumes.load_volume(tmp_path / "gap")
  _dicom_series(tmp_path / "numbered", 4, geometry=False,
                numbers=[1, 2, 3, 5])
  with pytest.raises(DataError, match=r"numbered: its slices are 1 apart in "
                     r"InstanceNumber, but IM002\.dcm and IM003\.dcm are 2"):
    volumes.load_volume(tmp_path / "numbered")
  # Evenly spaced series load (any spacing, any numbering step).
  _dicom_series(tmp_path / "even", 4, z=[5.0, 8.0, 11.0, 14.0])
  assert volumes.load_volume(tmp_path / "even").shape[-1] == 4
  _dicom_series(tmp_path / "step2", 3, geometry=False, numbers=[2, 4, 6])
  assert volumes.load_volume(tmp_path / "step2").shape[-1] == 3


def test_dicom_series_with_mixed_slices_is_refused(tmp_path):
  tilted = [[1, 0, 0, 0, 1, 0]] * 3 + [[1, 0, 0, 0, 0, 1]]
  _dicom_series(tmp_path / "orient", 4, orientation=tilted)
  with pytest.raises(DataError, match=r"orient mixes slice orientations: "
                     r"IM003\.dcm has ImageOrientationPatient"):
    volumes.load_volume(tmp_path / "orient")
  _dicom_series(tmp_path / "flat", 3, orientation=[[1, 0, 0, 1, 0, 0]] * 3)
  with pytest.raises(DataError, match=r"IM000\.dcm has ImageOrientationPatient"
                     r".*expected two orthogonal unit direction cosines"):
    volumes.load_volume(tmp_path / "flat")
  _dicom_series(tmp_path / "sizes", 3, sizes=[(4, 5), (4, 5), (5, 5)])
  with pytest.raises(DataError, match=r"IM002\.dcm has size \(5, 5\) but "
                     r"IM000\.dcm has \(4, 5\); all slices must have the same"):
    volumes.load_volume(tmp_path / "sizes")
  cut = _dicom_series(tmp_path / "cut", 3) / "IM001.dcm"
  cut.write_bytes(cut.read_bytes()[:-25])  # pixel data cut short
  with pytest.raises(DataError, match=r"IM001\.dcm"):
    volumes.load_volume(tmp_path / "cut")


def test_sixteen_bit_section_stacks_keep_their_values(tmp_path):
  for k, top in enumerate((300, 1000, 60000)):
    _save(tmp_path / "em" / f"s{k}.png",
          np.array([[0, top], [top // 2, 7]], np.uint16))
  stack = volumes.load_volume(tmp_path / "em")
  assert stack.shape == (2, 2, 3)
  np.testing.assert_array_equal(stack[0, 1], [300, 1000, 60000])


def test_launcher_refuses_process_flags_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "launch.pretrain",
       "--config=configs/pretrain_simclr.py:smoke",
       f"--workdir={tmp_path / 'work'}", "--num_processes=2",
       "--process_id=0"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 1, result.stderr
  assert "Traceback" not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("error: --num_processes=2 / --process_id=0 "
                             "without --coordinator_address")
  assert not (tmp_path / "work").exists()


def test_auto_distributed_asks_jax_to_discover_the_cluster(monkeypatch):
  # A real pod cannot start here: record the call jax would make.
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda *a, **k: calls.append((a, k)))
  for name in ("MEDCLR_COORDINATOR", "MEDCLR_NUM_PROCESSES",
               "MEDCLR_PROCESS_ID", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("MEDCLR_DISTRIBUTED", "auto")
  sharding.maybe_initialize_distributed()
  assert calls == [((), {})]
  monkeypatch.setenv("MEDCLR_DISTRIBUTED", "yes")
  with pytest.raises(errors.ConfigError, match="MEDCLR_DISTRIBUTED='yes'"):
    sharding.maybe_initialize_distributed()
  monkeypatch.delenv("MEDCLR_DISTRIBUTED")
  sharding.maybe_initialize_distributed()  # a plain run: no cluster
  assert len(calls) == 1
