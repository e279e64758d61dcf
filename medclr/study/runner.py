"""Runs a study grid: prepare data, pretrain each arm once, run every cell.

Resumable: a cell whose row is already in the rows file is never recomputed,
so a study may run in parts, on several machines, from the committed rows
alone. A cell that was interrupted leaves no row; its workdir is removed and
the cell starts again. A training child that exits 0 short of its last step
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

# Sets a study may use: `launch.prepare` flags and their folder in the shared
# data directory (None: generated, needs no files).
KNOWN_SETS = {
    "drive": ("--dataset=drive", "drive"),
    "stare": ("--dataset=folder --name=stare", "stare"),
    "hrf": ("--dataset=hrf", "hrf_unlabeled"),
    "fundus_pool": ("--dataset=unlabeled --name=fundus_pool", "fundus_pool"),
    # STARE's training images at DRIVE's scale (long side 584, FOV about
    # 540 px) for the pretraining pool; its test images never enter a pool.
    "stare584": ("--dataset=folder --name=stare584 --long_side=584", "stare"),
    "phantom": ("--dataset=phantom", None),
    # ISBI 2012 EM: 20 labelled sections to fine-tune on, the last 10 to
    # test on (the challenge's test labels are not public).
    "isbi_em": ("--dataset=isbi2012 --name=isbi_em --test_slices=10",
                "isbi2012_em"),
}
# Volume sets a pool may hold: the grid also reads them (`trains_on_pool`).
VOLUME_SETS = grid.VOLUME_SETS
# launch.runner.EXIT_STALLED: the guard stopped the run (not a failure).
EXIT_STALLED = 3
DIAGNOSTICS = ("loss", "loss_chance", "loss_over_chance", "embedding_std_rel",
               "teacher_entropy_rel", "probe_accuracy")


def pool_sets(sources):
  """'fundus_pool:train,drive:train' -> {'fundus_pool', 'drive'}."""
  return {s.split(":")[0].strip() for s in sources.split(",") if s.strip()}


def prepare_data(config, shared, data_dir, log):
  """Prepares every set the study's pools, dataset and cross sets name."""
  names = {config.dataset, *filter(None, config.cross.split(","))}
  for sources in config.pools.values():
    names |= pool_sets(sources)
  for name in sorted(names):
    if name in VOLUME_SETS:
      module, (flags, folder) = "launch.prepare_volumes", VOLUME_SETS[name]
    elif name in KNOWN_SETS:
      module, (flags, folder) = "launch.prepare", KNOWN_SETS[name]
    else:
      raise ValueError(f"study set {name!r} is unknown; known: "
                       f"{sorted({**KNOWN_SETS, **VOLUME_SETS})}")
    cmd = [cells_lib.sys.executable, "-m", module, *flags.split(),
           f"--data_dir={data_dir}"]
    if folder:
      if not (shared / folder).is_dir():
        raise FileNotFoundError(
            f"{shared / folder} not found: pass --shared_data=DIR (the folder "
            "holding drive/, stare/, hrf_unlabeled/, fundus_pool/, "
            "isbi2012_em/)")
      cmd.append(f"--manual_dir={shared / folder}")
    cells_lib.run(cmd, log)


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


class Study:
  """One study: its config, paths, rows file and progress."""

  def __init__(self, config, workdir, shared_data, results):
    self.config = config
    self.work = pathlib.Path(workdir).absolute()
    self.data_dir = self.work / "data"
    self.log = self.work / "study.log"
    self.shared = pathlib.Path(shared_data).absolute()
    self.jsonl = pathlib.Path(results)
    self.arms = grid.parse_arms(config.arms, config.pools)
    self.ks = [int(k) for k in config.k.split(",")]
    self.seeds = [int(s) for s in config.seeds.split(",")]
    self.all_seeds_k = [int(k) for k in config.all_seeds_k.split(",") if k]
    self.cell_seconds = []

  # -- rows ------------------------------------------------------------------

  def rows(self):
    return report.read_rows(self.jsonl)

  def done(self):
    """(arm, k, seed) of the cells with a row for this study's profile."""
    return {(r["arm"], r["k"], r["seed"])
            for r in report.latest_cells(self.rows()).values()
            if r["profile"] == self.config.profile
            and r.get("dataset") == self.config.dataset}

  def append(self, row):
    self.jsonl.parent.mkdir(parents=True, exist_ok=True)
    with open(self.jsonl, "a") as f:
      f.write(json.dumps(row) + "\n")
    write_report(self.config, self.jsonl)

  # -- pretraining -----------------------------------------------------------

  def pretrain(self, arm):
    """Pretrains `arm` (resuming its workdir); returns its pretraining row."""
    pretrain_dir = self.work / f"pretrain_{safe_name(arm.name)}"
    sources = self.config.pools[arm.pool] if arm.pool else ""
    overrides = ["--config.guard.mode=stop",
                 f"--config.probe.dataset={self.config.dataset}",
                 *self.config.pretrain_overrides.split()]
    if arm.stage_one is not None:
      first = self.pretrain(arm.stage_one)
      if first["status"] == "stopped":
        row = {"kind": "pretrain", "time": cells_lib.now(),
               "profile": self.config.profile, "arm": arm.name,
               "pool": arm.pool, "status": "stopped", "seconds": None,
               "message": f"its first stage {first['arm']} was stopped: "
                          f"{first['message']}", "diagnostics": {}}
        self.append(row)
        return row
      overrides.append(f"--config.init.pretrain_dir={first['dir']}")
    cmd = grid.pretrain_command(arm, self.config.profile, str(pretrain_dir),
                                self.data_dir, sources, overrides)
    row = {"kind": "pretrain", "time": cells_lib.now(),
           "git": cells_lib.git_revision(), "profile": self.config.profile,
           "arm": arm.name, "pool": arm.pool,
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

  def run_cell(self, arm, k, seed, pretrain):
    """Fine-tunes and evaluates one cell from a clean workdir; appends it."""
    ft_dir = self.work / f"finetune_{safe_name(arm.name)}_k{k}_s{seed}"
    if ft_dir.exists():  # an interrupted cell: start it again
      shutil.rmtree(ft_dir)
    ft_cmd = cells_lib.finetune_command(
        self.config.profile, str(ft_dir), self.data_dir, self.config.dataset,
        k, seed, pretrain["dir"] if pretrain else "",
        self.config.finetune_overrides.split() + arm.finetune_flags)
    fields, eval_cmds = cells_lib.finetune_and_evaluate(
        ft_cmd, str(ft_dir), self.log,
        cross=list(filter(None, self.config.cross.split(","))))
    commands = ([pretrain["command"]] if pretrain else []) + [
        cells_lib.placeholders(c, self.work, self.data_dir)
        for c in [ft_cmd, *eval_cmds]]
    self.append({
        "kind": "cell", "time": cells_lib.now(),
        "git": cells_lib.git_revision(), "profile": self.config.profile,
        "arm": arm.name, "base": arm.base, "strength": arm.strength,
        "pool": arm.pool, "variant": "default",
        "dataset": self.config.dataset, "k": k, "seed": seed, **fields,
        "pretrain_seconds": pretrain["seconds"] if pretrain else 0.0,
        "commands": commands})
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
    for (profile, arm, _, dataset, k), results in report.seed_groups(
        report.latest_cells(self.rows())).items():
      if (profile, dataset, k) == (self.config.profile, self.config.dataset,
                                   2):
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
    prepare_data(self.config, self.shared, self.data_dir, self.log)
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
  """The study's Markdown report and plots, from its rows (and baselines)."""
  report.write_study_report(jsonl, jsonl.with_suffix(".md"),
                            config.get("baselines", ""))


def run_study(config, workdir, shared_data, results):
  """Runs (or resumes) the study; rows go to `results` (a .jsonl path)."""
  Study(config, workdir, shared_data, results).run()
  os.sync()
