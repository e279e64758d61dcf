"""Two JAX processes on localhost give the numbers of one process.

Two `launch.pretrain` processes with 4 CPU devices each (jax.distributed on
127.0.0.1, gloo collectives) must log the same per-step losses as one process
with 8 devices: the global batch, the augmentation keys and the global-batch
NT-Xent do not depend on how devices are spread over hosts.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, smoke_config
from medclr import pretrain

STEPS = 3


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, phantom_data_dir):
  one = str(tmp_path / "one")
  pretrain.train_and_evaluate(
      smoke_config("pretrain_simclr", phantom_data_dir, num_steps=STEPS), one)

  two = str(tmp_path / "two")
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "launch.pretrain",
       "--config=configs/pretrain_simclr.py:smoke", f"--workdir={two}",
       f"--config.data.data_dir={phantom_data_dir}",
       f"--config.num_steps={STEPS}",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}"],
      cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = []
  for proc in procs:
    try:
      outputs.append(proc.communicate(timeout=600)[0])
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      raise
  for proc, out in zip(procs, outputs):
    assert proc.returncode == 0, out[-3000:]
  assert "process 0 of 2" in outputs[0] or "JAX process 0 of 2" in outputs[0]
  want, got = _losses(one), _losses(two)
  assert len(want) == len(got) == STEPS
  np.testing.assert_allclose(got, want, rtol=1e-4)
