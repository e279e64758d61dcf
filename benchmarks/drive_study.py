r"""The few-label DRIVE study of EVALUATION.md section 1, as one command.

  python -m benchmarks.drive_study --shared_data=../shared/data \
      --work=/tmp/drive_study --arms=scratch,simclr_basic_medical --k=2 --seeds=0

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
Markdown table of mean +/- std is written to benchmarks/results/drive_study.md.
Results never include images (DRIVE's terms forbid redistribution).
"""
import argparse
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--shared_data", default=str(REPO.parent / "shared" /
                                                  "data"))
  parser.add_argument("--work", required=True)
  parser.add_argument("--arms", default="scratch,simclr_basic_medical")
  parser.add_argument("--k", default="2")
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--profile", default="quick")
  parser.add_argument("--pretrain_overrides", default="",
                      help="extra --config.x=y flags for launch.pretrain, "
                      "space separated")
  parser.add_argument("--finetune_overrides", default="")
  args = parser.parse_args()

  work = pathlib.Path(args.work).absolute()
  data_dir = work / "data"
  log = work / "study.log"
  work.mkdir(parents=True, exist_ok=True)
  py = sys.executable
  drive = pathlib.Path(args.shared_data) / "drive"
  hrf = pathlib.Path(args.shared_data) / "hrf_unlabeled"
  for name, path in (("drive", drive), ("hrf", hrf)):
    run([py, "-m", "launch.prepare", f"--dataset={name}",
         f"--manual_dir={path}", f"--data_dir={data_dir}"], log)

  RESULTS.mkdir(parents=True, exist_ok=True)
  for arm in args.arms.split(","):
    pretrain_dir, pretrain_cmd, pretrain_s = "", None, 0.0
    spec = arm_spec(arm)
    if spec:
      stem, config_args, extra = spec
      pretrain_dir = str(work / f"pretrain_{arm}")
      sources = ([] if stem in VOLUME_CONFIGS else
                 ["--config.data.sources=drive:train,hrf:train"])
      pretrain_cmd = [
          py, "-m", "launch.pretrain",
          f"--config=configs/pretrain_{stem}.py:{args.profile},{config_args}",
          f"--workdir={pretrain_dir}", f"--config.data.data_dir={data_dir}",
      ] + sources + extra + args.pretrain_overrides.split()
      pretrain_s = run(pretrain_cmd, log)
    for k in map(int, args.k.split(",")):
      for seed in map(int, args.seeds.split(",")):
        ft_dir = str(work / f"finetune_{arm}_k{k}_s{seed}")
        ft_cmd = [
            py, "-m", "launch.finetune",
            f"--config=configs/finetune_unet.py:{args.profile}",
            f"--workdir={ft_dir}", f"--config.data.data_dir={data_dir}",
            "--config.data.dataset=drive", f"--config.data.num_labeled={k}",
            f"--config.data.label_seed={seed}", f"--config.seed={seed}",
            f"--config.init.pretrain_dir={pretrain_dir}"
        ] + args.finetune_overrides.split()
        ft_s = run(ft_cmd, log)
        eval_cmd = [py, "-m", "launch.evaluate", f"--workdir={ft_dir}"]
        eval_s = run(eval_cmd, log)
        result = json.load(open(os.path.join(ft_dir, "eval", "metrics.json")))
        config = json.load(open(os.path.join(ft_dir, "config.json")))
        row = {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                  cwd=REPO, capture_output=True,
                                  text=True).stdout.strip(),
            "profile": args.profile, "arm": arm, "k": k, "seed": seed,
            "summary": {m: result["summary"][m] for m in METRICS},
            "num_test_images": result["num_images"],
            "labeled": json.load(open(os.path.join(ft_dir, "labeled.json")))[
                "stems"],
            "finetune_steps": config["num_steps"],
            "model_widths": config["model"]["widths"],
            "pretrain_seconds": pretrain_s, "finetune_seconds": ft_s,
            "eval_seconds": eval_s,
            "commands": [c for c in (pretrain_cmd, ft_cmd, eval_cmd) if c],
        }
        with open(RESULTS / "drive_study.jsonl", "a") as f:
          f.write(json.dumps(row) + "\n")
        print(json.dumps({"arm": arm, "k": k, "seed": seed,
                          "dice": row["summary"]["dice"]["mean"],
                          "auc": row["summary"]["auc_roc"]["mean"]}),
              flush=True)
  write_table(RESULTS / "drive_study.jsonl", RESULTS / "drive_study.md")


def write_table(jsonl, md):
  """Markdown table of the latest row per (profile, arm, k, seed)."""
  rows = {}
  for line in open(jsonl):
    row = json.loads(line)
    rows[(row["profile"], row["arm"], row["k"], row["seed"])] = row
  lines = [
      "# DRIVE few-label study (test set, 20 images, inside FOV)", "",
      "Written by `python -m benchmarks.drive_study`; one row per run "
      "(mean +/- std over the 20 test images). Human reference: 2nd vs 1st "
      f"observer Dice {HUMAN_DICE}. Data: DRIVE (Staal et al., IEEE TMI 2004), "
      "HRF (Budai et al. 2013).", "",
      "| profile | arm | k | seed | Dice | AUC-ROC | Sens | Spec | Acc | "
      "pretrain s | finetune s |",
      "|---|---|---|---|---|---|---|---|---|---|---|"]
  for (profile, arm, k, seed), row in sorted(rows.items()):
    s = row["summary"]
    cell = lambda m: f"{s[m]['mean']:.4f} +/- {s[m]['std']:.4f}"
    lines.append(
        f"| {profile} | {arm} | {k} | {seed} | {cell('dice')} | "
        f"{cell('auc_roc')} | {s['sensitivity']['mean']:.4f} | "
        f"{s['specificity']['mean']:.4f} | {s['accuracy']['mean']:.4f} | "
        f"{row['pretrain_seconds']} | {row['finetune_seconds']} |")
  md.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
