r"""The few-label DRIVE study of docs/protocol.md section 1, as one command.

  python -m benchmarks.drive_study --shared_data=../shared/data \
      --work=/tmp/drive_study --arms=scratch,simclr_basic_medical --k=2 \
      --seeds=0,1,2 [--cross=stare]
  python -m benchmarks.drive_study --work=/tmp/ablation --results=ablation \
      --variant=no_norm --finetune_overrides="--config.data.normalize=none"

An arm is `scratch` (no pretraining), `<method>_<preset>` (e.g.
`mocov2_mocov2`: configs/pretrain_mocov2.py:<profile>,preset=mocov2) or a
named arm of NAMED_ARMS (`ccrop_mocov2`, `dino_weak`, `chaitanya_gd`, `pcl`,
...). For each pretraining arm it runs `launch.pretrain` once on the
unlabelled pool (DRIVE training images + HRF, never DRIVE test; the
volume-aware arms use their config's volume set), then for every (k, seed)
`launch.finetune` and `launch.evaluate` on the 20 DRIVE test images at full
resolution inside the FOV. Every command is run as a subprocess exactly as a
user would type it, and recorded with its wall time. One JSON row per
(arm, k, seed) is appended to benchmarks/results/drive_study.jsonl and a
Markdown table is written to benchmarks/results/drive_study.md: one line
per run (mean +/- std over test images, and the pooled metrics over all FOV
pixels of the split) and one line per (arm, variant, dataset, k) aggregated
over seeds, whose seed-to-seed std decides whether two arms differ.
`--variant` names a set of fine-tuning overrides (an ablation row);
`--dataset=stare` fine-tunes and tests on STARE instead of DRIVE; `--cross`
also evaluates every fine-tuned model on other labelled sets. Commands are
stored with $WORK and $DATA placeholders, never this machine's paths.
Results never include images (DRIVE's terms forbid redistribution).
"""
import argparse
import json
import os
import pathlib
import sys

from medclr.study import cells
from medclr.study import grid
from medclr.study import report

REPO = cells.REPO
RESULTS = REPO / "benchmarks" / "results"
METRICS = report.METRICS
run = cells.run
# Labelled sets the study can fine-tune or test on: prepare arguments.
LABELED_SETS = {"drive": ("--dataset=drive", "drive"),
                "stare": ("--dataset=folder --name=stare", "stare")}


NAMED_ARMS = grid.NAMED_ARMS


def arm_pretrain_config(arm):
  """Arm name -> (config stem, config args, extra flags); 'scratch' -> None."""
  return grid.arm_pretrain_config(arm)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--shared_data", default=str(REPO.parent / "shared" /
                                                  "data"))
  parser.add_argument("--work", required=True)
  parser.add_argument("--arms", default="scratch,simclr_basic_medical")
  parser.add_argument("--k", default="2")
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--profile", default="quick")
  parser.add_argument("--dataset", default="drive", choices=LABELED_SETS,
                      help="labelled set to fine-tune and test on")
  parser.add_argument("--cross", default="",
                      help="comma list of other labelled sets to evaluate "
                      "every fine-tuned model on")
  parser.add_argument("--variant", default="default",
                      help="name of this set of fine-tuning overrides")
  parser.add_argument("--results", default="drive_study",
                      help="rows go to benchmarks/results/<results>.jsonl")
  parser.add_argument("--pretrain_overrides", default="",
                      help="extra --config.x=y flags for launch.pretrain, "
                      "space separated")
  parser.add_argument("--finetune_overrides", default="")
  parser.add_argument("--resume", action="store_true",
                      help="continue fine-tuning workdirs that exist "
                      "(default: refuse them, since launch.finetune would "
                      "resume a run made with another config)")
  return parser.parse_args(argv)


def check_fresh(ft_dir, resume):
  """Raises SystemExit if `ft_dir` exists and `resume` is off."""
  if os.path.exists(ft_dir) and not resume:
    raise SystemExit(
        f"drive_study: {ft_dir} exists; launch.finetune would resume it even "
        "if it was made with another config. Remove it, choose another "
        "--work, or pass --resume to continue it.")


def prepare_data(args, data_dir, log):
  """Prepares DRIVE, HRF and every labelled set the study names."""
  py = sys.executable
  names = {args.dataset, *filter(None, args.cross.split(","))}
  shared = pathlib.Path(args.shared_data)
  commands = [("--dataset=hrf", shared / "hrf_unlabeled")]
  for name in sorted(names | {"drive"}):
    if name not in LABELED_SETS:
      raise SystemExit(f"unknown labelled set {name!r}; known: "
                       f"{sorted(LABELED_SETS)}")
    flags, folder = LABELED_SETS[name]
    commands.append((flags, shared / folder))
  for flags, path in commands:
    if not path.is_dir():
      raise SystemExit(f"{path} not found: pass --shared_data=DIR")
    run([py, "-m", "launch.prepare", *flags.split(), f"--manual_dir={path}",
         f"--data_dir={data_dir}"], log)


def run_one(args, arm, k, seed, pretrain, work, data_dir, log):
  """Fine-tunes, evaluates (in domain and across sets) and returns the row."""
  tag = "" if args.variant == "default" else f"_{args.variant}"
  ft_dir = str(work / f"finetune_{arm}{tag}_{args.dataset}_k{k}_s{seed}")
  ft_cmd = cells.finetune_command(
      args.profile, ft_dir, data_dir, args.dataset, k, seed, pretrain["dir"],
      args.finetune_overrides.split())
  check_fresh(ft_dir, args.resume)
  fields, eval_cmds = cells.finetune_and_evaluate(
      ft_cmd, ft_dir, log, cross=list(filter(None, args.cross.split(","))))
  commands = [c for c in (pretrain["cmd"], ft_cmd) if c] + eval_cmds
  return {
      "time": cells.now(), "git": cells.git_revision(),
      "profile": args.profile, "arm": arm, "variant": args.variant,
      "dataset": args.dataset, "k": k, "seed": seed, **fields,
      "pretrain_seconds": pretrain["seconds"],
      "commands": [cells.placeholders(c, work, data_dir) for c in commands],
  }


def pretrain_arm(args, arm, work, data_dir, log):
  """Runs the arm's pretraining (none for scratch): dir, command, seconds."""
  parsed = grid.parse_arm(arm)
  if not parsed.pretrained:
    return {"dir": "", "cmd": None, "seconds": 0.0}
  pretrain_dir = str(work / f"pretrain_{arm}")
  cmd = grid.pretrain_command(parsed, args.profile, pretrain_dir, data_dir,
                              "drive:train,hrf:train",
                              args.pretrain_overrides.split())
  return {"dir": pretrain_dir, "cmd": cmd, "seconds": run(cmd, log)}


def main():
  args = parse_args()
  work = pathlib.Path(args.work).absolute()
  data_dir = work / "data"
  log = work / "study.log"
  work.mkdir(parents=True, exist_ok=True)
  prepare_data(args, data_dir, log)
  RESULTS.mkdir(parents=True, exist_ok=True)
  jsonl = RESULTS / f"{args.results}.jsonl"
  for arm in args.arms.split(","):
    pretrain = pretrain_arm(args, arm, work, data_dir, log)
    for k in map(int, args.k.split(",")):
      for seed in map(int, args.seeds.split(",")):
        row = run_one(args, arm, k, seed, pretrain, work, data_dir, log)
        with open(jsonl, "a") as f:
          f.write(json.dumps(row) + "\n")
        print(json.dumps({"arm": arm, "variant": args.variant, "k": k,
                          "seed": seed,
                          "dice": row["summary"]["dice"]["mean"],
                          "pooled_auc": row["pooled"]["auc_roc"],
                          "seconds": row["finetune_seconds"]}), flush=True)
        write_table(jsonl, RESULTS / f"{args.results}.md")


def write_table(jsonl, md):
  report.write_table(jsonl, md)


if __name__ == "__main__":
  main()
