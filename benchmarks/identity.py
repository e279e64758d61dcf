r"""Do two checkouts train bit-identically? The smoke pipeline's numbers.

  python -m benchmarks.identity --work=/tmp/id_new
  python -m benchmarks.identity --work=/tmp/id_old --checkout=../old --git=OLD

Runs, in `--checkout` (default: this one), the phantom pipeline of the quick
start at smoke size: prepare the phantom, pretrain SimCLR, fine-tune the U-Net
from it, evaluate. Every logged number (pretraining and fine-tuning rows
without their wall-clock `time`, and the evaluation's metrics.json) is
hashed; one row per run goes to benchmarks/results/identity.jsonl. A change
meant to leave behaviour alone (a restructuring) must give the same hash as
the commit before it.
"""
import argparse
import hashlib
import json
import os
import pathlib
import subprocess
import sys

from benchmarks import common

def commands(work):
  """The pipeline's launcher commands."""
  data = f"--config.data.data_dir={work}/data"
  return [
      ["-m", "launch.prepare", "--dataset=phantom", f"--data_dir={work}/data"],
      ["-m", "launch.pretrain", "--config=configs/pretrain_simclr.py:smoke",
       f"--workdir={work}/pretrain", data],
      ["-m", "launch.finetune", "--config=configs/finetune_unet.py:smoke",
       f"--workdir={work}/finetune", data,
       f"--config.init.pretrain_dir={work}/pretrain"],
      ["-m", "launch.evaluate", f"--workdir={work}/finetune"],
  ]


def logged_numbers(work):
  """Every number the runs logged, without wall-clock times."""
  numbers = {}
  for phase in ("pretrain", "finetune"):
    rows = [json.loads(line) for line in
            (work / phase / "metrics.jsonl").read_text().splitlines()]
    numbers[phase] = [{k: v for k, v in row.items() if k != "time"}
                      for row in rows]
  metrics = json.loads(
      (work / "finetune" / "eval" / "metrics.json").read_text())
  numbers["evaluate"] = {key: metrics[key]
                         for key in ("summary", "per_image", "pooled")}
  return numbers


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--work", required=True)
  parser.add_argument("--checkout", default=str(common.REPO))
  parser.add_argument("--git", default="")
  args = parser.parse_args(argv)
  work = pathlib.Path(args.work).resolve()
  if work.exists():
    sys.exit(f"error: --work={work} exists; give a new folder")
  checkout = pathlib.Path(args.checkout).resolve()
  env = dict(os.environ, PYTHONPATH=str(checkout))
  for command in commands(work):
    subprocess.run([sys.executable, *command], cwd=checkout, env=env,
                   check=True, stdout=subprocess.DEVNULL)
  numbers = logged_numbers(work)
  digest = hashlib.sha256(
      json.dumps(numbers, sort_keys=True).encode()).hexdigest()
  row = {"git": args.git or common.git_commit(), "sha256": digest,
         "evaluate": numbers["evaluate"]["summary"],
         "finetune_last": numbers["finetune"][-1],
         "pretrain_last": numbers["pretrain"][-1]}
  with open(common.default_results_path("identity"), "a",
            encoding="utf-8") as f:
    f.write(json.dumps(row, sort_keys=True) + "\n")
  print(digest)


if __name__ == "__main__":
  main()
