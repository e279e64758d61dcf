r"""The few-label DRIVE study of EVALUATION.md section 1, as one command.

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
import collections
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
METRICS = ("dice", "auc_roc", "sensitivity", "specificity", "accuracy", "iou")
HUMAN_DICE = 0.788  # 2nd vs 1st observer on the DRIVE test set (data README)
# Labelled sets the study can fine-tune or test on: prepare arguments.
LABELED_SETS = {"drive": ("--dataset=drive", "drive"),
                "stare": ("--dataset=folder --name=stare", "stare")}


def run(cmd, log):
  """Runs one command, streaming to the log; returns its wall time."""
  print("$", " ".join(cmd), flush=True)
  t0 = time.time()
  with open(log, "a") as f:
    f.write("$ " + " ".join(cmd) + "\n")
    f.flush()
    subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                   check=True)
  return round(time.time() - t0, 1)


# Arms that need more than `<method>_<preset>`: (config file stem, config
# args after the colon, extra --config flags).
NAMED_ARMS = {
    # ContrastiveCrop is a crop option; with MoCo v2, one of its papers' hosts.
    "ccrop_mocov2": ("mocov2", "preset=mocov2", ["--config.crop.mode=ccrop"]),
    "dino_default": ("dino", "crops=dino_default", []),
    "dino_weak": ("dino", "crops=weak", []),
    "dino_strong": ("dino", "crops=strong", []),
    "chaitanya_gd": ("chaitanya", "positives=gd", []),
    "chaitanya_gd-": ("chaitanya", "positives=gd-", []),
    "pcl": ("pcl", "threshold=0.1", []),
}
# Volume-aware methods need slices with volume ids: DRIVE and HRF are single
# 2D images, so these arms pretrain on their config's own volume set (the
# procedural synthetic volumes unless overridden) and fine-tune on DRIVE.
VOLUME_CONFIGS = ("chaitanya", "pcl")


def arm_spec(arm):
  """Arm name -> (config stem, config args, extra flags); 'scratch' -> None.

  'simclr_basic_medical' -> ('simclr', 'preset=basic_medical', []); named
  arms come from NAMED_ARMS.
  """
  if arm == "scratch":
    return None
  if arm in NAMED_ARMS:
    return NAMED_ARMS[arm]
  method, _, preset = arm.partition("_")
  return method, f"preset={preset}", []


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


def placeholders(cmd, work, data_dir):
  """A command as text with $WORK/$DATA instead of this machine's paths."""
  text = " ".join(cmd).replace(sys.executable, "python")
  return text.replace(str(data_dir), "$DATA").replace(str(work), "$WORK")


def eval_row(ft_dir, name):
  """Per-image summary and pooled metrics of one evaluation."""
  sub = "eval" if name is None else f"eval_{name}"
  result = json.load(open(os.path.join(ft_dir, sub, "metrics.json")))
  return {"summary": {m: result["summary"][m] for m in METRICS},
          "pooled": {m: result["pooled"][m] for m in METRICS},
          "num_test_images": result["num_images"]}


def run_one(args, arm, k, seed, pretrain, work, data_dir, log):
  """Fine-tunes, evaluates (in domain and across sets) and returns the row."""
  py = sys.executable
  tag = "" if args.variant == "default" else f"_{args.variant}"
  ft_dir = str(work / f"finetune_{arm}{tag}_{args.dataset}_k{k}_s{seed}")
  ft_cmd = [
      py, "-m", "launch.finetune",
      f"--config=configs/finetune_unet.py:{args.profile}",
      f"--workdir={ft_dir}", f"--config.data.data_dir={data_dir}",
      f"--config.data.dataset={args.dataset}", f"--config.data.num_labeled={k}",
      f"--config.data.label_seed={seed}", f"--config.seed={seed}",
      f"--config.init.pretrain_dir={pretrain['dir']}"
  ] + args.finetune_overrides.split()
  check_fresh(ft_dir, args.resume)
  ft_s = run(ft_cmd, log)
  commands = [c for c in (pretrain["cmd"], ft_cmd) if c]
  eval_cmd = [py, "-m", "launch.evaluate", f"--workdir={ft_dir}"]
  eval_s = run(eval_cmd, log)
  commands.append(eval_cmd)
  cross = {}
  for name in filter(None, args.cross.split(",")):
    cmd = eval_cmd + [f"--dataset={name}"]
    run(cmd, log)
    commands.append(cmd)
    cross[name] = eval_row(ft_dir, name)
  config = json.load(open(os.path.join(ft_dir, "config.json")))
  return {
      "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
      "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                            cwd=REPO, capture_output=True,
                            text=True).stdout.strip(),
      "profile": args.profile, "arm": arm, "variant": args.variant,
      "dataset": args.dataset, "k": k, "seed": seed,
      **eval_row(ft_dir, None), "cross": cross,
      "labeled": json.load(open(os.path.join(ft_dir, "labeled.json")))[
          "stems"],
      "finetune_steps": config["num_steps"],
      "batch_size": config["batch_size"],
      "model_widths": config["model"]["widths"],
      "normalize": config["data"].get("normalize", "none"),
      "augment": config["augment"],
      "schedule": config["optim"]["schedule"],
      "pretrain_seconds": pretrain["seconds"], "finetune_seconds": ft_s,
      "eval_seconds": eval_s,
      "commands": [placeholders(c, work, data_dir) for c in commands],
  }


def pretrain_arm(args, arm, work, data_dir, log):
  """Runs the arm's pretraining (none for scratch): dir, command, seconds."""
  spec = arm_spec(arm)
  if not spec:
    return {"dir": "", "cmd": None, "seconds": 0.0}
  stem, config_args, extra = spec
  pretrain_dir = str(work / f"pretrain_{arm}")
  sources = ([] if stem in VOLUME_CONFIGS else
             ["--config.data.sources=drive:train,hrf:train"])
  cmd = [
      sys.executable, "-m", "launch.pretrain",
      f"--config=configs/pretrain_{stem}.py:{args.profile},{config_args}",
      f"--workdir={pretrain_dir}", f"--config.data.data_dir={data_dir}",
  ] + sources + extra + args.pretrain_overrides.split()
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


def row_key(row):
  return (row["profile"], row["arm"], row.get("variant", "default"),
          row.get("dataset", "drive"), row["k"])


def latest_rows(jsonl):
  """The latest row per (profile, arm, variant, dataset, k, seed)."""
  rows = {}
  for line in open(jsonl):
    row = json.loads(line)
    rows[row_key(row) + (row["seed"],)] = row
  return rows


def _mean_std(values):
  n = len(values)
  mean = sum(values) / n
  return mean, (sum((v - mean) ** 2 for v in values) / n) ** 0.5


def seed_table(rows, where=None):
  """Lines aggregating runs over seeds: mean, seed std, image std, pooled.

  `where` None reads the in-domain test; a set name reads its cross rows.
  """
  groups = collections.defaultdict(list)
  for key, row in sorted(rows.items()):
    result = row if where is None else row.get("cross", {}).get(where)
    if result and "pooled" in result:
      groups[key[:-1]].append(result)
  lines = []
  for (profile, arm, variant, dataset, k), results in groups.items():
    dice = [r["summary"]["dice"]["mean"] for r in results]
    image_std = [r["summary"]["dice"]["std"] for r in results]
    auc = [r["summary"]["auc_roc"]["mean"] for r in results]
    p_dice = [r["pooled"]["dice"] for r in results]
    p_auc = [r["pooled"]["auc_roc"] for r in results]
    (dm, ds), (am, as_) = _mean_std(dice), _mean_std(auc)
    test = dataset if where is None else where
    # One seed has no seed-to-seed spread: say so rather than print 0.
    seed_std = f"{ds:.4f}" if len(results) > 1 else "--"
    auc_cell = f"{am:.4f} +/- {as_:.4f}" if len(results) > 1 else f"{am:.4f}"
    lines.append(
        f"| {profile} | {arm} | {variant} | {dataset} -> {test} | {k} | "
        f"{len(results)} | **{dm:.4f}** | {seed_std} | "
        f"{sum(image_std) / len(image_std):.4f} | {auc_cell} | "
        f"{_mean_std(p_dice)[0]:.4f} | {_mean_std(p_auc)[0]:.4f} |")
  return lines


def write_table(jsonl, md):
  """Markdown: runs aggregated over seeds, then one line per run."""
  rows = latest_rows(jsonl)
  crosses = sorted({name for row in rows.values()
                    for name in row.get("cross", {})})
  lines = [
      f"# {jsonl.stem}: few-label fundus segmentation (inside the FOV)", "",
      "Written by `python -m benchmarks.drive_study`. Human reference on "
      f"DRIVE: 2nd vs 1st observer Dice {HUMAN_DICE}. Data: DRIVE (Staal et "
      "al., IEEE TMI 2004), STARE (Hoover et al., IEEE TMI 2000), HRF (Budai "
      "et al. 2013). Commands: see the `.jsonl` rows.", "",
      "## Over seeds", "",
      "Dice: mean over seeds of the per-seed mean over test images; seed "
      "std: std of those per-seed means (decides whether arms differ); image "
      "std: mean over seeds of the std over test images; pooled: over all "
      "FOV pixels of the test split.", "",
      "| profile | arm | variant | train -> test | k | seeds | Dice | seed "
      "std | image std | AUC | pooled Dice | pooled AUC |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  lines += seed_table(rows)
  for name in crosses:
    lines += seed_table(rows, name)
  lines += [
      "", "## Runs", "",
      "| profile | arm | variant | set | k | seed | Dice | AUC-ROC | Sens | "
      "Spec | pooled Dice | pooled AUC | finetune s |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for key, row in sorted(rows.items()):
    profile, arm, variant, dataset, k, seed = key
    s = row["summary"]
    cell = lambda m: f"{s[m]['mean']:.4f} +/- {s[m]['std']:.4f}"
    pooled = row.get("pooled")
    pooled_cells = (f"{pooled['dice']:.4f} | {pooled['auc_roc']:.4f}"
                    if pooled else "-- | --")
    lines.append(
        f"| {profile} | {arm} | {variant} | {dataset} | {k} | {seed} | "
        f"{cell('dice')} | {cell('auc_roc')} | "
        f"{s['sensitivity']['mean']:.4f} | {s['specificity']['mean']:.4f} | "
        f"{pooled_cells} | {row['finetune_seconds']} |")
  md.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
