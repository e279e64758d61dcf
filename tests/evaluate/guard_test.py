"""Tests for the pretraining guard: ratios, stall detection, warn and stop."""
import json
import math

import ml_collections
import pytest

from conftest import smoke_config
from medclr import errors
from medclr.evaluate import guard
from medclr.train import pretrain


def _limits(**overrides):
  values = dict(mode="stop", warmup_steps=0, patience=2)
  values.update(overrides)
  return guard.Limits(**values)


def _row(loss, chance=math.log(15), std=0.05, **extra):
  return dict(loss=loss, loss_chance=chance, embedding_std=std, **extra)


def test_at_chance_reports_after_patience_and_resets_on_progress():
  monitor = guard.Guard(_limits(mode="warn", patience=3))
  monitor.set_reference(_row(2.70))
  chance = math.log(15)
  assert monitor.observe(10, _row(chance * 1.01)) is None
  assert monitor.observe(20, _row(chance * 0.99)) is None
  report = monitor.observe(30, _row(chance))
  assert "step 30" in report and "chance level" in report
  assert "since step 10" in report
  assert monitor.observe(40, _row(chance * 0.5)) is None  # learning again
  assert monitor.observe(50, _row(chance)) is None  # streak restarted


def test_rows_get_the_ratios_they_are_judged_by():
  monitor = guard.Guard(_limits(mode="off"))
  monitor.set_reference(_row(2.7, std=0.04))
  row = _row(1.35, chance=2.7, std=0.01, teacher_entropy=4.0,
             entropy_max=8.0)
  monitor.observe(10, row)
  assert row["loss_over_chance"] == pytest.approx(0.5)
  assert row["embedding_std_rel"] == pytest.approx(0.25)
  assert row["teacher_entropy_rel"] == pytest.approx(0.5)


@pytest.mark.parametrize("row, cause", [
    (_row(1.0, std=0.001), "collapse"),
    (_row(1.0, teacher_entropy=8.3, entropy_max=math.log(4096)),
     "uniform teacher"),
])
def test_collapse_and_uniform_teacher_are_stalls(row, cause):
  monitor = guard.Guard(_limits(patience=1, mode="warn"))
  monitor.set_reference(_row(2.7, std=0.05))
  assert cause in monitor.observe(10, dict(row))


def test_warmup_steps_are_not_judged():
  monitor = guard.Guard(_limits(warmup_steps=20, patience=1))
  monitor.set_reference(_row(2.7))
  assert monitor.observe(20, _row(math.log(15))) is None
  assert monitor.observe(30, _row(math.log(15))) is not None


def test_stop_raises_with_step_cause_and_checkpoint():
  monitor = guard.Guard(_limits(patience=1))
  monitor.set_reference(_row(2.7))
  report = monitor.observe(30, _row(math.log(15)))
  with pytest.raises(errors.TrainingStalled,
                     match=r"step 30: loss .* chance level.*last checkpoint "
                     r"before the stall: step 20"):
    monitor.act(report, 20)
  with pytest.raises(errors.TrainingStalled, match="saved during the stall"):
    monitor.act(report, 30)


def test_limits_read_config_and_name_bad_fields():
  config = ml_collections.ConfigDict(
      {"num_steps": 300, "optim": {"warmup_steps": 10},
       "guard": {"mode": "warn", "warmup_steps": -1}})
  assert guard.Limits.from_config(config).warmup_steps == 30
  config.optim.warmup_steps = 50
  assert guard.Limits.from_config(config).warmup_steps == 50
  config.guard.mode = "loud"
  with pytest.raises(errors.ConfigError, match=r"config\.guard\.mode='loud'"):
    guard.Limits.from_config(config)


def _metrics(workdir):
  with open(f"{workdir}/metrics.jsonl") as f:
    return [json.loads(line) for line in f]


def test_real_run_at_chance_is_stopped(phantom_data_dir, tmp_path):
  """A huge temperature makes every similarity equal: NT-Xent = ln(2N-1)."""
  config = smoke_config(
      "pretrain_simclr", phantom_data_dir, num_steps=6,
      **{"loss.temperature": 1e4, "guard.mode": "stop",
         "guard.warmup_steps": 0, "guard.patience": 2})
  with pytest.raises(errors.TrainingStalled,
                     match=r"step 2: loss .* sits at its chance level"):
    pretrain.train_and_evaluate(config, str(tmp_path))
  rows = _metrics(tmp_path)
  assert [r["step"] for r in rows] == [1, 2]
  assert rows[-1]["loss_chance"] == pytest.approx(math.log(2 * 8 - 1))
  assert rows[-1]["loss_over_chance"] == pytest.approx(1.0, abs=1e-3)


def test_real_healthy_run_is_not_stopped(phantom_data_dir, tmp_path):
  """Identical views (preset none) are learnt in a few steps."""
  config = smoke_config(
      "pretrain_simclr", phantom_data_dir, num_steps=12,
      **{"augment.preset": "none", "optim.learning_rate": 3e-3,
         "guard.mode": "stop", "guard.warmup_steps": 4,
         "guard.patience": 2})
  pretrain.train_and_evaluate(config, str(tmp_path))
  rows = _metrics(tmp_path)
  assert rows[-1]["step"] == 12
  assert rows[-1]["loss_over_chance"] < 0.6
  reference = json.loads((tmp_path / guard.REFERENCE_FILE).read_text())
  assert reference["embedding_std"] == pytest.approx(
      rows[0]["embedding_std"])  # the first step's metrics
  resumed = guard.Guard(_limits(), tmp_path)
  assert resumed.first == reference


def test_launcher_exits_3_when_the_guard_stops(phantom_data_dir, tmp_path):
  """`launch.study` tells a stopped arm (3) from a failed run (1)."""
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import REPO_ROOT  # pylint: disable=g-import-not-at-top
  result = subprocess.run(
      [sys.executable, "-m", "launch.pretrain",
       "--config=configs/pretrain_simclr.py:smoke", f"--workdir={tmp_path}",
       f"--config.data.data_dir={phantom_data_dir}", "--config.num_steps=6",
       "--config.loss.temperature=10000", "--config.guard.mode=stop",
       "--config.guard.warmup_steps=0", "--config.guard.patience=2"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 3, result.stderr[-2000:]
  assert "sits at its chance level" in result.stderr
  assert "Traceback" not in result.stderr
