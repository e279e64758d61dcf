"""Exact resume: kill after step n, resume, and match the uninterrupted run.

The interruption is made real on disk: an uninterrupted run keeps every
checkpoint; a copy of its workdir with the checkpoints after step n removed
is exactly what a run killed after saving step n leaves behind. Resuming it
must reproduce the same data batches (Grain iterator state) and the same
parameters (optimizer state, step-keyed augmentation randomness).
"""
import shutil

import jax
import numpy as np
import pytest

from conftest import saved_subtrees, smoke_config
from medclr import pretrain


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(tmp_path, phantom_data_dir):
  config = smoke_config("pretrain_simclr", phantom_data_dir, num_steps=4,
                        checkpoint_every=1, keep_checkpoints=10,
                        async_checkpoints=False)
  full = tmp_path / "full"
  pretrain.train_and_evaluate(config, str(full))

  killed = tmp_path / "killed"
  shutil.copytree(full, killed)
  for step in (3, 4):
    shutil.rmtree(killed / "checkpoints" / str(step))
  (killed / "metrics.jsonl").unlink()
  pretrain.train_and_evaluate(config, str(killed))

  want = saved_subtrees(full, 4)["params"]
  got = saved_subtrees(killed, 4)["params"]
  leaves_want, leaves_got = jax.tree.leaves(want), jax.tree.leaves(got)
  assert len(leaves_want) == len(leaves_got) > 0
  for a, b in zip(leaves_want, leaves_got):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  # And the run did move: step 4 differs from step 2, so equality means
  # something.
  start = jax.tree.leaves(saved_subtrees(full, 2)["params"])
  assert any(not np.allclose(a, b) for a, b in zip(start, leaves_want))
