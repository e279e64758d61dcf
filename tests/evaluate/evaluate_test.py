"""The evaluation's numbers, recomputed independently from what it saved."""
import json
import os

import jax
import numpy as np
from PIL import Image
import pytest

from conftest import smoke_config
from medclr.data import preprocess
from medclr.data import sources
from medclr.evaluate import evaluate
from medclr.train import finetune


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, phantom_data_dir):
  """A smoke U-Net trained long enough to segment part of the vessels."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  finetune.train_and_evaluate(
      smoke_config("finetune_unet", phantom_data_dir, num_steps=60,
                   checkpoint_every=60, log_every=20,
                   **{"optim.learning_rate": 1e-2, "eval.window": -1}),
      workdir)
  return workdir


def _rank_auc(scores, truth):
  """AUC as the Mann-Whitney statistic, ties counted half."""
  order = np.argsort(scores, kind="mergesort")
  ranks = np.empty(len(scores))
  sorted_scores = scores[order]
  # Average ranks over ties.
  _, first, counts = np.unique(sorted_scores, return_index=True,
                               return_counts=True)
  for start, count in zip(first, counts):
    ranks[order[start:start + count]] = start + (count + 1) / 2
  positives = truth.sum()
  negatives = len(truth) - positives
  return (ranks[truth].sum() - positives * (positives + 1) / 2) / (
      positives * negatives)


def test_metrics_match_the_saved_predictions(trained_dir):
  result = evaluate.evaluate(trained_dir, save_predictions=True)
  with open(os.path.join(trained_dir, "eval", "metrics.json")) as f:
    assert json.load(f)["summary"] == json.loads(json.dumps(
        result["summary"], default=float))
  config = json.load(open(os.path.join(trained_dir, "config.json")))
  source = sources.open_split(config["data"]["data_dir"], "phantom", "test")
  record = source[0]
  stem = sources.stem_of(record)
  row = next(r for r in result["per_image"] if r["stem"] == stem)
  assert 0.2 < row["dice"] < 1.0, "the model must segment something"
  png = np.asarray(Image.open(os.path.join(
      trained_dir, "eval", "predictions", f"{stem}.png")), np.float32) / 255
  fov = np.asarray(record["fov"]) > 0
  truth = np.asarray(record["mask"])[fov] > 0
  predicted = png[fov] >= 0.5
  dice = 2 * np.sum(predicted & truth) / (predicted.sum() + truth.sum())
  # The PNG holds probabilities rounded to 1/255: a few pixels at 0.5 may
  # fall on the other side of the threshold.
  assert dice == pytest.approx(row["dice"], abs=0.01)
  assert _rank_auc(png[fov], truth) == pytest.approx(row["auc_roc"],
                                                     abs=0.01)
  sensitivity = np.sum(predicted & truth) / truth.sum()
  assert sensitivity == pytest.approx(row["sensitivity"], abs=0.01)


def test_multiscale_logits_average_each_scale_on_the_image_grid(trained_dir):
  predictor = evaluate.load_for_inference(trained_dir)
  record = sources.open_split(predictor.config.data.data_dir,
                              predictor.config.data.dataset, "test")[0]
  image, fov = np.asarray(record["image"]), np.asarray(record["fov"])

  def logits(scales):
    predictor.config.eval.scales = scales
    return predictor.logits(image, fov)

  native, larger, both = logits("1"), logits("1.5"), logits("1,1.5")
  assert both.shape == native.shape == larger.shape
  assert both.shape[:2] == image.shape[:2]
  assert not np.allclose(native, larger, atol=1e-3)
  np.testing.assert_allclose(both, (native + larger) / 2, rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("text", ["", "0", "1,x", "8"])
def test_bad_scales_name_the_key(text):
  from medclr import errors  # pylint: disable=g-import-not-at-top
  from medclr.evaluate import inference  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.ConfigError, match="config.eval.scales"):
    inference.parse_scales(text)


def test_adapt_bn_changes_only_batch_norm_statistics(trained_dir):
  predictor = evaluate.load_for_inference(trained_dir)
  params = jax.tree.map(np.array, predictor.params)
  stats = jax.tree.map(np.array, predictor.batch_stats)
  source = sources.open_split(predictor.config.data.data_dir, "phantom",
                              "test")
  # A darker, flatter camera: what the statistics must follow.
  pairs = [(np.asarray(source[i]["image"]) // 2, np.asarray(source[i]["fov"]))
           for i in range(len(source))]
  predictor.adapt_batch_norm(pairs)
  jax.tree.map(np.testing.assert_array_equal, params, predictor.params)
  changed = jax.tree.leaves(jax.tree.map(
      lambda a, b: not np.allclose(a, b), stats, predictor.batch_stats))
  assert changed and all(changed), "every BatchNorm statistic must move"


def test_another_dataset_keeps_the_trained_statistics_unless_asked(
    trained_dir, tmp_path):
  # Adaptation helped models from 2 STARE images and hurt those from 20
  # DRIVE images across cameras (docs/cross_camera.md): an option, not a
  # default, and recorded in metrics.json either way.
  from medclr.data import prepare  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path / "data"
  prepare.prepare("phantom", None, data_dir, name="phantom_cross", seed=5,
                  size=96, num_train=2, num_test=2)
  run = lambda name, **kw: evaluate.evaluate(
      trained_dir, out_dir=str(tmp_path / name), save_predictions=False,
      dataset="phantom_cross", data_dir=str(data_dir), **kw)
  kept, adapted = run("kept"), run("adapted", adapt_bn=True)
  assert not kept["adapt_bn"] and adapted["adapt_bn"]
  # The adapted statistics are what predicted.
  assert (adapted["summary"]["auc_roc"]["mean"] !=
          kept["summary"]["auc_roc"]["mean"])


def test_auto_scale_follows_the_fov_ratio(trained_dir, tmp_path):
  result = evaluate.evaluate(trained_dir, scales="auto", adapt_bn=True,
                             out_dir=str(tmp_path), save_predictions=False)
  saved = json.load(open(os.path.join(trained_dir, "preprocess.json")))
  assert saved["train_fov_diameter"] > 0 and result["adapt_bn"]
  for row in result["per_image"]:
    assert row["scale"] == [pytest.approx(
        saved["train_fov_diameter"] / row["fov_diameter"], abs=1e-3)]
  spec = preprocess.Preprocess(train_fov_diameter=200.0)
  disc = _disc(300, 50)  # 101 px across
  assert spec.test_scale(disc) == pytest.approx(200 / 101, rel=0.02)
  # With the FOV resampled to a fixed diameter, the scale is already equal.
  assert preprocess.Preprocess(
      fov_diameter=540, train_fov_diameter=200.0).test_scale(disc) == 1.0


def _disc(side, radius):
  yy, xx = np.mgrid[:side, :side]
  centre = side // 2
  return ((yy - centre) ** 2 + (xx - centre) ** 2 <= radius ** 2).astype(
      np.uint8)


def test_saved_result_is_only_the_evaluation_of_this_checkpoint(tmp_path):
  # What the notebook reuses instead of evaluating again: launch.evaluate's
  # default folders, and only a result of the same step, dataset and split.
  own = evaluate.default_out_dir(str(tmp_path), "drive", "drive")
  other = evaluate.default_out_dir(str(tmp_path), "stare", "drive")
  assert (str(own), str(other)) == (f"{tmp_path}/eval",
                                    f"{tmp_path}/eval_stare")
  assert evaluate.saved_result(own, 2, "drive", "test") is None
  own.mkdir()
  written = {"step": 2, "dataset": "drive", "split": "test", "per_image": []}
  (own / "metrics.json").write_text(json.dumps(written))
  assert evaluate.saved_result(own, 2, "drive", "test") == written
  for step, dataset, split in ((3, "drive", "test"), (2, "stare", "test"),
                               (2, "drive", "train")):
    assert evaluate.saved_result(own, step, dataset, split) is None
