"""Tests for medclr.metric_writer: JSONL, TensorBoard files, console lines."""
import json
import math
import re
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from medclr import metric_writer


def read_jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def read_tensorboard_scalars(tb_dir):
  """(tag, step, value) of every scalar in the event files, without TF.

  Each TFRecord is: uint64 length, uint32 masked CRC of the length, `length`
  bytes of a serialized Event, uint32 masked CRC of the data.
  """
  # tensorboardX as medclr imports it: without torch, whose import would
  # cost every test worker seconds at collection.
  metric_writer._tensorboardx()  # pylint: disable=protected-access
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  scalars = []
  event_files = sorted(tb_dir.glob("events.out.tfevents.*"))
  assert event_files, f"no event file in {tb_dir}"
  for path in event_files:
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      payload = data[offset + 12:offset + 12 + length]
      offset += 12 + length + 4
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        scalars.append((value.tag, event.step, value.simple_value))
  return scalars


def test_write_appends_json_lines(tmp_path):
  with metric_writer.MetricWriter(tmp_path, name="train") as writer:
    writer.write(1, {"loss": 2.5, "lr": np.float32(0.001)})
    writer.write(2, {"loss": jnp.asarray(1.25)})
  records = read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in records] == [1, 2]
  assert records[0]["loss"] == 2.5
  assert records[0]["lr"] == pytest.approx(0.001)
  assert records[1]["loss"] == 1.25
  assert all(r["name"] == "train" for r in records)
  assert records[0]["time"] <= records[1]["time"]
  assert records[0]["time"] > 1.6e9  # Unix wall time, not a perf counter.

  # A second writer (e.g. after a restart) appends instead of truncating.
  with metric_writer.MetricWriter(tmp_path, name="eval") as writer:
    writer.write(2, {"dice": 0.7})
  records = read_jsonl(tmp_path / "metrics.jsonl")
  assert len(records) == 3
  assert records[2] == {"name": "eval", "step": 2, "time": records[2]["time"],
                        "dice": 0.7}


def test_write_produces_tensorboard_scalars(tmp_path):
  writer = metric_writer.MetricWriter(tmp_path, name="train")
  writer.write(3, {"loss": 0.75})
  writer.write(4, {"loss": 0.5})
  writer.close()
  scalars = read_tensorboard_scalars(tmp_path / "tb")
  assert ("train/loss", 3, 0.75) in scalars
  assert ("train/loss", 4, 0.5) in scalars


def test_progress_line_has_speed_eta_and_four_digit_scalars(tmp_path, capsys):
  writer = metric_writer.MetricWriter(tmp_path, total_steps=100)
  first = writer.progress(10, {"loss": 0.123456})
  second = writer.progress(20, {"loss": 12345.678})
  writer.close()
  assert "step 10/100" in first
  assert "-- steps/s" in first  # No interval measured yet.
  assert "loss=0.1235" in first
  assert "step 20/100" in second
  assert re.search(r"\d[\d.e+]* steps/s", second)
  assert re.search(r"ETA \d+:\d\d:\d\d", second)
  assert "loss=1.235e+04" in second
  assert capsys.readouterr().out.splitlines() == [first, second]


def test_progress_only_prints_on_logging_steps(tmp_path, capsys):
  writer = metric_writer.MetricWriter(tmp_path, total_steps=25, log_every=10)
  printed = [step for step in range(1, 26) if writer.progress(step)]
  writer.close()
  assert printed == [10, 20, 25]
  assert [writer.should_log(s) for s in (9, 10, 25)] == [False, True, True]
  assert len(capsys.readouterr().out.splitlines()) == 3


def test_non_finite_loss_raises_with_step_and_name(tmp_path):
  writer = metric_writer.MetricWriter(tmp_path)
  writer.write(6, {"loss": 1.0}, check_finite=True)
  with pytest.raises(FloatingPointError, match=r"grad_norm=nan at step 7"):
    writer.write(7, {"loss": 1.0, "grad_norm": jnp.nan}, check_finite=True)
  with pytest.raises(FloatingPointError, match=r"loss=inf at step 8"):
    writer.progress(8, {"loss": np.inf}, check_finite=True)
  writer.close()
  # The bad step was not logged.
  assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [6]


def test_non_finite_without_check_is_logged_as_null(tmp_path):
  with metric_writer.MetricWriter(tmp_path, name="eval") as writer:
    writer.write(1, {"auc_roc": math.nan, "dice": 0.5})
  (record,) = read_jsonl(tmp_path / "metrics.jsonl")
  assert record["auc_roc"] is None
  assert record["dice"] == 0.5


def test_disabled_writer_writes_nothing_but_still_checks(tmp_path, capsys):
  workdir = tmp_path / "run"
  writer = metric_writer.MetricWriter(workdir, enabled=False, total_steps=10)
  writer.write(1, {"loss": 1.0})
  assert writer.progress(1, {"loss": 1.0}) is None
  with pytest.raises(FloatingPointError, match="loss"):
    writer.write(2, {"loss": math.nan}, check_finite=True)
  writer.close()
  assert not workdir.exists()
  assert capsys.readouterr().out == ""


def test_bad_scalars_and_closed_writer_raise(tmp_path):
  writer = metric_writer.MetricWriter(tmp_path)
  with pytest.raises(ValueError, match="'step' is reserved"):
    writer.write(1, {"step": 3})
  with pytest.raises(ValueError, match="metric 'images' must be a scalar"):
    writer.write(1, {"images": np.zeros(3)})
  writer.close()
  with pytest.raises(RuntimeError, match="closed"):
    writer.write(2, {"loss": 1.0})


def test_tensorboard_files_are_written_without_importing_torch(tmp_path):
  # torch is installed here (the bench extra); importing it through
  # tensorboardX cost every launcher about 3 CPU seconds.
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  script = (
      "import sys\n"
      "from medclr import metric_writer\n"
      f"with metric_writer.MetricWriter({str(tmp_path)!r}, name='t') as w:\n"
      "  w.write(1, {'loss': 0.5})\n"
      "print('torch' in sys.modules)\n")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True,
                       text=True, check=True)
  assert out.stdout.strip() == "False", out.stdout + out.stderr
  assert read_tensorboard_scalars(tmp_path / "tb") == [("t/loss", 1, 0.5)]
