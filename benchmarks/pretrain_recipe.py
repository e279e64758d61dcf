r"""One pretraining recipe, measured: collapse diagnostics and the probe.

  python -m benchmarks.pretrain_recipe --work=/tmp/recipes --variant=adam \
      --config=configs/pretrain_dino.py:quick,multicrop=weak \
      --data_dir=$DATA --overrides="--config.optim.learning_rate=1e-3"

Runs `launch.pretrain` (online probe on DRIVE training patches) and appends
one row to benchmarks/results/pretrain_recipes.jsonl: the first and last
logged loss / chance, embedding std and teacher entropy ratios, the probe
curve, and the wall time. Used to choose the quick profiles' recipes
(docs/methods/*.md cite the rows).
"""
import argparse
import json
import pathlib
import sys

from medclr.study import cells
from medclr.study import runner

RESULTS = cells.REPO / "benchmarks" / "results" / "pretrain_recipes.jsonl"


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--work", required=True)
  parser.add_argument("--variant", required=True)
  parser.add_argument("--config", required=True,
                      help="config file and argument, as for launch.pretrain")
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--sources", default="drive:train,hrf:train")
  parser.add_argument("--probe", default="drive",
                      help="labelled set of the online probe")
  parser.add_argument("--overrides", default="",
                      help="extra --config.x=y flags, space separated")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  work = pathlib.Path(args.work).absolute()
  workdir = work / args.variant
  work.mkdir(parents=True, exist_ok=True)
  cmd = [sys.executable, "-m", "launch.pretrain", f"--config={args.config}",
         f"--workdir={workdir}", f"--config.data.data_dir={args.data_dir}",
         f"--config.data.sources={args.sources}",
         f"--config.probe.dataset={args.probe}", *args.overrides.split()]
  seconds = cells.run(cmd, work / "recipes.log")
  row = {"time": cells.now(), "git": cells.git_revision(),
         "variant": args.variant, "config": args.config,
         "sources": args.sources, "overrides": args.overrides,
         "seconds": seconds,
         "diagnostics": runner.pretrain_diagnostics(workdir),
         "command": cells.placeholders(cmd, work, args.data_dir)}
  with open(RESULTS, "a") as f:
    f.write(json.dumps(row) + "\n")
  diag = row["diagnostics"]
  print(json.dumps({"variant": args.variant, "first": diag["first"],
                    "last": diag["last"], "seconds": seconds}))


if __name__ == "__main__":
  main()
