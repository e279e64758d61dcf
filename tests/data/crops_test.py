"""Tests for medclr.data.crops: channel conversion and host random crops."""
import numpy as np
import pytest

from medclr.data import crops


def _coordinate_image(height, width):
  """float32 image whose channels hold each pixel's normalised (y, x)."""
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  return np.stack([(yy + 0.5) / height, (xx + 0.5) / width,
                   np.zeros_like(yy)], axis=-1)


class TestToFloat:

  def test_uint8_scales_to_unit_range(self):
    image = np.array([[[0], [255]], [[51], [102]]], np.uint8)
    out = crops.to_float(image, 1)
    assert out.dtype == np.float32 and out.shape == (2, 2, 1)
    np.testing.assert_allclose(out[..., 0], [[0, 1], [0.2, 0.4]], atol=1e-6)

  def test_gray_to_rgb_repeats(self):
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = crops.to_float(image, 3)
    assert out.shape == (3, 4, 3)
    for c in range(3):
      np.testing.assert_array_equal(out[..., c], image / np.float32(255))

  def test_rgb_to_gray_uses_bt601_luma(self):
    image = np.zeros((1, 3, 3), np.uint8)
    image[0, 0, 0] = image[0, 1, 1] = image[0, 2, 2] = 255
    out = crops.to_float(image, 1)
    np.testing.assert_allclose(out[0, :, 0], [0.299, 0.587, 0.114], atol=1e-6)

  @pytest.mark.parametrize("shape,channels", [((4, 4, 2), 3), ((4, 4, 3), 2)])
  def test_bad_channels_raise(self, shape, channels):
    with pytest.raises(ValueError, match="channels|image must be"):
      crops.to_float(np.zeros(shape, np.uint8), channels)


class TestRandomResizedCrop:

  @pytest.mark.parametrize("dtype", [np.uint8, np.float32])
  def test_shape_dtype_range(self, dtype):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3)).astype(dtype)
    if dtype == np.float32:
      image /= 255
    out = crops.random_resized_crop(image, rng, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0

  def test_grayscale_keeps_one_channel(self):
    image = np.full((30, 20, 1), 128, np.uint8)
    out = crops.random_resized_crop(image, np.random.default_rng(1), 8)
    assert out.shape == (8, 8, 1)
    np.testing.assert_allclose(out, 128 / 255, atol=1e-6)

  def test_deterministic_given_seed(self):
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
    first = crops.random_resized_crop(image, np.random.default_rng(7), 12)
    again = crops.random_resized_crop(image, np.random.default_rng(7), 12)
    other = crops.random_resized_crop(image, np.random.default_rng(8), 12)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)

  def test_windows_honour_area_and_aspect(self):
    rng = np.random.default_rng(0)
    height, width = 120, 160
    area, aspect = (0.2, 0.6), (0.5, 2.0)
    for _ in range(200):
      top, left, h, w = crops.sample_crop_window(height, width, rng, area,
                                                 aspect)
      assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
      # Rounding to whole pixels moves area and ratio by about 1 px per side.
      assert area[0] - 0.02 <= h * w / (height * width) <= area[1] + 0.02
      assert aspect[0] * 0.95 <= w / h <= aspect[1] * 1.05

  def test_crop_content_is_the_sampled_window(self):
    height, width, out_size = 96, 128, 32
    image = _coordinate_image(height, width)
    area, aspect = (0.1, 0.5), (3 / 4, 4 / 3)
    for seed in range(20):
      top, left, h, w = crops.sample_crop_window(
          height, width, np.random.default_rng(seed), area, aspect)
      out = crops.random_resized_crop(image, np.random.default_rng(seed),
                                      out_size, area, aspect)
      y, x = out[..., 0] * height, out[..., 1] * width
      # Bilinear sampling stays within a pixel of the window's pixel centres.
      assert top - 1 <= y.min() and y.max() <= top + h + 1
      assert left - 1 <= x.min() and x.max() <= left + w + 1
      span_y, span_x = y.max() - y.min(), x.max() - x.min()
      assert abs(span_y - h) <= 0.1 * h + 2 and abs(span_x - w) <= 0.1 * w + 2
      assert aspect[0] * 0.8 <= span_x / span_y <= aspect[1] * 1.25

  def test_falls_back_to_centre_crop(self):
    # A 10x200 strip cannot hold a window of >= 90% area with aspect <= 4/3.
    height, width = 10, 200
    window = crops.sample_crop_window(height, width, np.random.default_rng(0),
                                      (0.9, 1.0), (3 / 4, 4 / 3))
    top, left, h, w = window
    assert (top, h) == (0, height)
    assert w == round(height * 4 / 3)
    assert left == (width - w) // 2
    out = crops.random_resized_crop(_coordinate_image(height, width),
                                    np.random.default_rng(0), 8, (0.9, 1.0))
    np.testing.assert_allclose(out[..., 1].mean(), 0.5, atol=0.02)


class TestRandomCrop:

  def test_image_mask_fov_stay_aligned(self):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 60, 3), np.uint8)
    arrays = {
        "image": image,
        "mask": (image[..., 0] > 128).astype(np.uint8),
        "fov": (image[..., 1] > 64).astype(np.uint8),
    }
    for _ in range(10):
      out = crops.random_crop(arrays, rng, 16)
      assert out["image"].shape == (16, 16, 3)
      assert out["mask"].shape == out["fov"].shape == (16, 16)
      np.testing.assert_array_equal(out["mask"], out["image"][..., 0] > 128)
      np.testing.assert_array_equal(out["fov"], out["image"][..., 1] > 64)

  def test_windows_vary_and_repeat_with_seed(self):
    image = np.arange(40 * 40, dtype=np.int32).reshape(40, 40, 1)
    corners = {
        int(crops.random_crop({"image": image}, np.random.default_rng(s),
                              8)["image"][0, 0, 0]) for s in range(10)
    }
    assert len(corners) > 1
    first = crops.random_crop({"image": image}, np.random.default_rng(3), 8)
    again = crops.random_crop({"image": image}, np.random.default_rng(3), 8)
    np.testing.assert_array_equal(first["image"], again["image"])

  def test_small_images_are_zero_padded(self):
    rng = np.random.default_rng(0)
    image = rng.integers(1, 256, (20, 24, 1), np.uint8)
    arrays = {"image": image, "mask": (image[..., 0] > 128).astype(np.uint8),
              "fov": np.ones((20, 24), np.uint8)}
    out = crops.random_crop(arrays, rng, 32)
    assert out["image"].shape == (32, 32, 1) and out["fov"].shape == (32, 32)
    np.testing.assert_array_equal(out["image"][:20, :24], image)
    assert out["fov"].sum() == 20 * 24 and out["fov"][20:].sum() == 0
    assert out["image"][:, 24:].sum() == 0
    np.testing.assert_array_equal(out["mask"], out["image"][..., 0] > 128)

  def test_centre_in_puts_patch_centres_on_the_fov(self):
    # A disc covering ~20% of the image: uniform patches centre outside it
    # most of the time, 'centre_in' patches (10 attempts) almost never.
    rows, cols = np.mgrid[:100, :100]
    fov = ((rows - 50) ** 2 + (cols - 50) ** 2 < 25 ** 2).astype(np.uint8)
    arrays = {"image": np.zeros((100, 100, 1), np.uint8), "fov": fov}

    def centres_inside(**kwargs):
      rng = np.random.default_rng(0)
      return np.mean([crops.random_crop(arrays, rng, 20, **kwargs)["fov"][10, 10]
                      for _ in range(300)])

    assert centres_inside() < 0.4
    assert centres_inside(centre_in="fov") > 0.85

  def test_mismatched_shapes_raise(self):
    arrays = {"image": np.zeros((10, 10, 3)), "mask": np.zeros((10, 9))}
    with pytest.raises(ValueError, match="one \\(H, W\\)"):
      crops.random_crop(arrays, np.random.default_rng(0), 4)
