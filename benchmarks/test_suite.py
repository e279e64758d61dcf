r"""How long the test suite takes here: wall, CPU and the slowest files.

  python -m benchmarks.test_suite                # the suite, as make test runs it
  python -m benchmarks.test_suite --tests=tests/data --workers=1   # a part

Runs pytest as `make test` does (one worker per core, whole files per
worker, longest first; tests/conftest.py) in a subprocess and reports:
  * wall_s, and cpu_s: the CPU seconds of pytest and of everything it
    started and waited for (its workers, the launchers tests run);
  * passed, failed, errors, skipped, from a JUnit file, and pytest's exit
    code;
  * test_xla_flags: what tests/conftest.py adds to `XLA_FLAGS` here;
  * slowest_files: the ten files with the largest summed test durations
    (one worker's time each; setup included).
Issues 26 and 27 ask for `make test` under 10 minutes from a fresh clone
on an idle 2-core machine: these rows hold the pytest part, and with
`--install_s` (the seconds `make install` took just before, timed by the
caller) also make_test_s, the two together. Run it with nothing else on the
machine.

  S=$(date +%s); make install; .venv/bin/python -m benchmarks.test_suite \
      --install_s=$(( $(date +%s) - S ))
"""
import argparse
import collections
import os
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

from benchmarks import common

_PRINT_TEST_FLAGS = (
    "import sys; sys.path.insert(0, 'tests'); import conftest; "
    "print(' '.join(conftest._test_xla_flags()))")


def _children_cpu():
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def test_xla_flags():
  """The flags tests/conftest.py chooses for this jaxlib."""
  out = subprocess.run([sys.executable, "-c", _PRINT_TEST_FLAGS],
                       cwd=common.REPO, capture_output=True, text=True,
                       check=True)
  return out.stdout.strip()


def junit_summary(path):
  """Counts and per-file summed durations from a pytest JUnit file."""
  counts = collections.Counter()
  per_file = collections.Counter()
  for case in ET.parse(path).iter("testcase"):
    outcome = "passed"
    for child in case:
      if child.tag in ("failure", "error", "skipped"):
        outcome = {"failure": "failed", "error": "errors"}.get(
            child.tag, child.tag)
    counts[outcome] += 1
    module = [part for part in case.get("classname", "").split(".")
              if part.endswith("_test")]
    per_file[module[0] if module else case.get("classname")] += float(
        case.get("time", 0.0))
  slowest = [[name, round(seconds, 1)]
             for name, seconds in per_file.most_common(10)]
  return {key: counts[key] for key in ("passed", "failed", "errors",
                                       "skipped")}, slowest


def run(tests, workers):
  """Runs the suite once; returns the measured values."""
  with tempfile.TemporaryDirectory() as tmp:
    junit = os.path.join(tmp, "junit.xml")
    command = [sys.executable, "-m", "pytest", "-n", workers, "--dist",
               "loadfile", "--no-loadscope-reorder", "-q", "-p",
               "no:cacheprovider", f"--junitxml={junit}", *tests]
    cpu_before, start = _children_cpu(), time.perf_counter()
    result = subprocess.run(command, cwd=common.REPO, check=False)
    wall = time.perf_counter() - start
    cpu = _children_cpu() - cpu_before
    counts, slowest = (junit_summary(junit) if os.path.exists(junit)
                       else ({}, []))
  return {"tests": tests or ["tests"], "workers": workers,
          "returncode": result.returncode, "wall_s": round(wall, 1),
          "cpu_s": round(cpu, 1), **counts, "slowest_files": slowest}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tests", default="",
                      help="comma list of test paths (default: all)")
  parser.add_argument("--workers", default="auto",
                      help="pytest-xdist workers (make test: auto)")
  parser.add_argument("--install_s", type=float, default=None,
                      help="seconds `make install` took just before, in "
                      "the same fresh clone (timed by the caller): the row "
                      "then has make_test_s, the two together")
  parser.add_argument("--results", default=None,
                      help="rows file (default benchmarks/results/"
                      "test_suite.jsonl)")
  args = parser.parse_args()
  tests = [t for t in args.tests.split(",") if t]
  flags = test_xla_flags()
  result = run(tests, args.workers)
  if args.install_s is not None:
    result.update(install_s=round(args.install_s, 1), make_test_s=round(
        args.install_s + result["wall_s"], 1))
  common.report("test_suite", {**result, "test_xla_flags": flags},
                args.results)
  return 0 if result["returncode"] == 0 else 1


if __name__ == "__main__":
  sys.exit(main())
