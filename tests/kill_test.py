"""A run killed at an arbitrary moment (SIGKILL) resumes and finishes.

Orbax commits a checkpoint by renaming a finished temporary directory, so a
kill in the middle of a save leaves the previous checkpoint as the latest.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT
from medclr import checkpointing

STEPS = 40


def _command(workdir, data_dir):
  return [sys.executable, "-m", "launch.pretrain",
          "--config=configs/pretrain_simclr.py:smoke", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", f"--config.num_steps={STEPS}",
          "--config.checkpoint_every=1", "--config.keep_checkpoints=3"]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path, phantom_data_dir):
  workdir = str(tmp_path / "run")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(_command(workdir, phantom_data_dir), cwd=REPO_ROOT,
                          env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 300
  # Kill while it is busy training and saving (a few checkpoints exist).
  while time.time() < deadline and proc.poll() is None:
    steps = [d for d in os.listdir(ckpt_dir)] if os.path.isdir(ckpt_dir) else []
    if len([d for d in steps if d.isdigit()]) >= 2:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  _, killed_at = checkpointing.saved_tree_shapes(workdir)
  assert 1 <= killed_at < STEPS

  result = subprocess.run(_command(workdir, phantom_data_dir), cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"resuming from step {killed_at}" in result.stdout
  _, final = checkpointing.saved_tree_shapes(workdir)
  assert final == STEPS
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line)["step"] for line in f]
  assert logged[-1] == STEPS and logged[0] == 1
