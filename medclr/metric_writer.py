"""Scalar logging for training and evaluation loops.

One `MetricWriter` per loop (name 'train', 'eval', ...) writes each call of
`write(step, scalars)` to two places in the workdir:
  - `<workdir>/metrics.jsonl`: one JSON object per line with `name`, `step`,
    `time` (Unix wall time) and the scalars; `pandas.read_json(...,
    lines=True)` reads it back. In a local workdir each row is appended and
    flushed at once, so a crashed run keeps everything it logged.
  - `<workdir>/tb/`: TensorBoard event files via tensorboardX, tagged
    `<name>/<metric>`, so TensorBoard shows the same curves without needing
    TensorFlow. Local workdirs only (below).
`progress(step, scalars)` prints one console line with speed and ETA.

A URI workdir (gs://bucket/run) is written through `etils.epath`. Object
stores cannot append, so there the writer keeps the rows logged since its
last flush and rewrites the whole object (what is there, plus those rows) at
most every REMOTE_FLUSH_SECONDS, and at `flush()` and `close()`: a run
killed without closing (SIGKILL) loses the rows of its last seconds, and
each flush costs one read and one upload of the whole file. TensorBoard is
skipped there with one warning (tensorboardX writes gs:// only through
google-cloud-storage, which medclr neither requires nor tests).

Only JAX process 0 should write: other processes pass `enabled=False`, which
writes nothing and prints nothing, but still runs the finite check so that
every process stops on the same bad step instead of process 0 alone.
"""
import json
import math
import os
import re
import sys
import time

from absl import logging
from etils import epath

_RESERVED_KEYS = ("name", "step", "time")

# A URI workdir's metrics.jsonl is rewritten whole at most this often (GCS
# allows about one update per second of one object).
REMOTE_FLUSH_SECONDS = 5.0
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_warned_no_tensorboard = set()


def is_uri(path) -> bool:
  """True for 'gs://bucket/run' and other scheme:// paths (not local)."""
  return bool(_URI.match(os.fspath(path)))


def _warn_no_tensorboard(root):
  """Once per workdir and process: a URI workdir gets no TensorBoard."""
  if os.fspath(root) not in _warned_no_tensorboard:
    _warned_no_tensorboard.add(os.fspath(root))
    logging.warning("%s is not a local directory: no TensorBoard events are "
                    "written there (metrics.jsonl holds the same scalars)",
                    root)


def _format_duration(seconds):
  """h:mm:ss for an ETA."""
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}"


def _to_floats(scalars):
  """Host floats from Python, numpy or JAX scalars; raises on anything else."""
  values = {}
  for key, value in scalars.items():
    if key in _RESERVED_KEYS:
      raise ValueError(f"metric name {key!r} is reserved for the JSONL record "
                       f"fields {_RESERVED_KEYS}; rename it")
    try:
      values[key] = float(value)
    except (TypeError, ValueError) as error:
      raise ValueError(f"metric {key!r} must be a scalar number, got "
                       f"{type(value).__name__}: {error}") from error
  return values


def _check_finite(step, values):
  """Raises FloatingPointError naming the first NaN/inf metric."""
  for key, value in values.items():
    if not math.isfinite(value):
      raise FloatingPointError(
          f"non-finite {key}={value} at step {step}; training diverged (lower "
          "the learning rate, or check the inputs)")


def _drop_rows_after(path, name, step):
  """Rewrites `path` (an epath.Path) without rows of `name` logged after
  `step`: locally through a temporary file and a rename, on an object store
  as one upload (which replaces the object whole).

  A torn last line (a kill in the middle of a write) is dropped too.
  """
  if not path.exists():
    return
  kept = []
  with path.open("r") as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if row.get("name") != name or row.get("step", 0) <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
  if is_uri(path):
    path.write_text("".join(kept))
    return
  tmp = path.parent / (path.name + ".tmp")
  with tmp.open("w") as f:
    f.writelines(kept)
  tmp.replace(path)



def _tensorboardx():
  """tensorboardX, imported without torch.

  tensorboardX imports torch whenever it is installed (medclr's `bench`
  extra installs it), only to accept torch tensors as values; medclr logs
  Python floats, and the import costs every launcher about 3 CPU seconds.
  """
  if "torch" in sys.modules:
    import tensorboardX  # pylint: disable=g-import-not-at-top
    return tensorboardX
  sys.modules["torch"] = None  # makes `import torch` raise ImportError
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules["torch"]
  return tensorboardX

class MetricWriter:
  """Writes scalars to JSONL and TensorBoard, and prints progress lines.

  Usage:
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0,
                          total_steps=num_steps, log_every=50)
    for step in range(1, num_steps + 1):
      ...
      if writer.should_log(step):
        writer.write(step, {"loss": loss}, check_finite=True)
        writer.progress(step, {"loss": loss})
    writer.close()

  Metric names are given without a prefix: the writer's `name` groups them.
  """

  def __init__(self,
               workdir,
               *,
               enabled: bool = True,
               total_steps: int | None = None,
               log_every: int = 1,
               name: str = "train",
               drop_after: int | None = None):
    """Opens the JSONL file and the TensorBoard writer (when enabled).

    Args:
      workdir: directory of the run, local (created if missing) or a URI
        such as gs://bucket/run (see the module docstring).
      enabled: False on non-zero JAX processes: nothing is written or printed.
      total_steps: last step of the loop, for `step/total` and the ETA; None
        when unknown.
      log_every: `should_log(step)` is true every this many steps (and at
        `total_steps`); `progress` prints only on those steps.
      name: loop name, e.g. 'train' or 'eval': the JSONL `name` field, the
        TensorBoard tag prefix and the console line prefix.
      drop_after: a run resuming from checkpoint step s passes s (a fresh
        run -1): JSONL rows of this `name` logged after s by an interrupted
        run are removed, so the replayed steps are not listed twice.
    """
    if log_every < 1:
      raise ValueError(f"log_every must be >= 1, got {log_every}")
    self.enabled = enabled
    self.total_steps = total_steps
    self.log_every = log_every
    self.name = name
    self._last_progress = None  # (step, perf_counter) of the last line.
    self._jsonl = None
    self._tensorboard = None
    self._closed = False
    self.jsonl_path = None
    self.tensorboard_dir = None
    self.remote = False
    self._pending = []  # URI workdir: rows not yet uploaded.
    self._last_upload = None  # URI workdir: time.monotonic() of the last.
    if not enabled:
      return
    root = epath.Path(workdir)
    self.remote = is_uri(workdir)
    root.mkdir(parents=True, exist_ok=True)
    self.jsonl_path = root / "metrics.jsonl"
    if drop_after is not None:
      _drop_rows_after(self.jsonl_path, name, drop_after)
    if self.remote:
      _warn_no_tensorboard(root)
      return
    self.tensorboard_dir = root / "tb"
    self._jsonl = self.jsonl_path.open("a")
    # tensorboardX names files by the second and host only; the pid and loop
    # name keep a train and an eval writer opened together apart.
    self._tensorboard = _tensorboardx().SummaryWriter(
        logdir=os.fspath(self.tensorboard_dir),
        filename_suffix=f".{os.getpid()}.{name}")

  def _check_open(self):
    """Raises instead of silently dropping metrics logged after close()."""
    if self._closed:
      raise RuntimeError(f"MetricWriter {self.name!r} is closed; create a new "
                         "one to log more")

  def should_log(self, step: int) -> bool:
    """True every `log_every` steps and at the final step."""
    return step % self.log_every == 0 or step == self.total_steps

  def write(self, step: int, scalars, *, check_finite: bool = False) -> None:
    """Appends one JSONL record and one TensorBoard point per scalar.

    Args:
      step: global step the values belong to.
      scalars: metric name -> scalar (Python, numpy or JAX).
      check_finite: raise FloatingPointError, naming the step and metric,
        when a value is NaN or infinite (use for losses). Runs on every
        process, before anything is written. Without it, non-finite values
        are logged (as JSON null, since JSON has no NaN).
    """
    self._check_open()
    values = _to_floats(scalars)
    if check_finite:
      _check_finite(step, values)
    if not self.enabled:
      return
    wall_time = time.time()
    record = {"name": self.name, "step": int(step), "time": wall_time}
    record.update(
        {k: (v if math.isfinite(v) else None) for k, v in values.items()})
    line = json.dumps(record) + "\n"
    if self.remote:
      self._pending.append(line)
      if (self._last_upload is None or time.monotonic() - self._last_upload
          >= REMOTE_FLUSH_SECONDS):
        self._upload()
      return
    self._jsonl.write(line)
    self._jsonl.flush()
    for key, value in values.items():
      self._tensorboard.add_scalar(f"{self.name}/{key}", value,
                                   global_step=int(step), walltime=wall_time)
    self._tensorboard.flush()

  def progress(self, step: int, scalars=None, *,
               check_finite: bool = False) -> str | None:
    """Prints one line: step/total, steps/s, ETA and the scalars.

    Speed is measured between consecutive printed lines, so the first line
    (which usually includes compilation) shows '--' for speed and ETA.

    Args:
      step: current global step.
      scalars: optional metric name -> scalar, printed with 4 significant
        digits.
      check_finite: as in `write`.

    Returns:
      The printed line, or None when disabled or `step` is not a logging
      step.
    """
    self._check_open()
    values = _to_floats(scalars or {})
    if check_finite:
      _check_finite(step, values)
    if not self.enabled or not self.should_log(step):
      return None
    now = time.perf_counter()
    steps_per_s = None
    if self._last_progress is not None:
      last_step, last_time = self._last_progress
      if step > last_step and now > last_time:
        steps_per_s = (step - last_step) / (now - last_time)
    self._last_progress = (step, now)

    total = "?" if self.total_steps is None else str(self.total_steps)
    speed = "--" if steps_per_s is None else f"{steps_per_s:.4g}"
    if steps_per_s is None or self.total_steps is None:
      eta = "--"
    else:
      eta = _format_duration(max(0, self.total_steps - step) / steps_per_s)
    parts = [f"[{self.name}] step {step}/{total}", f"{speed} steps/s",
             f"ETA {eta}"]
    parts += [f"{key}={value:.4g}" for key, value in values.items()]
    line = " | ".join(parts)
    print(line, flush=True)
    return line

  def _upload(self):
    """URI workdir: rewrites metrics.jsonl whole, as it is now (other
    writers' rows included) plus this writer's pending rows."""
    self._last_upload = time.monotonic()
    if not self._pending:
      return
    text = self.jsonl_path.read_text() if self.jsonl_path.exists() else ""
    if text and not text.endswith("\n"):
      text += "\n"
    self.jsonl_path.write_text(text + "".join(self._pending))
    self._pending = []

  def flush(self) -> None:
    """Pushes buffered TensorBoard events to disk (local JSONL is always
    flushed) or, in a URI workdir, uploads the pending JSONL rows."""
    if self._tensorboard is not None:
      self._tensorboard.flush()
    if self._pending:
      self._upload()

  def close(self) -> None:
    """Flushes and closes both files; later write/progress calls raise."""
    if self._pending and not self._closed:
      self._upload()
    if self._tensorboard is not None:
      self._tensorboard.close()
      self._tensorboard = None
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    self._closed = True

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()
