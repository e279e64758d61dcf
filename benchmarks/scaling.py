r"""Data-parallel scaling of the canonical step over 1, 2, 4, 8 devices.

  python -m benchmarks.scaling                   # unet2d-32, batch 16, 128 px

On CPU the devices are forced host devices (`jax_num_cpu_devices=8`, set
before JAX starts) that share the machine's cores, so the step times show the
cost of partitioning, not a speed-up. For each device count n the mesh is
the first n devices and the global batch is the same, so medclr's step must
give the same loss and gradients on every n (BatchNorm statistics and
NT-Xent negatives are global). That is checked on the first step from the
same initial state, against 1 device.

Gradients are compared by the global L2 norm of their difference relative to
the 1-device gradient's norm. They cannot be expected to agree to float32
rounding: a pre-activation within rounding distance of 0 (2 of the 65,536 at
the deepest level of unet2d-32 at 32 px) can land on the other side of a
ReLU when BatchNorm's reduction order changes, which switches that element's
gradient path outright. So the run also measures the rounding floor: the
largest relative gradient change on 1 device when the input is perturbed at
float32 rounding level (x * (1 + 1e-7 N(0, 1))). A device count is `equal`
when its loss is within --loss_atol and its gradient difference is within
max(--grad_rtol, 2 x floor). The largest element difference is reported too.

The step is medclr's real one (`steps.make_pretrain_step`, Adam, donated
state, device augmentation `--preset`, default simclr_strong): augmentation
keys are per global example, so the views do not depend on the device count
either. The gradients are read from Adam's first moment after one step, which is
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
  parser.add_argument("--preset", default="simclr_strong",
                      help="device augmentation preset of the step")
  parser.add_argument("--steps", type=int, default=5, help="timed steps")
  parser.add_argument("--warmup", type=int, default=1,
                      help="untimed steps after the equality step")
  parser.add_argument("--loss_atol", type=float, default=1e-5,
                      help="|loss_n - loss_1| allowed")
  parser.add_argument("--grad_rtol", type=float, default=1e-4,
                      help="||g_n - g_1|| allowed, relative to ||g_1|| "
                           "(global L2 norms), when above the rounding floor")
  parser.add_argument("--floor_draws", type=int, default=3,
                      help="1-device reruns on rounding-perturbed inputs")
  parser.add_argument("--floor_noise", type=float, default=1e-7,
                      help="relative input perturbation of those reruns")
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


def grad_tolerance(args, floor):
  """Allowed relative L2 gradient difference: rtol, or twice the floor.

  Twice, because both the n-device and the 1-device gradient carry their
  own rounding.
  """
  return max(args.grad_rtol, 2.0 * floor)


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


def global_norm(tree):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return float(np.sqrt(sum(np.sum(np.square(x.astype(np.float64)))
                           for x in jax.tree.leaves(tree))))


def max_abs(tree):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return max(float(np.max(np.abs(x))) for x in jax.tree.leaves(tree))


def rounding_floor(model, step, reference_grads, draws, relative_noise,
                   seed=0):
  """How much 1-device gradients move when the input moves by rounding.

  Reruns the first step from the initial state on inputs multiplied by
  (1 + relative_noise * N(0, 1)), i.e. changed at float32 rounding level, and
  returns the largest relative L2 change of the gradient. Device counts only
  change the order of reductions, so a difference up to this size is
  rounding, not a partitioning error.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from medclr import sharding  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  clean = step.batch
  floor = 0.0
  for _ in range(draws):
    noisy = {k: np.asarray(v) * (1 + relative_noise * rng.standard_normal(
        v.shape)).astype(np.float32) for k, v in clean.items()}
    step.state = model.initial_state(step.mesh)
    step.batch = sharding.to_global(noisy, step.mesh)
    _, grads, _ = first_step(step)
    change = jax.tree.map(lambda a, b: a - b, grads, reference_grads)
    floor = max(floor, global_norm(change) / global_norm(reference_grads))
  step.batch = clean
  return floor


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
                                    preset=args.preset)
    loss, grads, stats = first_step(step)
    if reference is None:
      floor = rounding_floor(model, step, grads, args.floor_draws,
                             args.floor_noise)
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
    row["grad_rel_l2_diff"] = global_norm(
        jax.tree.map(lambda a, b: a - b, grads, ref_grads)) / global_norm(
            ref_grads)
    row["batch_stats_max_abs_diff"] = max_abs_diff(stats, ref_stats)
    row["equal"] = bool(
        row["loss_abs_diff"] <= args.loss_atol and
        row["grad_rel_l2_diff"] <= grad_tolerance(args, floor))
    rows.append(row)
    del step  # free the donated buffers before the next mesh

  base = rows[0]["step_s"]
  result = {
      "method": "simclr", "precision": args.precision, "batch": args.batch,
      "aug_preset": args.preset,
      "size": args.size, "widths": list(args.widths),
      "backend": jax.default_backend(),
      "device_counts": args.device_counts,
      "loss_atol": args.loss_atol, "grad_rtol": args.grad_rtol,
      "grad_rounding_floor_rel_l2": floor,
      "grad_tolerance_rel_l2": grad_tolerance(args, floor),
      "rows": rows,
      "all_equal": all(r["equal"] for r in rows),
      "max_loss_abs_diff": max(r["loss_abs_diff"] for r in rows),
      "max_grad_rel_diff": max(r["grad_max_rel_diff"] for r in rows),
      "max_grad_rel_l2_diff": max(r["grad_rel_l2_diff"] for r in rows),
      "step_time_ratio_vs_1": {str(r["devices"]): r["step_s"] / base
                               for r in rows},
      "peak_rss_mb": common.peak_rss_mb(),
  }
  return common.report(NAME, result, args.results)


if __name__ == "__main__":
  main(sys.argv[1:])
