"""XLA:CPU settings medclr applies before JAX creates its CPU backend.

XLA reads `XLA_FLAGS` once, when the first backend is created, so these
defaults are added to the environment when `medclr` is imported (see
`medclr/__init__.py`), i.e. before a launcher, test or notebook runs its
first JAX computation. A flag the user already set in `XLA_FLAGS` is never
overridden, and `MEDCLR_KEEP_XLA_FLAGS=1` turns the defaults off.

Why each flag (measured in benchmarks/README.md, optimisation log):
  * `xla_cpu_experimental_ynn_fusion_type=individual_dot`: jaxlib 0.10 sends
    convolutions to YNNPACK by default; on this AVX-512 CPU its 3x3
    convolutions ran 2x slower than XLA's Eigen ones at the U-Net's first
    levels (and were less accurate: 1e-5 vs 1e-6 relative error against
    float64), while YNNPACK's matmuls are fine. Keeping only
    `individual_dot` leaves dots on YNNPACK and convolutions on Eigen.

An unknown name in `XLA_FLAGS` aborts the process, so flags are only added
for the jaxlib versions they were checked with (`CHECKED_JAXLIB`).
"""
import importlib.metadata
import os

OPT_OUT_ENV = "MEDCLR_KEEP_XLA_FLAGS"
CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "individual_dot"}
# [lowest, highest] (major, minor) jaxlib the flag is known to exist in: it
# is in XLA since jaxlib 0.8 and other projects set it on 0.11; its speed
# effect was measured on 0.10.2 only.
CHECKED_JAXLIB = ((0, 8), (0, 12))


def jaxlib_version():
  """(major, minor) of the installed jaxlib, or None."""
  try:
    parts = importlib.metadata.version("jaxlib").split(".")
    return int(parts[0]), int(parts[1])
  except (importlib.metadata.PackageNotFoundError, ValueError, IndexError):
    return None


def apply(environ=None):
  """Adds medclr's default flags to `XLA_FLAGS`; returns the ones added."""
  environ = os.environ if environ is None else environ
  if environ.get(OPT_OUT_ENV, "") not in ("", "0"):
    return []
  version = jaxlib_version()
  if version is None or not CHECKED_JAXLIB[0] <= version <= CHECKED_JAXLIB[1]:
    return []
  current = environ.get("XLA_FLAGS", "")
  added = [f"--{name}={value}" for name, value in CPU_FLAGS.items()
           if f"--{name}=" not in current]
  if added:
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added
