"""A run killed at any moment (SIGKILL) resumes to the uninterrupted result.

Orbax commits a checkpoint by renaming a finished temporary directory, so a
kill in the middle of a save leaves the previous checkpoint as the latest.
One run is killed twice, once while a save is in flight and once between
steps; after resuming it must end with exactly the state of a run that was
never interrupted (same process layout, so the same XLA programs), and its
metrics file must list every step once.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT, assert_trees_equal, saved_state
from medclr import checkpointing

STEPS = 12
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def _command(workdir, data_dir):
  return [sys.executable, "-m", "launch.pretrain",
          "--config=configs/pretrain_simclr.py:smoke", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", f"--config.num_steps={STEPS}",
          "--config.checkpoint_every=1", "--config.keep_checkpoints=3"]


def _finish(workdir, data_dir):
  result = subprocess.run(_command(workdir, data_dir), cwd=REPO_ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def _saved_steps(ckpt_dir):
  if not os.path.isdir(ckpt_dir):
    return []
  return [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()]


def _in_flight_saves(ckpt_dir):
  return [d for d in os.listdir(ckpt_dir) if "tmp" in d]


def _kill(workdir, data_dir, during_save):
  """Starts a run and SIGKILLs it once 2 checkpoints exist (and, with
  `during_save`, at a moment when a save's temporary directory exists).
  """
  proc = subprocess.Popen(_command(workdir, data_dir), cwd=REPO_ROOT, env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  start = max(_saved_steps(ckpt_dir), default=0)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    saved = _saved_steps(ckpt_dir)
    if len(saved) >= 2 and max(saved) > start + 1 and (
        not during_save or _in_flight_saves(ckpt_dir)):
      break
    time.sleep(0.005)  # often enough to land inside a save
  assert proc.poll() is None, "run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return _in_flight_saves(ckpt_dir)


@pytest.mark.slow
def test_sigkills_then_resume_match_an_uninterrupted_run(tmp_path,
                                                         phantom_data_dir):
  reference = str(tmp_path / "reference")
  _finish(reference, phantom_data_dir)

  workdir = str(tmp_path / "run")
  left_over = _kill(workdir, phantom_data_dir, during_save=True)
  assert left_over, "the kill did not land during a save"
  _, killed_at = checkpointing.saved_tree_shapes(workdir)
  assert 1 <= killed_at < STEPS
  _kill(workdir, phantom_data_dir, during_save=False)
  _, killed_again_at = checkpointing.saved_tree_shapes(workdir)
  assert killed_at < killed_again_at < STEPS
  out = _finish(workdir, phantom_data_dir)
  assert f"resuming from step {killed_again_at}" in out

  got_state, got_iter = saved_state(workdir, STEPS)
  want_state, want_iter = saved_state(reference, STEPS)
  assert_trees_equal(got_state, want_state)
  assert got_iter == want_iter
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  with open(os.path.join(reference, "metrics.jsonl")) as f:
    want = [json.loads(line) for line in f]
  assert [r["step"] for r in logged] == list(range(1, STEPS + 1))
  assert [r["loss"] for r in logged] == [r["loss"] for r in want]
