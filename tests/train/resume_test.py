"""Exact resume: kill after step n, resume, and match the uninterrupted run.

The interruption is made real on disk: an uninterrupted run keeps every
checkpoint; a copy of its workdir with the checkpoints after step n removed
is exactly what a run killed after saving step n leaves behind (its metrics
file still lists the later steps, as when a kill lands between logging and
saving). Resuming it must reproduce the whole train state (parameters,
optimizer state, BatchNorm statistics, step), the data iterator's position
and the metric rows, bit for bit: on one CPU process XLA runs the same
compiled program on the same inputs, and the augmentation keys derive from
the step, so nothing may differ.
"""
import json
import shutil

import jax
import numpy as np
import pytest

from conftest import assert_trees_equal, saved_state, smoke_config
from medclr.train import pretrain

STEPS, KILLED_AFTER = 4, 2


def _rows(workdir):
  with open(workdir / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  return [{k: v for k, v in row.items() if k != "time"} for row in rows]


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(tmp_path, phantom_data_dir):
  config = smoke_config("pretrain_simclr", phantom_data_dir,
                        num_steps=STEPS, checkpoint_every=1,
                        keep_checkpoints=10, async_checkpoints=False)
  full = tmp_path / "full"
  pretrain.train_and_evaluate(config, str(full))

  killed = tmp_path / "killed"
  shutil.copytree(full, killed)
  for step in range(KILLED_AFTER + 1, STEPS + 1):
    shutil.rmtree(killed / "checkpoints" / str(step))
  pretrain.train_and_evaluate(config, str(killed))

  want_state, want_iter = saved_state(full, STEPS)
  got_state, got_iter = saved_state(killed, STEPS)
  assert set(want_state) >= {"params", "opt_state", "batch_stats", "step"}
  assert_trees_equal(got_state, want_state)
  assert int(got_state["step"]) == STEPS
  assert got_iter == want_iter and got_iter
  # Rows after the resumed step are replaced, not repeated.
  assert _rows(killed) == _rows(full)
  assert [r["step"] for r in _rows(killed)] == list(range(1, STEPS + 1))
  # The resumed part did move, so equality means something.
  before, _ = saved_state(full, KILLED_AFTER)
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(before["params"]), jax.tree.leaves(want_state["params"])))
