"""Runs a study grid: prepare data, pretrain each arm once, run every cell.

Resumable: a cell whose row is already in the rows file is never recomputed,
so a study may run in parts, on several machines, from the committed rows
alone. A cell that was interrupted leaves no row; its workdir is removed and
the cell starts again (`config.existing_cells` may instead refuse such a
workdir, or resume it). A training child that exits 0 short of its last step
(a SIGTERM reached it alone: docs/reliability.md) stops the study with
`cells.Preempted` and writes no row; the next run resumes. Pretraining runs
with the collapse guard in `stop` mode: an arm that stalls at chance or
collapses is recorded as stopped (with the guard's report) and its cells are
skipped, not fine-tuned.
"""
import json
import os
import pathlib
import shutil
import time

from medclr.study import cells as cells_lib
from medclr.study import grid
from medclr.study import report
from medclr.study import sets

# launch.cli.EXIT_STALLED: the guard stopped the run (not a failure).
EXIT_STALLED = 3
DIAGNOSTICS = ("loss", "loss_chance", "loss_over_chance", "embedding_std_rel",
               "teacher_entropy_rel", "probe_accuracy")


def pretrain_diagnostics(pretrain_dir):
  """First and last logged value (and step) of each collapse diagnostic."""
  path = pathlib.Path(pretrain_dir) / "metrics.jsonl"
  rows = [r for r in report.read_rows(path) if r.get("name") == "pretrain"]
  first, last = {}, {}
  for row in rows:
    for key in DIAGNOSTICS:
      if row.get(key) is not None:
        first.setdefault(key, row[key])
        last[key] = row[key]
  steps = [row["step"] for row in rows]
  curve = [[row["step"], row["probe_accuracy"]] for row in rows
           if row.get("probe_accuracy") is not None]
  return {"first": first, "last": last,
          "steps": [min(steps), max(steps)] if steps else [],
          "probe_curve": curve}


def safe_name(arm_name):
  """A directory name for an arm: '*' -> '-x', '@' -> '-on-'."""
  return arm_name.replace("*", "-x").replace("@", "-on-")


# The values of a study config's choice keys (configs/study_drive.py).
CHOICES = {"report": ("study", "table"),
           "existing_cells": ("restart", "refuse", "continue")}


def check_config(config):
  """Raises ValueError for a study config no run could finish."""
  for key, choices in CHOICES.items():
    if config[key] not in choices:
      raise ValueError(f"config.{key}={config[key]!r}: expected one of "
                       f"{', '.join(choices)}")
  sets.check_labeled(config)
  if config.default_pool and config.default_pool not in config.pools:
    raise ValueError(f"config.default_pool={config.default_pool!r} is not "
                     f"in config.pools ({sorted(config.pools)})")


def results_path(config, results=None):
  """The rows file: `results` if given, else benchmarks/results/
  <config.results_name>.jsonl, else study_<profile>.jsonl."""
  name = config.results_name or f"study_{config.profile}"
  return pathlib.Path(results or cells_lib.RESULTS / f"{name}.jsonl")


def ready_cell_dir(ft_dir, existing, rows_name):
  """Readies the fine-tuning workdir of a cell that has no row yet.

  `existing` (config.existing_cells) says what to do if it exists:
  'restart' removes it (what an interrupted cell of this study left),
  'continue' keeps it for launch.finetune to resume, 'refuse' stops the
  study, since the workdir may hold another study's run, which
  launch.finetune would resume under this cell's config.
  """
  if not ft_dir.exists() or existing == "continue":
    return
  if existing == "refuse":
    raise FileExistsError(
        f"{ft_dir} exists but {rows_name} has no row for it; launch.finetune "
        "would resume it even if it was made with another config. Remove "
        "it, choose another --workdir, or pass --config.existing_cells="
        "restart (start it again) or continue (resume it)")
  shutil.rmtree(ft_dir)


class Study:
  """One study: its config, paths, rows file and progress."""

  def __init__(self, config, workdir, shared_data, results):
    self.config = config
    self.work = pathlib.Path(workdir).absolute()
    self.data_dir = self.work / "data"
    self.log = self.work / "study.log"
    self.shared = pathlib.Path(shared_data).absolute()
    self.jsonl = pathlib.Path(results)
    check_config(config)
    self.arms = grid.parse_arms(config.arms, config.pools)
    self.ks = [int(k) for k in config.k.split(",")]
    self.seeds = [int(s) for s in config.seeds.split(",")]
    self.all_seeds_k = self.ks if config.all_seeds_k == "all" else [
        int(k) for k in config.all_seeds_k.split(",") if k]
    self.cell_seconds = []

  # -- rows ------------------------------------------------------------------

  def rows(self):
    return report.read_rows(self.jsonl)

  def done(self):
    """(arm, k, seed) of the cells with a row for this study's profile,
    variant and dataset (rows of benchmarks.drive_study count too)."""
    return {(arm, k, seed) for profile, arm, variant, dataset, k, seed
            in report.latest_cells(self.rows())
            if (profile, variant, dataset) == (
                self.config.profile, self.config.variant,
                self.config.dataset)}

  def pool(self, arm):
    """The pool `arm` pretrains on: its own, else config.default_pool."""
    return arm.pool or self.config.default_pool or None

  def append(self, row):
    self.jsonl.parent.mkdir(parents=True, exist_ok=True)
    with open(self.jsonl, "a") as f:
      f.write(json.dumps(row) + "\n")
    write_report(self.config, self.jsonl)

  # -- pretraining -----------------------------------------------------------

  def pretrain(self, arm):
    """Pretrains `arm` (resuming its workdir); returns its pretraining row."""
    pretrain_dir = self.work / f"pretrain_{safe_name(arm.name)}"
    pool = self.pool(arm)
    sources = self.config.pools[pool] if pool else ""
    overrides = ["--config.guard.mode=stop",
                 f"--config.probe.dataset={self.config.dataset}",
                 *self.config.pretrain_overrides.split()]
    if arm.stage_one is not None:
      first = self.pretrain(arm.stage_one)
      if first["status"] == "stopped":
        row = {"kind": "pretrain", "time": cells_lib.now(),
               "profile": self.config.profile, "arm": arm.name,
               "pool": pool, "status": "stopped", "seconds": None,
               "message": f"its first stage {first['arm']} was stopped: "
                          f"{first['message']}", "diagnostics": {}}
        self.append(row)
        return row
      overrides.append(f"--config.init.pretrain_dir={first['dir']}")
    cmd = grid.pretrain_command(arm, self.config.profile, str(pretrain_dir),
                                self.data_dir, sources, overrides)
    row = {"kind": "pretrain", "time": cells_lib.now(),
           "git": cells_lib.git_revision(), "profile": self.config.profile,
           "arm": arm.name, "pool": pool,
           "sources": sources, "dir": str(pretrain_dir),
           "command": cells_lib.placeholders(cmd, self.work, self.data_dir)}
    try:
      row.update(status="done", seconds=cells_lib.run(
          cmd, self.log, trained=pretrain_dir))
    except cells_lib.CommandFailed as e:
      if e.returncode != EXIT_STALLED:  # a Preempted run (0) stops the study
        raise
      row.update(status="stopped", message=e.message, seconds=None)
    row["diagnostics"] = pretrain_diagnostics(pretrain_dir)
    saved = dict(row)
    saved.pop("dir")  # a path of this machine
    self.append(saved)
    return row

  # -- cells -----------------------------------------------------------------

  def cell_dir(self, arm, k, seed):
    """finetune_<arm>[_<variant>]_<dataset>_k<k>_s<seed>: variants and
    labelled sets may share a --workdir without sharing a cell's."""
    tag = "" if self.config.variant == "default" else (
        f"_{self.config.variant}")
    return self.work / (f"finetune_{safe_name(arm.name)}{tag}_"
                        f"{self.config.dataset}_k{k}_s{seed}")

  def run_cell(self, arm, k, seed, pretrain):
    """Fine-tunes and evaluates one cell; appends its row."""
    ft_dir = self.cell_dir(arm, k, seed)
    ready_cell_dir(ft_dir, self.config.existing_cells, self.jsonl.name)
    ft_cmd = cells_lib.finetune_command(
        self.config.profile, str(ft_dir), self.data_dir, self.config.dataset,
        k, seed, pretrain["dir"] if pretrain else "",
        self.config.finetune_overrides.split() + arm.finetune_flags)
    fields, eval_cmds = cells_lib.finetune_and_evaluate(
        ft_cmd, str(ft_dir), self.log, cross=sets.cross_sets(self.config),
        eval_flags=self.config.eval_overrides.split())
    commands = ([pretrain["command"]] if pretrain else []) + [
        cells_lib.placeholders(c, self.work, self.data_dir)
        for c in [ft_cmd, *eval_cmds]]
    self.append({
        "kind": "cell", "time": cells_lib.now(),
        "git": cells_lib.git_revision(), "profile": self.config.profile,
        "arm": arm.name, "base": arm.base, "strength": arm.strength,
        "pool": self.pool(arm) if arm.pretrained else None,
        "variant": self.config.variant,
        "dataset": self.config.dataset, "k": k, "seed": seed, **fields,
        "pretrain_seconds": pretrain["seconds"] if pretrain else 0.0,
        "commands": commands})
    print(f"[study] {arm.name} {self.config.variant} k={k} seed={seed}: "
          f"Dice {fields['summary']['dice']['mean']:.4f}, pooled AUC "
          f"{fields['pooled']['auc_roc']:.4f}; fine-tuning "
          f"{fields['finetune_seconds']} s, evaluation "
          f"{fields['eval_seconds']} s", flush=True)
    return fields

  def progress(self, done_before):
    """One line: cells done / total, this run's pace, ETA."""
    planned = set(grid.cells(self.resolved_arms(), self.ks, self.seeds,
                             self.all_seeds_k))
    done, total = len(self.done() & planned), len(planned)
    line = f"[study] {done}/{total} cells done"
    if self.cell_seconds:
      pace = sum(self.cell_seconds) / len(self.cell_seconds)
      eta = int(pace * (total - done))
      line += (f" ({done - done_before} this run, {pace:.0f} s a cell with "
               f"pretraining) | ETA {eta // 3600}:{eta % 3600 // 60:02d}:"
               f"{eta % 60:02d}")
    print(line, flush=True)
    return done

  # -- the whole grid ----------------------------------------------------------

  def mean_k2_dice(self):
    """{arm: mean Dice at k=2} over this profile's finished cells."""
    groups = {}
    for (profile, arm, variant, dataset, k), results in report.seed_groups(
        report.latest_cells(self.rows())).items():
      if (profile, variant, dataset, k) == (
          self.config.profile, self.config.variant, self.config.dataset, 2):
        groups[arm] = sum(r["summary"]["dice"]["mean"]
                          for r in results) / len(results)
    return groups

  def resolved_arms(self):
    """Arms in run order, `best@pool` last.

    `best@pool` is resolved once every other arm has all its cells (or was
    stopped by the guard) and at least one pretrained arm has k=2 rows;
    until then it stays as written.
    """
    fixed = [a for a in self.arms if a.base != grid.BEST]
    stopped = {name for name, row in report.latest_pretrain(
        self.rows()).items() if row.get("status") == "stopped"}
    done = self.done()
    complete = all(arm.name in stopped or all(
        c in done for c in grid.cells([arm], self.ks, self.seeds,
                                      self.all_seeds_k)) for arm in fixed)
    finished = {name: dice for name, dice in self.mean_k2_dice().items()
                if name in {a.name for a in fixed if a.pretrained}}
    return fixed + [
        grid.resolve_best(arm, finished) if complete and finished else arm
        for arm in self.arms if arm.base == grid.BEST]

  def run(self):
    self.work.mkdir(parents=True, exist_ok=True)
    sets.prepare_data(self.config, self.shared, self.data_dir, self.log)
    stopped = {name for name, row in report.latest_pretrain(
        self.rows()).items() if row.get("status") == "stopped"
               and row["profile"] == self.config.profile}
    done_before = self.progress(0)
    for position in range(len(self.arms)):
      # Resolved here: `best@pool` depends on the arms finished before it.
      arm = self.resolved_arms()[position]
      pending = [c for c in grid.cells([arm], self.ks, self.seeds,
                                       self.all_seeds_k)
                 if c not in self.done()]
      if not pending:
        continue
      if arm.base == grid.BEST:
        print(f"[study] {arm.name}: no finished pretrained arm to choose "
              "from; skipped", flush=True)
        continue
      if arm.name in stopped:
        print(f"[study] {arm.name}: pretraining was stopped by the guard; "
              f"skipping its {len(pending)} cells", flush=True)
        continue
      started = time.time()
      pretrain = self.pretrain(arm) if arm.pretrained else None
      if pretrain and pretrain["status"] == "stopped":
        print(f"[study] {arm.name}: stopped: {pretrain['message']}",
              flush=True)
        continue
      for _, k, seed in pending:
        self.run_cell(arm, k, seed, pretrain)
        # Pretraining time is spread over the arm's cells for the ETA.
        self.cell_seconds.append(time.time() - started)
        started = time.time()
        self.progress(done_before)


def write_report(config, jsonl):
  """The study's Markdown report and plots, from its rows (and baselines);
  or, with config.report 'table', the rows table of the recipe's results
  (over seeds in domain and across sets, then runs; no plots)."""
  jsonl = pathlib.Path(jsonl)
  if config.report == "table":
    report.write_table(jsonl, jsonl.with_suffix(".md"))
  else:
    report.write_study_report(jsonl, jsonl.with_suffix(".md"),
                              config.get("baselines", ""))


def run_study(config, workdir, shared_data, results):
  """Runs (or resumes) the study; rows go to `results` (a .jsonl path)."""
  Study(config, workdir, shared_data, results).run()
  os.sync()
