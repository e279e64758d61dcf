"""Study plots (metrics only, never images of the data): Dice vs label
budget per arm, Dice vs augmentation strength, probe accuracy over steps."""
import pathlib

import matplotlib

matplotlib.use("Agg")  # files only, no display
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top


def plot_study(stats, dice_vs_k_path, strength_path, human_dice=None):
  """Dice vs k per arm, and Dice vs augmentation strength; returns paths."""
  if not stats:
    return []
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for arm, per_k in stats.items():
    ks = sorted(per_k)
    ax.errorbar(ks, [per_k[k][0] for k in ks], yerr=[per_k[k][1] for k in ks],
                marker="o", capsize=3, label=arm)
  ax.set_xscale("log")
  if human_dice:
    ax.axhline(human_dice, color="grey", linestyle=":", label="human graders")
  paths = [_save(fig, ax, "labelled images k",
                 "test Dice (mean over seeds +/- seed std)", dice_vs_k_path)]
  strengths = {}
  for arm, per_k in stats.items():
    base, _, strength = arm.split("@")[0].partition("*")
    if base == "simclr_simclr_strong":
      strengths[float(strength or 1.0)] = per_k
  if len(strengths) > 1:
    fig, ax = plt.subplots(figsize=(6, 4))
    for k in (1, 2):
      xs = sorted(s for s in strengths if k in strengths[s])
      ax.errorbar(xs, [strengths[s][k][0] for s in xs],
                  yerr=[strengths[s][k][1] for s in xs], marker="o",
                  capsize=3, label=f"k={k}")
      if k in stats.get("scratch", {}):
        ax.axhline(stats["scratch"][k][0], linestyle="--", linewidth=0.8,
                   label=f"scratch k={k}")
    paths.append(_save(fig, ax, "simclr_strong augmentation strength",
                       "test Dice", strength_path))
  return paths


def plot_probe(pretrain_rows, path):
  """Probe accuracy over pretraining steps, one line per arm; [path]."""
  curves = {arm: row["diagnostics"]["probe_curve"]
            for arm, row in pretrain_rows.items()
            if (row.get("diagnostics") or {}).get("probe_curve")}
  if not curves:
    return []
  fig, ax = plt.subplots(figsize=(6, 4))
  for arm, curve in curves.items():
    ax.plot([p[0] for p in curve], [p[1] for p in curve], marker=".",
            label=arm)
  return [_save(fig, ax, "pretraining step",
                "probe balanced accuracy (k-NN, vessel vs background)", path)]


def _save(fig, ax, xlabel, ylabel, path):
  """Labels, legend, saves `fig` to `path` and closes it; returns the path."""
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return pathlib.Path(path)
