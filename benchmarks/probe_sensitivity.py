"""Which vessel/background probe can see what pretraining changed?

Reads a pretraining workdir (its config and every kept checkpoint), rebuilds
the probe patches of its `config.probe` with several sampling seeds, and
scores each checkpoint (and the run's step-0 initialisation) with probe
variants: the k-NN over all hypercolumn levels, k-NN and ridge-linear probes
over the fine levels, and a ridge-linear probe over all levels. The seed
spread at step 0 is the probe's own noise; a variant is useful only if a
trained encoder moves it by more than that. Rows go to
benchmarks/results/probe_sensitivity.jsonl.

  python -m benchmarks.probe_sensitivity --workdir=$W/pretrain_dino --seeds=3
"""
import argparse
import json
import statistics

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks import common
from medclr import checkpointing
from medclr import methods
from medclr import models
from medclr.evaluate import probe
from medclr.train import pretrain


def _variants():
  """name -> (kind, levels); levels None = all."""
  return {"knn_all": ("knn", None), "knn_fine": ("knn", (0, 1)),
          "linear_all": ("linear", None), "linear_fine": ("linear", (0, 1))}


def _score(graphdef, probe_set, params, batch_stats, k):
  model = nnx.merge(graphdef, params, batch_stats)
  features = model.encoder(jnp.asarray(probe_set.patches), train=True)
  coords = jnp.asarray(probe_set.coords)
  fit = np.flatnonzero(probe_set.fit)
  query = np.flatnonzero(~probe_set.fit)
  out = {}
  for name, (kind, levels) in _variants().items():
    chosen = features if levels is None else [features[i] for i in levels]
    out[name] = float(probe.classify(
        probe.hypercolumns(chosen, coords), jnp.asarray(probe_set.labels),
        fit, query, kind, k))
  return out


def _states(workdir, params, batch_stats, abstract):
  """(step, params, batch_stats): the run's initialisation (step 0), then
  every kept checkpoint."""
  yield 0, params, batch_stats
  ckpt = checkpointing.Checkpointer(workdir, save_every=1, keep=1000,
                                    async_save=False)
  saved = sorted(ckpt.all_steps())
  ckpt.close()
  for step in saved:
    tree, _ = checkpointing.restore_subtrees(workdir, abstract, step)
    yield step, tree["params"], tree["batch_stats"]


def _markdown(rows):
  """Per run: each variant's step-0 and last value and their paired gain."""
  lines = ["| run | probe size | variant | step 0 | last step | gain, per "
           "probe seed | gain mean +/- std |", "|---|---|---|---|---|---|---|"]
  for label in dict.fromkeys(r["label"] for r in rows):
    run = [r for r in rows if r["label"] == label]
    first, last = run[0], run[-1]
    size = (f"{first['num_images']} img x {first['patches_per_image']} x "
            f"{first['pixels_per_patch']} px")
    for name in _variants():
      gains = [b - a for a, b in zip(first[name]["values"],
                                     last[name]["values"])]
      spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
      lines.append(
          f"| {label} | {size} | {name} | "
          f"{first[name]['mean']:.3f} +/- {first[name]['seed_std']:.3f} | "
          f"{last[name]['mean']:.3f} (step {last['step']}) | "
          f"{', '.join(f'{g:+.3f}' for g in gains)} | "
          f"{statistics.mean(gains):+.3f} +/- {spread:.3f} |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--num_images", type=int, default=0,
                      help="probe images (0: the run's config.probe)")
  parser.add_argument("--pixels", type=int, default=0,
                      help="pixels per patch (0: the run's config.probe)")
  parser.add_argument("--patches", type=int, default=0,
                      help="patches per image (0: the run's config.probe)")
  parser.add_argument("--label", default="")
  args = parser.parse_args()
  config = ml_collections.ConfigDict(checkpointing.read_config(args.workdir))
  config.probe.dataset = config.probe.dataset or "drive"
  if args.num_images:
    config.probe.num_images = args.num_images
  if args.pixels:
    config.probe.pixels_per_patch = args.pixels
  if args.patches:
    config.probe.patches_per_image = args.patches
  graphdef, params, stats = models.split_model(
      methods.get_method(config).make_model(nnx.Rngs(config.seed)))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          {"params": params, "batch_stats": stats})
  probe_sets = []
  for seed in range(args.seeds):
    config.probe.seed = seed
    probe_sets.append(pretrain.probe_set_of(config))
  for step, p, s in _states(args.workdir, params, stats, abstract):
    scores = [_score(graphdef, ps, p, s, config.probe.k) for ps in probe_sets]
    row = {"label": args.label, "method": config.method, "step": step,
           "num_images": config.probe.num_images,
           "patches_per_image": config.probe.patches_per_image,
           "pixels_per_patch": config.probe.pixels_per_patch}
    for name in _variants():
      values = [sc[name] for sc in scores]
      row[name] = {"mean": statistics.mean(values),
                   "seed_std": statistics.pstdev(values), "values": values}
    common.report("probe_sensitivity", row)
  path = common.default_results_path("probe_sensitivity")
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  path.with_suffix(".md").write_text(_markdown(rows))


if __name__ == "__main__":
  main()
