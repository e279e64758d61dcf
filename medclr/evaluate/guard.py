"""Learning and collapse diagnostics for pretraining, and the guard that acts.

A contrastive loss at its chance level means the embeddings separate nothing;
an embedding std that falls far below its value at step 0 means every
image maps to one point; a DINO teacher at entropy ln K is uniform, at 0
one-hot. Each logged row gets the ratios that make these visible
(`loss_over_chance`, `embedding_std_rel`, `teacher_entropy_rel`), and the
guard warns, or stops the run with an `errors.TrainingStalled` report, when
one of them persists for `patience` logs after `warmup_steps`.
"""
import dataclasses
import json
import math

from absl import logging
from etils import epath

from medclr import errors

MODES = ("off", "warn", "stop")
# The step-0 metrics the ratios divide by, kept for resumed runs.
REFERENCE_FILE = "guard_reference.json"


@dataclasses.dataclass(frozen=True)
class Limits:
  """When a logged row counts as stalled (see `Guard`)."""
  mode: str = "warn"
  warmup_steps: int = -1
  patience: int = 3
  # Loss within this fraction of its chance level counts as "at chance".
  chance_margin: float = 0.02
  # Embedding std below this fraction of its step-0 value: collapse.
  collapse_ratio: float = 0.1
  # DINO teacher entropy above this fraction of ln K: uniform teacher.
  uniform_ratio: float = 0.98

  @classmethod
  def from_config(cls, config) -> "Limits":
    """Reads `config.guard`; raises ConfigError naming a bad field.

    `warmup_steps` -1 (the default) means the larger of the optimizer's
    warm-up and a tenth of the run.
    """
    cfg = config.get("guard") or {}
    values = {f.name: cfg.get(f.name, f.default)
              for f in dataclasses.fields(cls)}
    if values["warmup_steps"] < 0:
      values["warmup_steps"] = max(int(config.optim.get("warmup_steps", 0)),
                                   int(config.num_steps) // 10)
    limits = cls(**values)
    if limits.mode not in MODES:
      raise errors.ConfigError(
          f"config.guard.mode={limits.mode!r}: expected one of {MODES}")
    if limits.patience < 1:
      raise errors.ConfigError(
          f"config.guard.patience={limits.patience}: must be >= 1")
    return limits


def ratios(row: dict, first: dict) -> None:
  """Adds the chance and collapse ratios to `row` in place."""
  if "loss_chance" in row and row["loss_chance"] > 0:
    row["loss_over_chance"] = row["loss"] / row["loss_chance"]
  if "embedding_std" in row and first.get("embedding_std", 0) > 0:
    row["embedding_std_rel"] = row["embedding_std"] / first["embedding_std"]
  if "teacher_entropy" in row and row.get("entropy_max", 0) > 0:
    row["teacher_entropy_rel"] = row["teacher_entropy"] / row["entropy_max"]


def stalls(row: dict, limits: Limits) -> list[str]:
  """The likely causes a row shows (empty when healthy)."""
  found = []
  over = row.get("loss_over_chance")
  if over is not None and abs(over - 1.0) <= limits.chance_margin:
    found.append(
        f"loss {row['loss']:.4f} sits at its chance level "
        f"{row['loss_chance']:.4f} (embeddings separate nothing; with strong "
        "views, positives may be less alike than different images)")
  rel = row.get("embedding_std_rel")
  if rel is not None and rel < limits.collapse_ratio:
    found.append(
        f"embedding std fell to {rel:.3f} of its step-0 value "
        "(representation collapse)")
  entropy = row.get("teacher_entropy_rel")
  if entropy is not None and entropy >= limits.uniform_ratio:
    found.append(
        f"teacher entropy {row['teacher_entropy']:.3f} is at ln K = "
        f"{row['entropy_max']:.3f} (uniform teacher)")
  return found


class Guard:
  """Watches logged rows; warns or stops per `Limits`.

  `observe(step, row)` adds the ratios to the row (before it is written) and
  returns a report once causes have held for `patience` consecutive logs;
  `act(report, latest_checkpoint)` then warns once or raises.
  """

  def __init__(self, limits: Limits, workdir=None, *, write: bool = True):
    """`workdir` keeps the step-0 reference across restarts (process 0
    writes it when `write`)."""
    self.limits = limits
    self.path = (epath.Path(workdir) / REFERENCE_FILE
                 if workdir is not None else None)
    self.write = write
    self.first: dict = (json.loads(self.path.read_text())
                        if self.path is not None and self.path.exists()
                        else {})
    self.streak = 0
    self.since = None
    self.warned = False

  def set_reference(self, row: dict) -> None:
    """Takes the first step's metrics (before any update) as the reference."""
    self.first = dict(row)
    if self.path is not None and self.write:
      tmp = self.path.parent / (self.path.name + ".tmp")
      tmp.write_text(json.dumps(self.first))
      tmp.rename(self.path)

  def observe(self, step: int, row: dict) -> str | None:
    """Adds the ratios to `row` in place; the report of a persistent stall."""
    if not self.first:
      self.first = dict(row)
    ratios(row, self.first)
    if self.limits.mode == "off" or step <= self.limits.warmup_steps:
      return None
    causes = stalls(row, self.limits)
    if not causes:
      self.streak, self.since = 0, None
      return None
    self.streak += 1
    self.since = step if self.since is None else self.since
    if self.streak < self.limits.patience:
      return None
    return (f"step {step}: " + "; ".join(causes) + f", in {self.streak} "
            f"logs in a row since step {self.since}")

  def act(self, report: str, latest_checkpoint: int | None) -> None:
    """Warns once ('warn') or raises `errors.TrainingStalled` ('stop')."""
    if latest_checkpoint is None:
      where = "no checkpoint saved yet"
    elif latest_checkpoint >= self.since:
      where = (f"latest checkpoint: step {latest_checkpoint}, saved during "
               "the stall")
    else:
      where = f"last checkpoint before the stall: step {latest_checkpoint}"
    if self.limits.mode == "stop":
      raise errors.TrainingStalled(
          f"{report}; {where}. Stopped by config.guard.mode='stop' (set "
          "'warn' to continue).")
    if not self.warned:
      logging.warning("guard: %s; %s", report, where)
      self.warned = True


def nt_xent_chance(num_views: int) -> float:
  """NT-Xent / SupCon loss when all similarities are equal: ln(2N - 1)."""
  return math.log(num_views - 1)
