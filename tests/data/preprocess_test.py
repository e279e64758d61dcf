"""Input normalisation and FOV-scale resampling, in training and inference."""
import dataclasses
import json
import os

import jax
import numpy as np
from PIL import Image
import pytest

from conftest import smoke_config
from medclr.augment import ops as augment
from medclr.data import normalize
from medclr.data import pipeline
from medclr.data import prepare
from medclr.data import preprocess
from medclr.data import readers
from medclr.data import sources
from medclr.evaluate import evaluate
from medclr.train import finetune
from medclr.train import steps


def _disc_image(height, width, radius, seed=0):
  """A bright noisy disc (the FOV) on black, with its FOV mask."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:height, :width]
  fov = ((y - height / 2) ** 2 + (x - width / 2) ** 2 <= radius**2)
  image = rng.integers(60, 200, (height, width, 3)).astype(np.uint8)
  image[~fov] = 0
  return image, fov.astype(np.uint8)


def test_image_stats_are_taken_inside_the_fov_only():
  image, fov = _disc_image(64, 64, 25)
  stats = normalize.image_stats(image / 255.0, fov)
  inside = (image / 255.0)[fov > 0]
  np.testing.assert_allclose(stats[0], inside.mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats[1], inside.std(0), rtol=1e-5)
  out = normalize.apply(image / 255.0, stats)[fov > 0]
  np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(out.std(0), 1.0, atol=1e-4)


def test_dataset_stats_pool_all_fov_pixels():
  a, fa = _disc_image(40, 40, 15, seed=1)
  b, fb = _disc_image(50, 30, 12, seed=2)
  pairs = [(a / 255.0, fa), (b / 255.0, fb)]
  pixels = np.concatenate([(a / 255.0)[fa > 0], (b / 255.0)[fb > 0]])
  stats = normalize.dataset_stats(pairs)
  np.testing.assert_allclose(stats[0], pixels.mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats[1], pixels.std(0), rtol=1e-4)


def test_batched_apply_repeats_stats_image_major():
  images = np.arange(4 * 2 * 2 * 1, dtype=np.float32).reshape(4, 2, 2, 1)
  stats = np.array([[[1.0], [2.0]], [[3.0], [4.0]]], np.float32)  # 2 images
  out = normalize.apply(images, stats)
  np.testing.assert_allclose(out[1], (images[1] - 1.0) / 2.0)
  np.testing.assert_allclose(out[2], (images[2] - 3.0) / 4.0)


def test_unknown_mode_names_the_key():
  with pytest.raises(ValueError, match="config.data.normalize"):
    preprocess.Preprocess(normalize="zscore")


@pytest.mark.parametrize("mode,contrast", [
    ("image", "none"), ("dataset", "none"), ("none", "none"),
    ("image", "clahe")])
def test_training_and_inference_normalise_an_image_identically(
    phantom_data_dir, mode, contrast):
  """One phantom image through the training pipeline + step inputs and
  through the inference preprocessing gives the same model input."""
  source = sources.open_split(phantom_data_dir, "phantom", "train")
  size = np.asarray(source[0]["image"]).shape[0]
  data_cfg = smoke_config("finetune_unet", phantom_data_dir).data
  data_cfg.normalize = mode
  data_cfg.contrast = contrast
  spec = preprocess.build(data_cfg, [source]) or preprocess.from_config(
      data_cfg)
  # A crop the size of the image is the image itself.
  batches = pipeline.finetune_dataset(
      phantom_data_dir, "phantom", "train", indices=[0], crop_size=size,
      in_channels=3, local_batch=1, seed=0, preprocess=spec)
  batch = next(iter(batches))
  image, _, _ = steps.finetune_inputs(
      jax.random.key(0), batch, augment.get_spec("none"))
  want = spec.model_input(np.asarray(source[0]["image"]),
                          np.asarray(source[0]["fov"]))
  np.testing.assert_allclose(np.asarray(image)[0], want, atol=1e-5)
  if mode != "none":
    raw = np.asarray(source[0]["image"]) / 255.0
    assert np.abs(want - raw).max() > 0.5  # normalisation did something
  if contrast != "none":  # and CLAHE did something too
    plain = dataclasses.replace(spec, contrast="none").model_input(
        np.asarray(source[0]["image"]), np.asarray(source[0]["fov"]))
    assert np.abs(want - plain).max() > 0.5


def test_clahe_raises_local_contrast_and_keeps_the_size():
  # A dim, low-contrast stripe pattern: CLAHE stretches it.
  stripes = (100 + 10 * (np.arange(64) % 8 < 4))[None, :].repeat(64, 0)
  image = np.repeat(stripes[..., None], 3, axis=-1).astype(np.uint8)
  out = preprocess.clahe(image)
  assert out.shape == image.shape and out.dtype == np.uint8
  assert np.ptp(out.astype(int)) > 3 * np.ptp(image.astype(int))
  with pytest.raises(ValueError, match="config.data.contrast"):
    preprocess.Preprocess(contrast="gamma")


def test_fov_resampling_maps_predictions_back_to_the_original_grid():
  image, fov = _disc_image(120, 100, 45)
  spec = preprocess.Preprocess(fov_diameter=60)
  model_image, stats = spec.image(image, fov)
  assert abs(model_image.shape[1] - 100 * 60 / 91) <= 2  # FOV 91 px wide
  assert stats.shape == (2, 3)
  # A prediction that is a smooth function of position survives the trip.
  h, w = model_image.shape[:2]
  ramp = np.broadcast_to(np.linspace(0, 1, w, dtype=np.float32), (h, w))
  back = spec.restore(ramp[..., None], image.shape[:2])
  assert back.shape == (120, 100, 1)
  np.testing.assert_allclose(back[60, :, 0], np.linspace(0, 1, 100),
                             atol=0.03)


def test_fov_resampling_of_a_training_record_keeps_labels_binary():
  image, fov = _disc_image(120, 100, 45)
  mask = np.zeros((120, 100), np.uint8)
  mask[50:70, 20:80] = 1
  spec = preprocess.Preprocess(fov_diameter=180)  # upsample x2
  out = spec.record({"image": image, "mask": mask, "fov": fov})
  assert out["image"].shape[:2] == out["mask"].shape == out["fov"].shape
  assert abs(out["mask"].shape[0] - 240) <= 2
  assert set(np.unique(out["mask"])) == {0, 1}
  assert abs(out["mask"].mean() - mask.mean()) < 0.01


@pytest.fixture(scope="module")
def plain_scaled_run(tmp_path_factory, phantom_data_dir):
  """A smoke fine-tune without normalisation, resampled to a FOV of 100 px."""
  workdir = str(tmp_path_factory.mktemp("plain_scaled"))
  finetune.train_and_evaluate(
      smoke_config("finetune_unet", phantom_data_dir,
                   **{"data.normalize": "none", "data.fov_diameter": 100}),
      workdir)
  return workdir


def _intensity_change(workdir, data_dir):
  """Max change of the prediction when a test image's intensities are
  mapped affinely (x -> 0.5 x + 0.1)."""
  predictor = evaluate.load_for_inference(workdir)
  record = sources.open_split(data_dir, "phantom", "test")[0]
  image = np.asarray(record["image"]) / 255.0
  fov = np.asarray(record["fov"])
  return np.abs(predictor.probabilities(image, fov)
                - predictor.probabilities(0.5 * image + 0.1, fov)).max()


@pytest.mark.slow
def test_evaluation_uses_the_runs_normalisation(finetuned_dir,
                                                plain_scaled_run,
                                                phantom_data_dir):
  """Per-image standardisation (the default) makes predictions invariant to
  an affine change of intensity; without it they change, so evaluation
  reads the run's saved choice."""
  for workdir, mode in ((finetuned_dir, "image"), (plain_scaled_run, "none")):
    saved = json.load(open(os.path.join(workdir, "preprocess.json")))
    assert saved["normalize"] == mode
  assert _intensity_change(finetuned_dir, phantom_data_dir) < 1e-3
  assert _intensity_change(plain_scaled_run, phantom_data_dir) > 1e-3


@pytest.mark.slow
def test_default_fine_tune_sees_only_the_green_channel(finetuned_dir,
                                                      phantom_data_dir):
  """The default recipe feeds the green channel (docs/cross_camera.md): the
  saved run says so and evaluation follows it, so red and blue can change
  without moving a prediction, while green moves it."""
  saved = json.load(open(os.path.join(finetuned_dir, "preprocess.json")))
  assert saved["channels"] == "green"
  predictor = evaluate.load_for_inference(finetuned_dir)
  record = sources.open_split(phantom_data_dir, "phantom", "test")[0]
  image = np.asarray(record["image"]).copy()
  fov = np.asarray(record["fov"])
  base = predictor.probabilities(image, fov)
  other = image.copy()
  other[..., 0], other[..., 2] = 255 - image[..., 0], image[..., 2] // 3
  np.testing.assert_array_equal(predictor.probabilities(other, fov), base)
  other = image.copy()
  other[..., 1] = 255 - image[..., 1]
  assert np.abs(predictor.probabilities(other, fov) - base).max() > 1e-3


def _write_folder_set(root, count=3, size=72):
  """A tiny labelled folder set of synthetic discs (no real data)."""
  for split in ("train", "test"):
    for kind in ("images", "masks"):
      os.makedirs(root / split / kind)
    for i in range(count):
      image, fov = _disc_image(size, size + 8, size // 2 - 4, seed=i)
      mask = np.zeros((size, size + 8), np.uint8)
      mask[size // 2 - 2:size // 2 + 2, 10:-10] = 255
      Image.fromarray(image).save(root / split / "images" / f"s{i}.png")
      Image.fromarray(mask).save(root / split / "masks" / f"s{i}.png")


@pytest.mark.slow
def test_cross_dataset_evaluation_with_fov_scale(tmp_path, phantom_data_dir,
                                                 plain_scaled_run):
  """A phantom-trained run with a FOV-diameter target is evaluated on a
  second prepared set by name; predictions come back at that set's size."""
  _write_folder_set(tmp_path / "raw")
  data_dir = str(tmp_path / "data")
  prepare.prepare("folder", str(tmp_path / "raw"), data_dir, name="discs")
  workdir = plain_scaled_run
  result = evaluate.evaluate(workdir, dataset="discs", data_dir=data_dir,
                             save_predictions=True)
  assert result["dataset"] == "discs" and result["trained_on"] == "phantom"
  assert result["num_images"] == 3
  assert 0.0 <= result["pooled"]["auc_roc"] <= 1.0
  saved = os.path.join(workdir, "eval_discs", "metrics.json")
  assert json.load(open(saved))["num_images"] == 3
  pred = np.asarray(Image.open(
      os.path.join(workdir, "eval_discs", "predictions", "s0.png")))
  assert pred.shape == (72, 80)
  assert "workdir" not in result  # no absolute paths in results


def test_explicit_label_list(tmp_path, phantom_data_dir):
  source = sources.open_split(phantom_data_dir, "phantom", "train")
  stems = sources.stems(source)
  chosen = pipeline.labeled_by_name(source, [stems[5], stems[2]])
  assert chosen == sorted([2, 5])
  with pytest.raises(readers.DataError, match="not in the split"):
    pipeline.labeled_by_name(source, ["nope"])
  with pytest.raises(readers.DataError, match="more than once"):
    pipeline.labeled_by_name(source, [stems[1], stems[1]])
  config = smoke_config("finetune_unet", phantom_data_dir,
                        **{"data.labeled": f"{stems[7]}, {stems[3]}"})
  indices = finetune.labeled_subset(config, str(tmp_path), source)
  assert indices == [3, 7]
  saved = json.load(open(tmp_path / "labeled.json"))
  assert saved["stems"] == [stems[3], stems[7]] and saved["seed"] is None


def test_pretraining_views_are_normalised_per_source_image():
  """Every image view (two views, or image-major crops) gets its source
  image's stats; non-image leaves (labels) pass through."""
  rng = np.random.default_rng(0)
  view = rng.random((2, 4, 4, 3)).astype(np.float32)
  crops = rng.random((6, 3, 3, 3)).astype(np.float32)  # 3 crops per image
  labels = {"volume": np.array([3, 4], np.int32)}
  norm = np.stack([[[0.1, 0.2, 0.3], [2.0, 4.0, 8.0]],
                   [[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]]]).astype(np.float32)
  out = steps.normalize_views([view, crops, labels], norm)
  np.testing.assert_allclose(out[0][0], (view[0] - norm[0, 0]) / norm[0, 1],
                             rtol=1e-6)
  np.testing.assert_allclose(out[1][2], (crops[2] - norm[0, 0]) / norm[0, 1],
                             rtol=1e-6)
  np.testing.assert_allclose(out[1][3], crops[3] - 0.5, rtol=1e-6)
  np.testing.assert_array_equal(out[2]["volume"], labels["volume"])
  assert steps.normalize_views([view], None)[0] is view


@pytest.mark.slow
def test_pretraining_pipeline_ships_the_stats_the_step_applies(
    phantom_data_dir):
  """A pretraining batch carries each image's FOV statistics."""
  config = smoke_config("pretrain_simclr", phantom_data_dir)
  from medclr import methods  # pylint: disable=g-import-not-at-top
  method = methods.get_method(config)
  batch = next(iter(method.host_dataset(config, 4)))
  assert batch["norm"].shape == (4, 2, 3)
  assert (batch["norm"][:, 1] > 0).all()
  assert not np.allclose(batch["norm"][:, 0], 0.0)
  config.data.normalize = "none"
  batch = next(iter(methods.get_method(config).host_dataset(config, 4)))
  assert "norm" not in batch


def test_green_channel_fills_all_three_and_is_checked():
  image = np.zeros((4, 4, 3), np.uint8)
  image[..., 0], image[..., 1], image[..., 2] = 200, 90, 30
  out = preprocess.Preprocess(channels="green").enhance(image)
  assert out.shape == image.shape and (out == 90).all()
  assert (preprocess.Preprocess().enhance(image) == image).all()
  with pytest.raises(ValueError, match="config.data.channels"):
    preprocess.Preprocess(channels="blue")


def test_fov_resampling_of_images_without_an_aperture_is_refused(tmp_path):
  """A set whose FOV is the whole frame (EM, endoscopy) gets a one-line
  ConfigError naming the key, and no workdir file."""
  root = tmp_path / "frames"
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for sub in ("images", "masks"):
      (root / split / sub).mkdir(parents=True)
    for i in range(2):
      Image.fromarray(rng.integers(0, 255, (48, 48, 3), np.uint8)).save(
          root / split / "images" / f"f{i}.png")
      Image.fromarray(((rng.random((48, 48)) > 0.7) * 255).astype(
          np.uint8)).save(root / split / "masks" / f"f{i}.png")
  data_dir = tmp_path / "data"
  prepare.prepare("folder", root, data_dir, name="frames",
                  estimate_fov=False)
  config = smoke_config("finetune_unet", str(data_dir),
                        **{"data.dataset": "frames", "data.fov_diameter": 96,
                           "data.num_labeled": 2})
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match="config.data.fov_diameter=96") as e:
    finetune.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()
  # Such frames (endoscopy) may need their colour: the message says how.
  assert "--config.data.channels=rgb if their colour matters" in str(e.value)
  config.data.channels = "rgb"
  with pytest.raises(ValueError) as e:
    finetune.train_and_evaluate(config, str(workdir))
  assert "channels" not in str(e.value)
