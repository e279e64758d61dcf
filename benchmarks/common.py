"""Pieces every benchmark shares: timing, machine facts, result records.

Timings on a shared machine are noisy (docs/protocol.md section 2), so every
benchmark warms up, times each repetition separately and reports the median;
ratios are always taken between numbers measured in the same run.

A result is one JSON object: printed as the last stdout line and appended to
`benchmarks/results/<name>.jsonl` together with when, on what commit and on
what machine it was measured.
"""
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"

# The canonical contrastive head of docs/protocol.md section 2.
CANONICAL_HEAD = {"hidden_dim": 512, "out_dim": 128}
PRECISIONS = ("float32", "bfloat16")


def force_cpu_devices(count):
  """Asks XLA for `count` host devices if JAX has not started yet.

  `jax_num_cpu_devices` only takes effect before the first JAX operation.
  When JAX is already running the existing devices are used as they are, and
  an earlier, larger request (a test process whose conftest asked for 8) is
  never lowered.

  Returns:
    True if the setting was applied.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if int(count) <= max(jax.config.jax_num_cpu_devices, 1):
    return False
  try:
    jax.config.update("jax_num_cpu_devices", int(count))
  except RuntimeError:
    return False
  return True


def add_torch_flags(parser):
  """--torch / --notorch: also measure the PyTorch peer (default on)."""
  parser.add_argument("--torch", dest="torch", action="store_true",
                      default=True, help="also measure the PyTorch peer")
  parser.add_argument("--notorch", dest="torch", action="store_false")


def parse_widths(text):
  """'32,64,128' -> (32, 64, 128), with an error naming the flag."""
  try:
    widths = tuple(int(w) for w in text.split(",") if w.strip())
  except ValueError as e:
    raise SystemExit(f"--widths={text!r}: expected a comma list of positive "
                     "ints, e.g. 32,64,128,256,512") from e
  if not widths or min(widths) < 1:
    raise SystemExit(f"--widths={text!r}: expected a comma list of positive "
                     "ints, e.g. 32,64,128,256,512")
  return widths


def check_size(size, widths, flag="--size"):
  """Exits with a clear message unless every 2x2 pooling is exact."""
  multiple = 2 ** (len(widths) - 1)
  if size < multiple or size % multiple:
    raise SystemExit(f"{flag}={size}: must be a positive multiple of "
                     f"{multiple} for a {len(widths)}-level encoder")


def model_config(widths, precision, in_channels=3, num_classes=1):
  """A `config.model` block for the benchmark model."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  if precision not in PRECISIONS:
    raise SystemExit(f"--precision={precision!r}: expected one of "
                     f"{PRECISIONS}")
  return ml_collections.ConfigDict({
      "widths": tuple(widths), "norm": "batch", "in_channels": in_channels,
      "num_classes": num_classes, "dtype": precision})


def time_calls(fn, steps, warmup):
  """Runs fn() warmup + steps times; returns the per-call seconds timed.

  fn must block until its work is done (e.g. `jax.block_until_ready`), or
  the times measure dispatch only.
  """
  if steps < 1 or warmup < 0:
    raise SystemExit(f"--steps={steps} must be >= 1 and --warmup={warmup} "
                     ">= 0")
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def median(values):
  return float(statistics.median(values))


def peak_rss_mb():
  """Peak resident set size of this process so far, in MiB (Linux: KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_matmul_gflops(dtype="float32", n=2048, repeats=5):
  """Median GFLOP/s of a jitted n x n x n `jnp.dot` on the default device.

  A large dense matmul is the fastest thing the hardware does, so it is the
  yardstick for model FLOP utilisation (MFU) measured in the same run.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  keys = jax.random.split(jax.random.key(0))
  a = jax.random.normal(keys[0], (n, n), dtype)
  b = jax.random.normal(keys[1], (n, n), dtype)
  # float32 accumulation keeps the bfloat16 product a real bfloat16 matmul
  # (what the convolutions do) rather than an emulated float32 one.
  dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  times = time_calls(lambda: dot(a, b).block_until_ready(), repeats, warmup=1)
  return 2.0 * n**3 / median(times) / 1e9


def cpu_model():
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _version(package):
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def machine_info():
  """What the numbers were measured on (no host names or user data)."""
  return {
      "cpu_model": cpu_model(),
      "cores": os.cpu_count(),
      "python": platform.python_version(),
      "jax": _version("jax"),
      "jaxlib": _version("jaxlib"),
      "flax": _version("flax"),
      "torch": _version("torch"),
      "monai": _version("monai"),
      # Optimisation attempts are often XLA flags: keep them with the result.
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      # Other work on the machine distorts timings, PyTorch's most of all
      # (its OpenMP barriers stall when a thread is descheduled): keep the
      # load with the result so a disturbed run can be recognised.
      "load_avg_1m_5m_15m": [round(x, 2) for x in os.getloadavg()],
  }


def git_commit():
  """HEAD of the repository, with '-dirty' when the work tree has changes."""
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO,
                          capture_output=True, text=True, check=True)
    status = subprocess.run(["git", "status", "--porcelain", "--", "medclr"],
                            cwd=REPO, capture_output=True, text=True,
                            check=True)
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def repo_relative(path):
  """`path` relative to the repository when inside it (results hold no
  absolute paths of the machine that produced them)."""
  path = pathlib.Path(path).absolute()
  try:
    return str(path.relative_to(REPO))
  except ValueError:
    return path.name


def default_results_path(name):
  return RESULTS_DIR / f"{name}.jsonl"


def report(name, result, results_path=None):
  """Adds provenance, appends to the results file, prints the JSON line.

  Args:
    name: benchmark name (the results file stem).
    result: dict of measured values (JSON-serialisable).
    results_path: where to append; default benchmarks/results/<name>.jsonl.

  Returns:
    The full record that was written.
  """
  record = {
      "benchmark": name,
      **result,
      "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "git_commit": git_commit(),
      "machine": machine_info(),
  }
  path = pathlib.Path(results_path or default_results_path(name))
  path.parent.mkdir(parents=True, exist_ok=True)
  line = json.dumps(record, sort_keys=False)
  with path.open("a") as f:
    f.write(line + "\n")
  sys.stdout.flush()
  print(line, flush=True)
  return record


def latest_record(path, **match):
  """The last record of a results file whose fields equal `match`, or None."""
  path = pathlib.Path(path)
  if not path.is_file():
    return None
  found = None
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if all(record.get(k) == v for k, v in match.items()):
      found = record
  return found
