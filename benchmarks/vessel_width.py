r"""Which vessels a fundus model misses: sensitivity on thin and thick vessels.

  python -m benchmarks.vessel_width --shared_data=../shared/data \
      --eval=stare_k2_s0=$W/finetune_scratch_stare_k2_s0/eval_drive ...

Each `--eval` is NAME=DIR, where DIR is an evaluation's output (its
metrics.json names the labelled set, predictions/ holds one probability PNG,
0-255, per test image). The set's first-observer vessel pixels inside the FOV
are split into thin (removed by a 3x3 opening: under 3 px across) and thick,
and the rows give sensitivity on each and precision at probability 0.5, and
the pooled Dice at 0.5 beside the best pooled Dice over thresholds (chosen on
the test set itself: a diagnosis of calibration, never a result).
A row per labelled set gives the thin share of its own annotations after
scaling each image so that its FOV is 540 px across (the recipe's scale), which
measures how each set's annotators drew vessels. Rows hold metrics only.
"""
import argparse
import json
import pathlib

import numpy as np
from PIL import Image
from scipy import ndimage

from benchmarks import common

RECIPE_FOV = 540  # px across: configs/finetune_unet.py data.fov_diameter


def ground_truth(shared_data, dataset, stem):
  """(vessel mask, FOV mask), booleans, of one test image of `dataset`."""
  root = pathlib.Path(shared_data) / dataset / "test"
  if dataset == "drive":
    number = stem.split("_")[0]
    vessels = root / "1st_manual" / f"{number}_manual1.gif"
    fov = root / "mask" / f"{number}_test_mask.gif"
  else:
    vessels, fov = root / "masks" / f"{stem}.png", root / "fov" / f"{stem}.png"
  read = lambda path: np.asarray(Image.open(path).convert("L")) > 127
  return read(vessels), read(fov)


def thin_part(vessels):
  """Vessel pixels a 3x3 opening removes: vessels under 3 px across."""
  return vessels & ~ndimage.binary_opening(vessels, np.ones((3, 3), bool))


def scaled_to_recipe(vessels, fov):
  """`vessels` resampled so that the FOV is RECIPE_FOV px across."""
  columns = np.flatnonzero(fov.any(axis=0))
  factor = RECIPE_FOV / (columns[-1] - columns[0] + 1)
  size = (round(vessels.shape[1] * factor), round(vessels.shape[0] * factor))
  image = Image.fromarray(vessels.astype(np.uint8) * 255)
  return np.asarray(image.resize(size, Image.BILINEAR)) > 127


def evaluation_row(shared_data, name, eval_dir):
  """Sensitivity on thin and thick vessels, and precision, pooled."""
  eval_dir = pathlib.Path(eval_dir)
  metrics = json.loads((eval_dir / "metrics.json").read_text())
  dataset = metrics["dataset"]
  counts = np.zeros(5)  # thin hit/total, thick hit/total, predicted hit
  predicted = 0
  # Per 0-255 probability level: vessel and background FOV pixel counts.
  levels = np.zeros((2, 256))
  for path in sorted((eval_dir / "predictions").glob("*.png")):
    vessels, fov = ground_truth(shared_data, dataset, path.stem)
    probability = np.asarray(Image.open(path))
    levels[0] += np.bincount(probability[fov & vessels], minlength=256)
    levels[1] += np.bincount(probability[fov & ~vessels], minlength=256)
    positive = (probability > 127) & fov
    thin = thin_part(vessels) & fov
    thick = vessels & fov & ~thin
    counts += [(positive & thin).sum(), thin.sum(), (positive & thick).sum(),
               thick.sum(), (positive & vessels).sum()]
    predicted += positive.sum()
  return {"kind": "evaluation", "name": name,
          "trained_on": metrics.get("trained_on"), "tested_on": dataset,
          "images": len(list((eval_dir / "predictions").glob("*.png"))),
          "sensitivity_thin": float(counts[0] / counts[1]),
          "sensitivity_thick": float(counts[2] / counts[3]),
          "precision": float(counts[4] / predicted),
          **pooled_dice(levels)}


def pooled_dice(levels):
  """Pooled Dice at probability 0.5 and at the best threshold."""
  hits = np.cumsum(levels[0][::-1])[::-1]  # vessel pixels at >= level
  positives = np.cumsum(levels.sum(0)[::-1])[::-1]
  dice = 2 * hits / (positives + levels[0].sum())
  best = int(np.argmax(dice))
  return {"dice_at_0.5": float(dice[128]), "best_dice": float(dice[best]),
          "best_threshold": best / 255}


def annotation_row(shared_data, dataset):
  """The thin share of a set's test annotations at the recipe's scale."""
  root = pathlib.Path(shared_data) / dataset / "test"
  stems = [p.stem for p in sorted((root / "images").iterdir())]
  thin = total = 0
  for stem in stems:
    vessels, fov = ground_truth(shared_data, dataset, stem)
    vessels = scaled_to_recipe(vessels, fov)
    thin += thin_part(vessels).sum()
    total += vessels.sum()
  return {"kind": "annotations", "dataset": dataset, "images": len(stems),
          "thin_share_at_fov540": float(thin / total)}


COLUMNS = ("sensitivity_thin", "sensitivity_thick", "precision",
           "dice_at_0.5", "best_dice", "best_threshold")


def write_table(jsonl, md):
  """Means over seeds (+/- seed std) of each model group's evaluations."""
  rows = [json.loads(line) for line in pathlib.Path(jsonl).read_text(
      ).splitlines() if line.strip()]
  lines = ["# vessel_width: which vessels a fundus model misses", "",
           "Written by `python -m benchmarks.vessel_width`. " + __doc__.split(
               "\n\n")[2].replace("\n", " "), "",
           "| set | thin share of its annotations (FOV 540 px) |", "|---|---|"]
  lines += [f"| {r['dataset']} | {r['thin_share_at_fov540']:.3f} |"
            for r in rows if r["kind"] == "annotations"]
  lines += ["", "| model | trained on -> tested on | seeds | " +
            " | ".join(COLUMNS) + " |", "|---" * (3 + len(COLUMNS)) + "|"]
  groups = {}
  for r in rows:
    if r["kind"] == "evaluation":
      model = r["name"].rsplit("_s", 1)[0]
      groups.setdefault((model, r["trained_on"], r["tested_on"]), []).append(r)
  for (model, trained, tested), members in groups.items():
    cells = []
    for column in COLUMNS:
      values = np.array([m[column] for m in members])
      spread = f" +/- {values.std(ddof=1):.3f}" if len(values) > 1 else ""
      cells.append(f"{values.mean():.3f}{spread}")
    lines.append(f"| {model} | {trained} -> {tested} | {len(members)} | " +
                 " | ".join(cells) + " |")
  pathlib.Path(md).write_text("\n".join(lines) + "\n")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shared_data", required=True)
  parser.add_argument("--eval", action="append", default=[],
                      help="NAME=DIR of an evaluation (repeatable)")
  parser.add_argument("--results", default=None)
  args = parser.parse_args()
  for dataset in ("drive", "stare"):
    common.report("vessel_width", annotation_row(args.shared_data, dataset),
                  args.results)
  for item in args.eval:
    name, _, directory = item.partition("=")
    common.report("vessel_width",
                  evaluation_row(args.shared_data, name, directory),
                  args.results)
  jsonl = pathlib.Path(args.results or common.default_results_path(
      "vessel_width"))
  write_table(jsonl, jsonl.with_suffix(".md"))


if __name__ == "__main__":
  main()
