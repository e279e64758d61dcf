r"""Re-evaluates finished study runs with other evaluation flags (no training).

  python -m benchmarks.reevaluate --work=/tmp/recipe --git=54013ec \
      --variant=scales_1_1.25 --eval_flags="--scales=1,1.25" --k=1,2

For every row of benchmarks/results/<source>.jsonl made at revision --git
(arm --arm, variant --from_variant, k in --k) whose workdir exists under
--work (the --workdir of the `launch.study` run, or the --work of a
benchmarks.drive_study run before it), runs `launch.evaluate` on the same
checkpoint with --eval_flags (in domain and on every set the row was
cross-evaluated on), and appends a row that keeps the original's training
fields, replaces its metrics and names --variant, to
benchmarks/results/<results>.jsonl. An evaluation-only change
(test-time augmentation, scales) is then measured on the very weights the
original row scored, so the comparison is paired and costs no training.
New cells with other evaluation flags are a study variant instead:
`launch.study --config.variant=NAME --config.eval_overrides=FLAGS`.
"""
import argparse
import json
import pathlib
import sys

from medclr.study import cells
from medclr.study import report


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--work", required=True,
                      help="the --workdir of the original study")
  parser.add_argument("--git", required=True,
                      help="revision whose rows are re-evaluated")
  parser.add_argument("--variant", required=True, help="new rows' variant")
  parser.add_argument("--eval_flags", required=True,
                      help="extra launch.evaluate flags, space separated")
  parser.add_argument("--arm", default="scratch")
  parser.add_argument("--from_variant", default="default")
  parser.add_argument("--k", default="1,2,20")
  parser.add_argument("--source", default="drive_study")
  parser.add_argument("--results", default="ablation")
  return parser.parse_args(argv)


def workdir_of(row, work):
  """The fine-tuning workdir of `row` under `work` ($WORK in its command)."""
  command = next(c for c in row["commands"] if "launch.finetune" in c)
  flag = next(p for p in command.split() if p.startswith("--workdir="))
  return pathlib.Path(flag.split("=", 1)[1].replace("$WORK", str(work)))


def reevaluate(row, ft_dir, args, log):
  """The new row for `row`, evaluated with `args.eval_flags`."""
  tag = args.variant
  base = [sys.executable, "-m", "launch.evaluate", f"--workdir={ft_dir}",
          *args.eval_flags.split()]
  in_domain = base + [f"--out_dir={ft_dir / f'eval_{tag}'}"]
  seconds = cells.run(in_domain, log)
  commands = [in_domain]
  cross = {}
  for name in row.get("cross") or {}:
    cmd = base + [f"--dataset={name}",
                  f"--out_dir={ft_dir / f'eval_{name}_{tag}'}"]
    cells.run(cmd, log)
    commands.append(cmd)
    cross[name] = cells.eval_row(str(ft_dir), f"{name}_{tag}")
  placeholder = lambda c: cells.placeholders(c, ft_dir.parent, "$DATA")
  return {**row, **cells.eval_row(str(ft_dir), tag), "cross": cross,
          "variant": tag, "time": cells.now(), "git": cells.git_revision(),
          "eval_seconds": seconds, "reevaluated": {
              "git": row["git"], "time": row["time"]},
          "commands": [c for c in row["commands"] if "launch.evaluate" not in
                       c] + [placeholder(c) for c in commands]}


def main():
  args = parse_args()
  work = pathlib.Path(args.work).absolute()
  source = cells.RESULTS / f"{args.source}.jsonl"
  out = cells.RESULTS / f"{args.results}.jsonl"
  ks = {int(k) for k in args.k.split(",")}
  rows = [json.loads(line) for line in open(source)]
  for row in rows:
    if (row.get("git") != args.git or row.get("arm") != args.arm or
        row.get("variant", "default") != args.from_variant or
        row.get("k") not in ks):
      continue
    ft_dir = workdir_of(row, work)
    if not (ft_dir / "checkpoints").is_dir():
      print(f"skipped (no checkpoints): {ft_dir}", flush=True)
      continue
    new = reevaluate(row, ft_dir, args, work / "reevaluate.log")
    with open(out, "a") as f:
      f.write(json.dumps(new) + "\n")
    print(json.dumps({"k": new["k"], "seed": new["seed"],
                      "was": row["summary"]["dice"]["mean"],
                      "dice": new["summary"]["dice"]["mean"]}), flush=True)
  report.write_table(out, out.with_suffix(".md"))


if __name__ == "__main__":
  main()
