"""One study cell: fine-tune, evaluate, and describe the run as a JSON row.

Every step runs as a subprocess exactly as a user would type it (so a cell
is reproducible from its recorded commands) and its output goes to the
study log. Commands are recorded with $WORK and $DATA placeholders, never
this machine's paths. Rows never include images (the data sets' terms
forbid redistribution).
"""
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time

from medclr.study import grid
from medclr.study import report

REPO = pathlib.Path(__file__).resolve().parents[2]
# Committed rows files and their reports.
RESULTS = REPO / "benchmarks" / "results"


class CommandFailed(RuntimeError):
  """A study command exited non-zero; `message` is its last error line."""

  def __init__(self, cmd, returncode, message):
    super().__init__(f"{' '.join(cmd[:3])} ... exited {returncode}: "
                     f"{message}")
    self.returncode = returncode
    self.message = message


class Preempted(CommandFailed):
  """A training command exited 0 but stopped short of its `num_steps`.

  That is how a run stopped by SIGTERM ends (docs/reliability.md): it saves
  its step, prints 'preempted (SIGTERM): ...' and exits 0 so that a
  scheduler sees a clean stop. The study must not take it for a finished
  run: no row is written, and the study stops.
  """

  def __init__(self, cmd, workdir, step, num_steps):
    message = (
        f"{workdir} stopped after step {step} of {num_steps} (preempted: "
        "the run got SIGTERM, saved its step and exited 0); no row was "
        "written. Run the same study command again: pretraining resumes "
        "from its checkpoint, an unfinished fine-tuning cell starts over")
    super().__init__(cmd, 0, message)
    self.step = step
    self.num_steps = num_steps


def trained_steps(workdir):
  """(newest complete checkpoint step or None, config num_steps) of a local
  training workdir, from its checkpoint listing and `config.json`."""
  # Imported here: the study process itself trains nothing, and Orbax and
  # Grain would double its start-up time.
  from medclr import checkpointing  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  num_steps = json.loads((workdir / "config.json").read_text())["num_steps"]
  return checkpointing.latest_complete_step(workdir), num_steps


def check_finished(cmd, workdir):
  """Raises Preempted when the training run in `workdir` (exit status 0)
  did not reach its num_steps."""
  step, num_steps = trained_steps(workdir)
  if step is None or step < num_steps:
    raise Preempted(cmd, workdir, step, num_steps)


def _last_error(log, start):
  """The last 'error: ...' line written to `log` after byte `start`."""
  with open(log, "rb") as f:
    f.seek(start)
    text = f.read().decode(errors="replace")
  errors = [line for line in text.splitlines() if line.startswith("error:")]
  return errors[-1][len("error:"):].strip() if errors else "see the log"


def run(cmd, log, trained=None):
  """Runs one command, streaming to the log; returns its wall time (s).

  Args:
    cmd: the command (argv list).
    log: the study log, appended to.
    trained: the workdir of a training command (launch.pretrain or
      launch.finetune): after exit status 0 its newest checkpoint must be at
      its num_steps.

  Raises:
    CommandFailed: the command exited non-zero (with its error line).
    Preempted: a training command exited 0 short of its last step (a
      SIGTERM reached it alone).
  """
  print("$", " ".join(cmd), flush=True)
  t0 = time.time()
  with open(log, "a") as f:
    f.write("$ " + " ".join(cmd) + "\n")
    f.flush()
    start = f.tell()
    result = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                            check=False)
  if result.returncode:
    raise CommandFailed(cmd, result.returncode, _last_error(log, start))
  if trained is not None:
    check_finished(cmd, trained)
  return round(time.time() - t0, 1)


def placeholders(cmd, work, data_dir):
  """A command as text with $WORK/$DATA instead of this machine's paths."""
  text = " ".join(cmd).replace(sys.executable, "python")
  return text.replace(str(data_dir), "$DATA").replace(str(work), "$WORK")


def git_revision():
  return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                        capture_output=True, text=True).stdout.strip()


def now():
  return datetime.datetime.now(datetime.timezone.utc).isoformat()


def eval_row(ft_dir, name=None):
  """Per-image summary and pooled metrics of one evaluation."""
  sub = "eval" if name is None else f"eval_{name}"
  result = json.load(open(os.path.join(ft_dir, sub, "metrics.json")))
  return {"summary": {m: result["summary"][m] for m in report.METRICS},
          "pooled": {m: result["pooled"][m] for m in report.METRICS},
          "num_test_images": result["num_images"]}


def finetune_command(profile, ft_dir, data_dir, dataset, k, seed,
                     pretrain_dir, overrides=()):
  """The `launch.finetune` command of one (k, seed) cell."""
  return [
      sys.executable, "-m", "launch.finetune",
      f"--config=configs/finetune_unet.py:{grid.profile_arg(profile)}",
      f"--workdir={ft_dir}", f"--config.data.data_dir={data_dir}",
      f"--config.data.dataset={dataset}", f"--config.data.num_labeled={k}",
      f"--config.data.label_seed={seed}", f"--config.seed={seed}",
      f"--config.init.pretrain_dir={pretrain_dir}", *overrides]


def finetune_and_evaluate(ft_cmd, ft_dir, log, cross=(), eval_flags=()):
  """Runs the fine-tuning, then evaluation in domain and on `cross` sets,
  each `launch.evaluate` with `eval_flags` (e.g. '--scales=1,1.25').

  Returns:
    (row fields: metrics, cross metrics, labelled names, recipe, seconds;
     the commands run after fine-tuning).
  """
  ft_s = run(ft_cmd, log, trained=ft_dir)
  eval_cmd = [sys.executable, "-m", "launch.evaluate", f"--workdir={ft_dir}",
              *eval_flags]
  eval_s = run(eval_cmd, log)
  commands = [eval_cmd]
  cross_rows = {}
  for name in cross:
    cmd = eval_cmd + [f"--dataset={name}"]
    run(cmd, log)
    commands.append(cmd)
    cross_rows[name] = eval_row(ft_dir, name)
  config = json.load(open(os.path.join(ft_dir, "config.json")))
  fields = {
      **eval_row(ft_dir), "cross": cross_rows,
      "labeled": json.load(open(os.path.join(ft_dir, "labeled.json")))[
          "stems"],
      "finetune_steps": config["num_steps"],
      "batch_size": config["batch_size"],
      "model_widths": config["model"]["widths"],
      "normalize": config["data"].get("normalize", "none"),
      "augment": config["augment"],
      "schedule": config["optim"]["schedule"],
      "finetune_seconds": ft_s, "eval_seconds": eval_s,
  }
  return fields, commands
