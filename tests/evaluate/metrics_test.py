"""Tests for medclr.evaluate.metrics against values worked out by hand."""
import itertools
import math

import numpy as np
import pytest

from medclr.evaluate import metrics

# 2x3 image. Thresholded at 0.5 the prediction is [[1, 0, 1], [0, 1, 0]], so
# against the target: tp = 2 ((0,0), (1,1)), fp = 1 ((0,2)), fn = 1 ((1,2)),
# tn = 2 ((0,1), (1,0)).
PROB = np.array([[0.9, 0.2, 0.6], [0.1, 0.7, 0.4]])
TARGET = np.array([[1, 0, 0], [0, 1, 1]])


def brute_force_auc(scores, labels):
  """Fraction of (positive, negative) pairs ranked right, ties count 1/2."""
  positives = scores[labels == 1]
  negatives = scores[labels == 0]
  wins = sum(1.0 if p > n else 0.5 if p == n else 0.0
             for p, n in itertools.product(positives, negatives))
  return wins / (len(positives) * len(negatives))


def test_segmentation_metrics_match_hand_computed_values():
  result = metrics.segmentation_metrics(PROB, TARGET)
  assert (result["tp"], result["fp"], result["fn"], result["tn"]) == (2, 1, 1,
                                                                      2)
  assert result["dice"] == pytest.approx(4 / 6)
  assert result["iou"] == pytest.approx(2 / 4)
  assert result["sensitivity"] == pytest.approx(2 / 3)
  assert result["specificity"] == pytest.approx(2 / 3)
  assert result["accuracy"] == pytest.approx(4 / 6)
  # Positives 0.9, 0.7, 0.4 vs negatives 0.2, 0.6, 0.1: 8 of 9 pairs right.
  assert result["auc_roc"] == pytest.approx(8 / 9)


def test_threshold_is_inclusive():
  result = metrics.segmentation_metrics(
      np.array([[0.5, 0.49]]), np.array([[1, 0]]))
  assert (result["tp"], result["tn"]) == (1, 1)
  assert result["dice"] == 1.0


def test_fov_drops_outside_pixels():
  fov = np.ones_like(TARGET)
  fov[1, 2] = 0  # The one false negative.
  result = metrics.segmentation_metrics(PROB, TARGET, fov)
  assert (result["tp"], result["fp"], result["fn"], result["tn"]) == (2, 1, 0,
                                                                      2)
  assert result["dice"] == pytest.approx(4 / 5)
  assert result["accuracy"] == pytest.approx(4 / 5)


def test_pixels_outside_fov_do_not_change_metrics():
  rng = np.random.default_rng(0)
  prob = rng.random((16, 16))
  target = (rng.random((16, 16)) < 0.3).astype(np.int32)
  fov = np.zeros((16, 16), np.int32)
  fov[2:14, 3:12] = 1
  before = metrics.segmentation_metrics(prob, target, fov)
  outside = fov == 0
  prob_changed, target_changed = prob.copy(), target.copy()
  prob_changed[outside] = 1.0 - prob_changed[outside]
  target_changed[outside] = 1 - target_changed[outside]
  after = metrics.segmentation_metrics(prob_changed, target_changed, fov)
  assert after == before
  # The same change counts when every pixel is in view.
  assert (metrics.segmentation_metrics(prob_changed, target_changed) !=
          metrics.segmentation_metrics(prob, target))


def test_both_empty_gives_dice_one_and_undefined_auc():
  result = metrics.segmentation_metrics(np.full((4, 4), 0.1),
                                        np.zeros((4, 4), np.int32))
  assert result["dice"] == 1.0
  assert result["iou"] == 1.0
  assert math.isnan(result["auc_roc"])
  assert math.isnan(result["sensitivity"])
  assert result["specificity"] == 1.0
  assert result["accuracy"] == 1.0


def test_prediction_without_target_gives_dice_zero():
  prob = np.zeros((4, 4))
  prob[0, 0] = 0.9
  result = metrics.segmentation_metrics(prob, np.zeros((4, 4), np.int32))
  assert result["dice"] == 0.0
  assert result["iou"] == 0.0
  assert result["specificity"] == pytest.approx(15 / 16)


def test_target_without_background_has_undefined_specificity():
  result = metrics.segmentation_metrics(np.full((2, 2), 0.8),
                                        np.ones((2, 2), np.int32))
  assert math.isnan(result["specificity"])
  assert math.isnan(result["auc_roc"])
  assert result["sensitivity"] == 1.0


@pytest.mark.parametrize(
    "prob, target, fov, message",
    [
        (np.full((2, 2), 1.5), np.zeros((2, 2)), None, "probabilities"),
        (np.zeros((2, 2)), np.zeros((2, 3)), None, "shape"),
        (np.zeros((2, 2)), np.full((2, 2), 2), None, "target must contain"),
        (np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2)), "no pixels"),
        (np.zeros((2, 2)), np.zeros((2, 2)), np.ones((3, 2)), "fov has shape"),
    ],
)
def test_bad_inputs_raise_clear_errors(prob, target, fov, message):
  with pytest.raises(ValueError, match=message):
    metrics.segmentation_metrics(prob, target, fov)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_equals_brute_force_pair_count_with_ties(seed):
  rng = np.random.default_rng(seed)
  # Few distinct score values, so many pairs are tied.
  scores = rng.integers(0, 6, size=60) / 5.0
  labels = (rng.random(60) < 0.4).astype(np.int32)
  assert metrics.auc_roc(scores, labels) == pytest.approx(
      brute_force_auc(scores, labels), abs=1e-12)


def test_auc_of_perfect_reversed_and_constant_scores():
  labels = np.array([0, 0, 1, 0, 1, 1])
  scores = labels * 0.5 + np.linspace(0.0, 0.1, 6)
  assert metrics.auc_roc(scores, labels) == 1.0
  assert metrics.auc_roc(-scores, labels) == 0.0
  assert metrics.auc_roc(np.ones(6), labels) == 0.5


def test_auc_handles_a_full_image_of_pixels():
  rng = np.random.default_rng(3)
  labels = (rng.random(250_000) < 0.12).astype(np.uint8)
  # Positives score higher by 1 on average: AUC = Phi(1 / sqrt(2)) ~ 0.7602.
  scores = rng.normal(size=250_000) + labels
  assert metrics.auc_roc(scores, labels) == pytest.approx(0.7602, abs=0.005)


def test_multiclass_metrics_match_hand_computed_values():
  pred = np.array([[0, 1, 2], [1, 1, 0]])
  target = np.array([[0, 1, 1], [2, 1, 0]])
  result = metrics.multiclass_metrics(pred, target, None, num_classes=3)
  # Class 1: tp 2, fp 1, fn 1. Class 2: tp 0, fp 1, fn 1.
  assert result["dice_1"] == pytest.approx(2 / 3)
  assert result["iou_1"] == pytest.approx(1 / 2)
  assert result["dice_2"] == 0.0
  assert result["mean_dice"] == pytest.approx(1 / 3)
  assert result["mean_iou"] == pytest.approx(1 / 4)
  assert result["accuracy"] == pytest.approx(4 / 6)
  assert "dice_0" not in result


def test_multiclass_fov_and_absent_class():
  pred = np.array([[0, 1, 2], [1, 1, 0]])
  target = np.array([[0, 1, 1], [2, 1, 0]])
  fov = np.array([[1, 1, 0], [0, 1, 1]])  # Hides both errors.
  result = metrics.multiclass_metrics(pred, target, fov, num_classes=4)
  assert result["dice_1"] == 1.0
  assert result["dice_2"] == 1.0  # Absent from both inside the FOV.
  assert result["dice_3"] == 1.0
  assert result["accuracy"] == 1.0


def test_multiclass_rejects_out_of_range_labels():
  with pytest.raises(ValueError, match="pred_labels has class indices"):
    metrics.multiclass_metrics(np.array([[3]]), np.array([[0]]), None, 3)


def test_summarize_ignores_nan_and_counts_values():
  per_image = [
      {"image": "01_test", "dice": 0.5, "auc_roc": 0.8, "tp": 3},
      {"image": "02_test", "dice": 1.0, "auc_roc": math.nan, "tp": 5},
  ]
  summary = metrics.summarize(per_image)
  assert set(summary) == {"dice", "auc_roc", "tp"}
  assert summary["dice"] == {"mean": 0.75, "std": 0.25, "count": 2}
  assert summary["auc_roc"] == {"mean": 0.8, "std": 0.0, "count": 1}
  assert summary["tp"]["mean"] == 4.0
  assert metrics.summarize(per_image, ddof=1)["dice"]["std"] == pytest.approx(
      math.sqrt(0.125))


def test_summarize_all_nan_metric_and_empty_input():
  summary = metrics.summarize([{"auc_roc": math.nan}])
  assert summary["auc_roc"]["count"] == 0
  assert math.isnan(summary["auc_roc"]["mean"])
  with pytest.raises(ValueError, match="at least one"):
    metrics.summarize([])


def test_format_table_aligns_columns():
  table = metrics.format_table({
      "dice": {"mean": 0.75, "std": 0.25, "count": 2},
      "specificity": {"mean": 0.98123, "std": 0.001, "count": 20},
  })
  lines = table.splitlines()
  assert lines[0].split() == ["metric", "mean", "std", "n"]
  assert lines[2].split() == ["dice", "0.7500", "0.2500", "2"]
  assert lines[3].split() == ["specificity", "0.9812", "0.0010", "20"]
  assert len({len(line) for line in lines}) == 1
  # The mean column ends at the same place in every row.
  assert lines[2].index("0.7500") == lines[3].index("0.9812")


def test_format_table_puts_named_summaries_side_by_side():
  scratch = metrics.summarize([{"dice": 0.5}, {"dice": 0.7}])
  simclr = metrics.summarize([{"dice": 0.8, "auc_roc": 0.97}])
  lines = metrics.format_table({"scratch": scratch,
                                "simclr": simclr}).splitlines()
  assert lines[0].split() == ["metric", "scratch", "simclr"]
  assert lines[2].split() == ["dice", "0.6000", "+/-", "0.1000", "0.8000",
                              "+/-", "0.0000"]
  assert lines[3].split() == ["auc_roc", "-", "0.9700", "+/-", "0.0000"]


def test_format_table_rejects_other_shapes():
  with pytest.raises(ValueError, match="expects metric"):
    metrics.format_table({"dice": 0.5})
