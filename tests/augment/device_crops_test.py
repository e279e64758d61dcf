"""Device-side random resized crops (`config.data.crop_site='device'`).

References are the host implementations they replace: `crops._resize_window`
(Pillow's bilinear box resize) and `crops.sample_crop_window`
(torchvision's RandomResizedCrop sampling, in NumPy).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import smoke_config
from medclr import errors
from medclr import sharding
from medclr.augment import crops as device_crops
from medclr.data import crops
from medclr.data import pipeline
from medclr.train import pretrain

SIMCLR_AREA = (0.08, 1.0)
ASPECT = (3 / 4, 4 / 3)


@pytest.mark.parametrize("window", [
    (10, 20, 150, 120),  # shrink x2.3 / x1.9 (antialiased)
    (30, 40, 50, 60),  # near 1:1
    (0, 0, 200, 180),  # the whole image
    (5, 7, 13, 11),  # enlarge x5
])
def test_resized_crop_matches_pillows_box_resize(window):
  image = np.random.default_rng(0).integers(0, 256, (200, 180, 3), np.uint8)
  host = crops._resize_window(image, window, 64)  # pylint: disable=protected-access
  device = device_crops.resized_crop(
      jnp.asarray(image, jnp.float32) / 255,
      tuple(jnp.float32(v) for v in window), 64)
  # Pillow rounds its uint8 result: up to half a grey level, plus float error.
  assert np.abs(np.asarray(device) - host).max() <= 1.0 / 255


def _device_windows(height, width, area, count, seed=0):
  spec = device_crops.CropSpec(64, area, ASPECT)
  keys = jax.random.split(jax.random.key(seed), count)
  windows = jax.jit(jax.vmap(
      lambda k: device_crops.sample_window(k, height, width, spec)))(keys)
  return np.stack([np.asarray(w) for w in windows], axis=1)


def test_windows_follow_the_host_samplers_distribution():
  height, width, count = 300, 200, 4000
  device = _device_windows(height, width, SIMCLR_AREA, count)
  rng = np.random.default_rng(0)
  host = np.array([crops.sample_crop_window(height, width, rng, SIMCLR_AREA,
                                            ASPECT) for _ in range(count)],
                  np.float64)
  top, left, crop_h, crop_w = device.T
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + crop_h <= height).all() and (left + crop_w <= width).all()
  assert (device == np.round(device)).all()  # whole pixels

  def stats(windows):
    t, l, h, w = windows.T
    return np.array([(h * w).mean() / (height * width),
                     np.log(w / h).mean(),
                     (t / (height - h + 1)).mean(),
                     (l / (width - w + 1)).mean(),
                     (h * w / (height * width)).std()])

  # Standard errors at 4000 draws are ~0.004 (area), ~0.003 (log ratio) and
  # ~0.005 (placement); 0.02 is 4-5 of them.
  np.testing.assert_allclose(stats(device), stats(host), atol=0.02)


def test_no_fitting_window_falls_back_to_the_hosts_centred_window():
  # Area >= 0.99 of a 4:1 image cannot fit any aspect in [3/4, 4/3].
  got = _device_windows(400, 100, (0.99, 1.0), 3)
  want = crops.sample_crop_window(400, 100, np.random.default_rng(0),
                                  (0.99, 1.0), ASPECT)
  np.testing.assert_array_equal(got, np.tile(want, (3, 1)))


def test_windows_stay_inside_each_images_own_extent():
  spec = device_crops.CropSpec(16, SIMCLR_AREA, ASPECT)
  extents = jnp.array([[64, 40], [20, 64], [64, 64], [33, 17]] * 250)
  keys = jax.random.split(jax.random.key(3), len(extents))
  top, left, crop_h, crop_w = map(np.asarray, jax.jit(jax.vmap(
      lambda k, e: device_crops.sample_window(k, e[0], e[1], spec)))(
          keys, extents))
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + crop_h <= extents[:, 0]).all()
  assert (left + crop_w <= extents[:, 1]).all()


def test_views_at_the_image_edge_match_pillow_on_the_unpadded_image():
  image = np.random.default_rng(2).integers(0, 256, (40, 30, 3), np.uint8)
  canvas = np.zeros((48, 48, 3), np.uint8)
  canvas[:40, :30] = image
  for window in [(12, 10, 28, 20), (0, 0, 40, 30), (30, 25, 10, 5)]:
    device = device_crops.cut_view(canvas, jnp.array([40, 30]),
                                   tuple(jnp.float32(v) for v in window), 16)
    host = crops._resize_window(image, window, 16)  # pylint: disable=protected-access
    assert np.abs(np.asarray(device) - host).max() <= 1.0 / 255, window


def _canvases(batch, side=48):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (batch, side, side, 3), np.uint8)
  extents = rng.integers(side // 2, side + 1, (batch, 2)).astype(np.int32)
  return images, extents


def test_views_are_the_same_on_1_and_8_devices_and_differ_per_example():
  spec = device_crops.CropSpec(16, SIMCLR_AREA, ASPECT)
  images, extents = _canvases(16)
  key = jax.random.key(5)
  # Jitted (one compile, not one per op) as the training step runs it.
  crop = jax.jit(lambda k, b: device_crops.two_crops(k, b, spec))
  want = crop(key, {"image": images, "extent": extents})  # one device
  mesh = sharding.make_mesh(8)
  with jax.set_mesh(mesh):
    batch = {"image": jax.device_put(images, jax.P("data")),
             "extent": jax.device_put(extents, jax.P("data"))}
    got = crop(key, batch)
  for name in ("view1", "view2"):
    assert got[name].shape == (16, 16, 16, 3)
    np.testing.assert_allclose(got[name], want[name], atol=1e-6)
  # Two views of one image, and the same image at two batch positions, are
  # cut differently.
  assert np.abs(want["view1"] - want["view2"]).max() > 0.1
  same = {"image": np.repeat(images[:1], 2, 0),
          "extent": np.repeat(extents[:1], 2, 0)}
  views = crop(key, same)
  assert np.abs(views["view1"][0] - views["view1"][1]).max() > 0.1


def test_fit_into_keeps_aspect_converts_channels_and_pads_with_zeros():
  gray = np.full((100, 50), 200, np.uint8)
  canvas, extent = crops.fit_into(gray, 64, in_channels=3)
  assert canvas.shape == (64, 64, 3) and canvas.dtype == np.uint8
  np.testing.assert_array_equal(extent, [64, 32])
  assert (canvas[:64, :32] == 200).all() and (canvas[:, 32:] == 0).all()
  # Smaller images are enlarged to the canvas; RGB -> gray uses BT.601.
  rgb = np.zeros((10, 20, 3), np.uint8)
  rgb[..., 1] = 100
  canvas, extent = crops.fit_into(rgb, 40, in_channels=1)
  np.testing.assert_array_equal(extent, [20, 40])
  assert canvas.shape == (40, 40, 1)
  assert abs(int(canvas[5, 5, 0]) - round(0.587 * 100)) <= 1


@pytest.mark.parametrize("view_size, area, want", [
    (128, (0.08, 1.0), 480),  # 128 / sqrt(0.08) = 452.5 -> 480
    (96, (0.5, 1.0), 160),  # 135.8 -> 160
    (64, (1.0, 1.0), 64),
])
def test_default_canvas_keeps_the_smallest_crop_at_view_resolution(
    view_size, area, want):
  assert device_crops.canvas_side(view_size, area) == want
  assert device_crops.canvas_side(view_size, area, requested=200) == 200


def test_pipeline_ships_fitted_images_from_real_records(phantom_data_dir):
  dataset = pipeline.pretrain_dataset(
      phantom_data_dir, "phantom:train", image_size=32, in_channels=3,
      area=SIMCLR_AREA, aspect=ASPECT, local_batch=4, seed=0,
      device_crops=96)
  batch = next(iter(dataset))
  assert set(batch) == {"image", "extent"}
  assert batch["image"].shape == (4, 96, 96, 3)
  assert batch["image"].dtype == np.uint8
  # The phantom is square (128 px): fitted to the whole canvas.
  np.testing.assert_array_equal(batch["extent"], np.full((4, 2), 96))
  assert batch["image"].max() > 0


def test_pretraining_runs_with_device_crops(phantom_data_dir, tmp_path):
  config = smoke_config("pretrain_simclr", phantom_data_dir,
                        **{"data.crop_site": "device"})
  last = pretrain.train_and_evaluate(config, str(tmp_path / "run"))
  assert np.isfinite(last["loss"]) and last["grad_norm"] > 0


@pytest.mark.parametrize("overrides, names", [
    ({"data.crop_site": "gpu"}, "config.data.crop_site='gpu'"),
    ({"data.crop_canvas": -1}, "config.data.crop_canvas=-1"),
    ({"data.crop_site": "device", "contrastive_crop.mode": "ccrop"},
     "ccrop"),
])
def test_bad_device_crop_settings_are_refused_before_any_output(
    phantom_data_dir, tmp_path, overrides, names):
  config = smoke_config("pretrain_simclr", phantom_data_dir, **overrides)
  workdir = tmp_path / "run"
  with pytest.raises(errors.ConfigError, match=names):
    pretrain.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_methods_with_their_own_host_crops_refuse_device_crops(
    phantom_data_dir, tmp_path):
  config = smoke_config("pretrain_dino", phantom_data_dir,
                        **{"data.crop_site": "device"})
  with pytest.raises(errors.ConfigError, match="'dino' makes its own host"):
    pretrain.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
