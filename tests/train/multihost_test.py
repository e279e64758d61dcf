"""Two JAX processes on localhost give the numbers of one process.

Two `launch.pretrain` processes with 4 CPU devices each (jax.distributed on
127.0.0.1, gloo collectives) must end, after several real updates, with the
state of one process with 8 devices: parameters, optimizer state, BatchNorm
statistics and step, and the same per-step losses. The global batch, the
augmentation keys and the global-batch NT-Xent do not depend on how devices
are spread over hosts; only the order of floating-point sums in the
cross-process collectives may differ, hence a tolerance rather than bits.
The runs use plain SGD at a small rate: Adam or LARS normalise each update,
which both hides a wrong gradient scale (a psum where a mean belongs) and
turns reduction-order noise in near-zero gradients into full-size steps.
"""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import (REPO_ROOT, assert_trees_close_to_scale, saved_state,
                      smoke_config)
from medclr.train import pretrain

STEPS = 4
# Of each leaf's largest entry. Measured: the two layouts' losses part by
# ~6e-5 after one update and ~5e-3 after four (float sums in another order,
# amplified by training); a wrong gradient scale is off by 100% or more.
TOLERANCE = 0.05


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
      smoke_config("pretrain_simclr", phantom_data_dir, num_steps=STEPS,
                   keep_checkpoints=STEPS,
                   **{"optim.name": "sgd", "optim.learning_rate": 0.01}), one)

  two = str(tmp_path / "two")
  port = _free_port()
  # 4 devices a process; the other flags (conftest's) stay.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(
      [os.environ.get("XLA_FLAGS", ""),
       "--xla_force_host_platform_device_count=4"]).strip())
  procs = [subprocess.Popen(
      [sys.executable, "-m", "launch.pretrain",
       "--config=configs/pretrain_simclr.py:smoke", f"--workdir={two}",
       f"--config.data.data_dir={phantom_data_dir}",
       f"--config.num_steps={STEPS}", f"--config.keep_checkpoints={STEPS}",
       "--config.optim.name=sgd", "--config.optim.learning_rate=0.01",
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
  np.testing.assert_allclose(got, want, rtol=1e-2)
  want_state, want_iter = saved_state(one, STEPS)
  got_state, got_iter = saved_state(two, STEPS)
  assert set(want_state) >= {"params", "opt_state", "batch_stats", "step"}
  assert int(got_state["step"]) == int(want_state["step"]) == STEPS
  # Compare what the updates did (the state after step 1 is the common
  # start): a psum where a mean belongs scales it by 2 to 8. Scales are
  # per part, as a bias before a BatchNorm only ever sees noise.
  moved = lambda s, start: jax.tree.map(np.subtract, s, start)
  want_start, _ = saved_state(one, 1)
  got_start, _ = saved_state(two, 1)
  assert_trees_close_to_scale(got_start, want_start, 1e-2, per_leaf=False)
  for part in ("params", "batch_stats"):
    assert_trees_close_to_scale(moved(got_state[part], got_start[part]),
                                moved(want_state[part], want_start[part]),
                                TOLERANCE, per_leaf=False)
  assert_trees_close_to_scale(got_state["opt_state"], want_state["opt_state"],
                              TOLERANCE, per_leaf=False)
  assert max(float(np.abs(d).max()) for d in jax.tree.leaves(
      moved(want_state["params"], want_start["params"]))) > 0
  # Each process saved its own iterator position.
  assert len(got_iter) == 2 and len(want_iter) == 1
