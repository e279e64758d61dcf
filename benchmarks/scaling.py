r"""Data-parallel scaling of the canonical step over 1, 2, 4, 8 devices.

  python -m benchmarks.scaling                   # unet2d-32, batch 16, 128 px

On CPU the devices are forced host devices (`jax_num_cpu_devices=8`, set
before JAX starts) that share the machine's cores, so the step times show the
cost of partitioning, not a speed-up. For each device count n the mesh is
the first n devices and the global batch is the same, so medclr's step must
give the same loss and gradients on every n (BatchNorm statistics and
NT-Xent negatives are global). That is checked on the first step from the
same initial state, against 1 device.

The step is medclr's real one (`steps.make_pretrain_step`, Adam, donated
state) with augmentation preset 'none': augmentation keys are folded with the
device index, so augmented views legitimately differ between device counts.
The gradients are read from Adam's first moment after one step, which is
exactly (1 - b1) * g, so no hook into the step is needed.
The last stdout line is one JSON object, also appended to
benchmarks/results/scaling.jsonl.
"""
import argparse
import sys

from benchmarks import common
from benchmarks import pretrain_step

NAME = "scaling"
ADAM_B1 = 0.9  # optax.adam's default, used by optim.make_optimizer


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog=f"python -m benchmarks.{NAME}",
      description="Loss/gradient equality and step time vs device count.")
  parser.add_argument("--device_counts", default="1,2,4,8")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--size", type=int, default=128)
  parser.add_argument("--widths", default=pretrain_step.CANONICAL_WIDTHS)
  parser.add_argument("--hidden_dim", type=int,
                      default=common.CANONICAL_HEAD["hidden_dim"])
  parser.add_argument("--out_dim", type=int,
                      default=common.CANONICAL_HEAD["out_dim"])
  parser.add_argument("--precision", default="float32",
                      choices=common.PRECISIONS)
  parser.add_argument("--steps", type=int, default=5, help="timed steps")
  parser.add_argument("--warmup", type=int, default=1,
                      help="untimed steps after the equality step")
  parser.add_argument("--loss_atol", type=float, default=1e-5,
                      help="|loss_n - loss_1| allowed")
  parser.add_argument("--grad_rtol", type=float, default=1e-4,
                      help="max |g_n - g_1| allowed, relative to max |g_1|")
  parser.add_argument("--results", default=None)
  args = parser.parse_args(argv)
  args.widths = common.parse_widths(args.widths)
  common.check_size(args.size, args.widths)
  try:
    args.device_counts = [int(n) for n in args.device_counts.split(",")]
  except ValueError as e:
    raise SystemExit(f"--device_counts={args.device_counts!r}: expected a "
                     "comma list of ints, e.g. 1,2,4,8") from e
  if args.device_counts[0] != 1:
    raise SystemExit(f"--device_counts={args.device_counts}: must start with "
                     "1, the reference the others are compared with")
  bad = [n for n in args.device_counts if n < 1 or args.batch % n]
  if bad:
    raise SystemExit(f"--device_counts: {bad} do not divide --batch="
                     f"{args.batch}")
  return args


def adam_first_moment(opt_state):
  """The `mu` tree of the Adam state inside an optax chain state."""
  import jax  # pylint: disable=g-import-not-at-top
  for part in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "mu")):
    if hasattr(part, "mu"):
      return part.mu
  raise ValueError("no Adam state (with a `mu` field) in the optimiser state")


def first_step(step):
  """Runs one step; returns (loss, gradients, batch_stats) on the host."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  step()
  grads = jax.tree.map(lambda mu: np.asarray(mu) / (1.0 - ADAM_B1),
                       adam_first_moment(step.state["opt_state"]))
  stats = jax.tree.map(np.asarray, step.state["batch_stats"])
  return step.loss(), grads, stats


def max_abs_diff(tree_a, tree_b):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), tree_a,
                       tree_b)
  return max(jax.tree.leaves(diffs))


def max_abs(tree):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return max(float(np.max(np.abs(x))) for x in jax.tree.leaves(tree))


def main(argv=None):
  """Runs the benchmark; returns the record it wrote."""
  args = parse_args(argv)
  common.force_cpu_devices(max(args.device_counts))
  import jax  # pylint: disable=g-import-not-at-top
  from medclr import sharding  # pylint: disable=g-import-not-at-top

  if max(args.device_counts) > jax.device_count():
    raise SystemExit(f"--device_counts={args.device_counts} but JAX has "
                     f"{jax.device_count()} devices (it started before "
                     "jax_num_cpu_devices could be set)")
  # One initial state for every device count: identical starting parameters
  # by construction, placed replicated on each mesh.
  config = pretrain_step.canonical_config(
      batch=args.batch, size=args.size, widths=args.widths,
      precision=args.precision, hidden_dim=args.hidden_dim,
      out_dim=args.out_dim)
  model = pretrain_step.Model(config, sharding.make_mesh(1))
  reference = None
  rows = []
  for count in args.device_counts:
    step = pretrain_step.MedclrStep(model, mesh=sharding.make_mesh(count),
                                    preset="none")
    loss, grads, stats = first_step(step)
    times = common.time_calls(step, args.steps, args.warmup)
    row = {"devices": count, "loss": loss, "step_s": common.median(times),
           "images_per_s": 2 * args.batch / common.median(times),
           "compile_s": step.compile_s}
    if reference is None:
      reference = (loss, grads, stats)
      row["grad_max_abs"] = max_abs(grads)
    ref_loss, ref_grads, ref_stats = reference
    row["loss_abs_diff"] = abs(loss - ref_loss)
    row["grad_max_abs_diff"] = max_abs_diff(grads, ref_grads)
    row["grad_max_rel_diff"] = row["grad_max_abs_diff"] / max_abs(ref_grads)
    row["batch_stats_max_abs_diff"] = max_abs_diff(stats, ref_stats)
    row["equal"] = bool(row["loss_abs_diff"] <= args.loss_atol and
                        row["grad_max_rel_diff"] <= args.grad_rtol)
    rows.append(row)
    del step  # free the donated buffers before the next mesh

  base = rows[0]["step_s"]
  result = {
      "method": "simclr", "precision": args.precision, "batch": args.batch,
      "size": args.size, "widths": list(args.widths),
      "backend": jax.default_backend(),
      "device_counts": args.device_counts,
      "loss_atol": args.loss_atol, "grad_rtol": args.grad_rtol,
      "rows": rows,
      "all_equal": all(r["equal"] for r in rows),
      "max_loss_abs_diff": max(r["loss_abs_diff"] for r in rows),
      "max_grad_rel_diff": max(r["grad_max_rel_diff"] for r in rows),
      "step_time_ratio_vs_1": {str(r["devices"]): r["step_s"] / base
                               for r in rows},
      "peak_rss_mb": common.peak_rss_mb(),
  }
  return common.report(NAME, result, args.results)


if __name__ == "__main__":
  main(sys.argv[1:])
