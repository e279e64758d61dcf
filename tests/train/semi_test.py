"""Semi-supervised (ARCO) fine-tuning: real runs on the phantom.

A run checkpoints its EMA teacher beside the student and resumes bit for bit;
the teacher follows its update rule; batches pair labelled patches with
patches of the split's other images only; bad settings fail by key.
"""
import json
import jax
import numpy as np
import pytest

from conftest import resume_after_kill, saved_state, smoke_config
from medclr import errors
from medclr.evaluate import evaluate
from medclr.train import finetune
from medclr.train.arco import step as semi_steps

STEPS, KILLED_AFTER = 4, 2


def _config(data_dir, **overrides):
  return smoke_config(
      "finetune_unet", data_dir, **{
          "semi.mode": "arco", "semi.num_queries": 16,
          "semi.num_negatives": 32, "semi.representation_dim": 8,
          "semi.confidence": 0.5, "num_steps": STEPS, "checkpoint_every": 1,
          "keep_checkpoints": 10, "async_checkpoints": False, **overrides})


@pytest.fixture(scope="module")
def semi_run(tmp_path_factory, phantom_data_dir):
  workdir = tmp_path_factory.mktemp("semi") / "full"
  finetune.train_and_evaluate(_config(phantom_data_dir), str(workdir))
  return workdir


def test_resume_restores_teacher_and_matches_uninterrupted_run(
    semi_run, tmp_path, phantom_data_dir):
  want = resume_after_kill(
      semi_run, tmp_path / "killed", KILLED_AFTER,
      lambda w: finetune.train_and_evaluate(_config(phantom_data_dir), w))
  assert "teacher" in want["aux"] and "representation" in want["params"]


def test_teacher_is_the_warmed_up_average_of_the_student(semi_run):
  decay = _config("unused").semi.teacher_decay
  before, _ = saved_state(semi_run, STEPS - 1)
  after, _ = saved_state(semi_run, STEPS)
  m = float(np.minimum(decay, STEPS / (STEPS + 9)))  # update STEPS - 1
  want = jax.tree.map(lambda t, p: t + (1 - m) * (p - t),
                      before["aux"]["teacher"], after["params"])
  for w, g in zip(jax.tree.leaves(want),
                  jax.tree.leaves(after["aux"]["teacher"])):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
  moved = [not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(before["aux"]["teacher"]),
      jax.tree.leaves(after["aux"]["teacher"]))]
  assert any(moved)


def test_logs_its_losses_and_evaluates_without_the_embedding_head(semi_run):
  with open(semi_run / "metrics.jsonl") as f:
    last = [json.loads(line) for line in f][-1]
  for key in ("sup_loss", "unsup_loss", "contrast_loss",
              "confident_fraction"):
    assert np.isfinite(last[key])
  assert last["contrast_loss"] > 0
  result = evaluate.evaluate(str(semi_run), save_predictions=False)
  assert 0.0 <= result["summary"]["dice"]["mean"] <= 1.0


def test_unlabelled_patches_come_from_the_other_images(tmp_path,
                                                        phantom_data_dir):
  config = _config(phantom_data_dir)
  config.data.labeled = "phantom0_0004,phantom0_0018"
  data = finetune.make_data_iter(config, str(tmp_path), local_batch=8)
  batch = next(data)
  assert batch["unlabeled_image"].shape == batch["image"].shape
  assert batch["unlabeled_weight"].shape == batch["mask"].shape
  assert "mask" not in {k.replace("unlabeled_", "") for k in batch
                        if k.startswith("unlabeled_")}
  with open(tmp_path / "labeled.json") as f:
    assert json.load(f)["stems"] == ["phantom0_0004", "phantom0_0018"]


def test_rampup_starts_near_zero_and_reaches_one():
  assert float(semi_steps.rampup(0, 100)) == pytest.approx(np.exp(-5))
  assert float(semi_steps.rampup(100, 100)) == 1.0
  assert float(semi_steps.rampup(0, 0)) == 1.0


@pytest.mark.parametrize("key, value, message", [
    ("semi.mode", "mean_teacher", "config.semi.mode"),
    ("semi.sampler", "grid", "config.semi.sampler"),
    ("semi.confidence", 0.2, "config.semi.confidence"),
    ("semi.num_queries", 3, "config.semi.num_queries"),
    ("optim.ema_decay", 0.99, "config.optim.ema_decay"),
])
def test_bad_settings_name_the_key(phantom_data_dir, key, value, message):
  with pytest.raises(errors.ConfigError, match=message):
    finetune.validate_config(_config(phantom_data_dir, **{key: value}))
