r"""Does a threshold chosen on the labelled training images help on test?

  python -m benchmarks.threshold_calibration $WORK/finetune_scratch_drive_k2_s0 ...

For each fine-tuning workdir: Dice over a grid of thresholds on its labelled
training images (predicted now) and on its test images (the saved prediction
PNGs of `launch.evaluate`); the training-best threshold is then read on the
test curve. One row per workdir goes to
benchmarks/results/threshold_calibration.jsonl (no paths, no images).
"""
import json
import os
import sys

import numpy as np
from PIL import Image

from medclr.data import sources
from medclr.evaluate import evaluate
from medclr.study import cells

THRESHOLDS = np.round(np.arange(0.20, 0.71, 0.02), 2)
RESULTS = cells.REPO / "benchmarks" / "results" / "threshold_calibration.jsonl"


def dice_curve(prob, mask, fov):
  """Dice inside the FOV at every threshold of THRESHOLDS."""
  truth, scores = mask[fov] > 0, prob[fov]
  return np.array([2 * np.sum((scores >= t) & truth) /
                   (np.sum(scores >= t) + truth.sum()) for t in THRESHOLDS])


def mean_curve(source, stems, probability):
  curves = []
  for index in range(len(source)):
    record = source[index]
    if sources.stem_of(record) in stems:
      curves.append(dice_curve(probability(record), np.asarray(record["mask"]),
                               np.asarray(record["fov"]) > 0))
  return np.mean(curves, axis=0)


def calibrate(workdir):
  predictor = evaluate.load_for_inference(workdir)
  data = predictor.config.data
  labeled = json.load(open(os.path.join(workdir, "labeled.json")))["stems"]
  train = sources.open_split(data.data_dir, data.dataset, data.train_split)
  test = sources.open_split(data.data_dir, data.dataset, data.test_split)
  train_curve = mean_curve(train, set(labeled), lambda r: (
      predictor.probabilities(np.asarray(r["image"]), np.asarray(r["fov"]))))
  test_curve = mean_curve(test, set(sources.stems(test)), lambda r: np.asarray(
      Image.open(os.path.join(workdir, "eval", "predictions",
                              sources.stem_of(r) + ".png")),
      np.float32) / 255)
  best = int(np.argmax(train_curve))
  half = int(np.flatnonzero(THRESHOLDS == 0.5)[0])
  return {"time": cells.now(), "git": cells.git_revision(),
          "workdir": os.path.basename(os.path.normpath(workdir)),
          "labeled": labeled, "train_best_threshold": float(THRESHOLDS[best]),
          "train_dice_best": float(train_curve[best]),
          "test_dice_at_0.5": float(test_curve[half]),
          "test_dice_at_train_best": float(test_curve[best]),
          "thresholds": THRESHOLDS.tolist(),
          "train_curve": train_curve.round(4).tolist(),
          "test_curve": test_curve.round(4).tolist()}


def main(workdirs):
  for workdir in workdirs:
    row = calibrate(workdir)
    with open(RESULTS, "a") as f:
      f.write(json.dumps(row) + "\n")
    print({k: row[k] for k in ("workdir", "train_best_threshold",
                               "test_dice_at_0.5", "test_dice_at_train_best")})


if __name__ == "__main__":
  main(sys.argv[1:])
