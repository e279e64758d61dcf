"""Workdir files under a gs:// workdir, and what a preempted run reports.

The gs:// tests use etils' own in-process fake, `epath.testing.mock_epath`:
every epath call on a `gs://bucket/...` path is served from a local folder,
and like an object store the fake refuses to append. A file written with
`os`/`open` instead of epath lands under a local folder named `gs:` in the
working directory, which each test checks is never made. What the fake
cannot show: gcsfs itself, credentials, latency, GCS's rate limits, and
Orbax/TensorStore's own gs:// I/O (checkpoints; not faked here).
"""
import io
import json
import math
import os
import sys

from etils import epath
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

from launch import cli
from medclr import checkpointing
from medclr import metric_writer
from medclr.data import preprocess
from medclr.evaluate import evaluate
from medclr.study import cells
from medclr.study import grid
from medclr.study import runner as study_runner
from medclr.train import finetune
from configs import study_drive

BUCKET = "gs://bucket"


class FakeGCS:
  """A gs:// bucket root in a local folder, and the calls made on it."""

  def __init__(self, root, cwd):
    self.root, self.cwd, self.calls = root, cwd, []

  def local(self, path):
    """The local file behind `path` (any other path unchanged)."""
    text = os.fspath(path)
    if text.startswith("gs://"):
      return os.fspath(self.root / text[len("gs://"):])
    return text

  def uri(self, local_text, like):
    """Back from a local file to gs:// when the query (`like`) was gs://."""
    if not os.fspath(like).startswith("gs://"):
      return local_text
    return "gs://" + os.path.relpath(local_text, self.root)

  def files(self):
    """Every file in the fake bucket, as gs:// names."""
    return sorted("gs://" + str(p.relative_to(self.root))
                  for p in self.root.rglob("*") if p.is_file())


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  root, cwd = tmp_path / "gcs", tmp_path / "cwd"
  root.mkdir()
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  fake = FakeGCS(root, cwd)

  def one_path(name):
    def fn(original, path, *args, **kwargs):
      if os.fspath(path).startswith("gs://"):
        fake.calls.append((name, os.fspath(path)))
      return original(fake.local(path), *args, **kwargs)
    return fn

  def two_paths(name):
    def fn(original, path, dst, *args, **kwargs):
      fake.calls.append((name, os.fspath(path), os.fspath(dst)))
      return original(fake.local(path), fake.local(dst), *args, **kwargs)
    return fn

  def open_(original, path, mode):
    text = os.fspath(path)
    if text.startswith("gs://"):
      fake.calls.append(("open", text, mode))
      if "a" in mode or "+" in mode:
        raise io.UnsupportedOperation(
            f"{text}: an object store cannot append or update in place "
            f"(mode {mode!r})")
      if "w" in mode:  # objects need no folders
        os.makedirs(os.path.dirname(fake.local(text)), exist_ok=True)
    return original(fake.local(text), mode)

  def glob(original, pattern):
    return [fake.uri(p, pattern) for p in original(fake.local(pattern))]

  def walk(original, top, **kwargs):
    for root_dir, dirs, files in original(fake.local(top), **kwargs):
      yield fake.uri(root_dir, top), dirs, files

  with epath.testing.mock_epath(
      open=open_, exists=one_path("exists"), isdir=one_path("isdir"),
      listdir=one_path("listdir"), makedirs=one_path("makedirs"),
      mkdir=one_path("mkdir"), remove=one_path("remove"),
      rmtree=one_path("rmtree"), stat=one_path("stat"), glob=glob,
      walk=walk, rename=two_paths("rename"), replace=two_paths("replace"),
      copy=two_paths("copy")):
    yield fake
  # Nothing went through os/open with a gs:// string.
  assert not (cwd / "gs:").exists(), sorted(
      str(p) for p in (cwd / "gs:").rglob("*"))


# -- metrics.jsonl -------------------------------------------------------------


def _rows(path):
  return [json.loads(line) for line in epath.Path(path).read_text(
  ).splitlines()]


def test_metric_writer_rewrites_whole_rows_under_gs(fake_gcs, monkeypatch,
                                                    caplog):
  run = f"{BUCKET}/run"
  rows_file = f"{run}/metrics.jsonl"
  monkeypatch.setattr(metric_writer, "REMOTE_FLUSH_SECONDS", 1e9)
  writer = metric_writer.MetricWriter(run, name="pretrain", total_steps=3)
  assert writer.remote and writer.tensorboard_dir is None
  writer.write(1, {"loss": 2.5})
  # The first row is uploaded at once; later ones wait for the interval,
  # flush() or close().
  assert [r["step"] for r in _rows(rows_file)] == [1]
  writer.write(2, {"loss": 1.5, "bad": math.nan})
  assert [r["step"] for r in _rows(rows_file)] == [1]
  writer.flush()
  assert [r["step"] for r in _rows(rows_file)] == [1, 2]
  writer.write(3, {"loss": 0.5})
  writer.close()
  rows = _rows(rows_file)
  assert [(r["name"], r["step"], r["loss"]) for r in rows] == [
      ("pretrain", 1, 2.5), ("pretrain", 2, 1.5), ("pretrain", 3, 0.5)]
  assert rows[1]["bad"] is None and rows[0]["time"] > 1.6e9
  # The same bytes in the bucket's object (read without epath).
  assert (fake_gcs.root / "bucket/run/metrics.jsonl").read_text() == (
      epath.Path(rows_file).read_text())

  # A resumed run (checkpoint at step 2) drops its later rows; a second
  # writer on the same workdir keeps its rows beside the first one's.
  resumed = metric_writer.MetricWriter(run, name="pretrain", drop_after=2)
  assert [r["step"] for r in _rows(rows_file)] == [1, 2]
  other = metric_writer.MetricWriter(run, name="eval")
  resumed.write(3, {"loss": 0.25})
  other.write(3, {"dice": 0.75})
  resumed.write(4, {"loss": 0.125})
  other.close()
  resumed.close()
  assert sorted((r["name"], r["step"]) for r in _rows(rows_file)) == [
      ("eval", 3), ("pretrain", 1), ("pretrain", 2), ("pretrain", 3),
      ("pretrain", 4)]
  assert fake_gcs.files() == [rows_file]  # no tb/ events, no temp file
  # One warning for the workdir, not one per writer.
  warnings = [r for r in caplog.records
              if "no TensorBoard events" in r.getMessage()]
  assert len(warnings) == 1 and run in warnings[0].getMessage()
  assert not any(c[0] == "open" and "a" in c[2] for c in fake_gcs.calls)


def test_local_metrics_jsonl_is_unchanged(tmp_path, monkeypatch):
  """Local workdirs: each row appended and flushed at once, byte for byte
  the format of before gs:// support, torn lines and replayed rows dropped
  on resume, TensorBoard events written."""
  monkeypatch.setattr(metric_writer.time, "time", lambda: 1700000000.5)
  path = tmp_path / "metrics.jsonl"
  writer = metric_writer.MetricWriter(str(tmp_path), name="train")
  writer.write(1, {"loss": 2.5, "lr": 0.001})
  # Flushed at once: a crash now keeps the row.
  assert path.read_text() == (
      '{"name": "train", "step": 1, "time": 1700000000.5, "loss": 2.5, '
      '"lr": 0.001}\n')
  writer.write(2, {"loss": math.inf})
  assert path.read_text().endswith(
      '{"name": "train", "step": 2, "time": 1700000000.5, "loss": null}\n')
  writer.close()
  assert list((tmp_path / "tb").glob("events.out.tfevents.*"))

  # A kill mid-write left a torn line; the resumed run (checkpoint at 1)
  # drops it and step 2, keeps other loops' rows, and appends.
  with open(path, "a", encoding="utf-8") as f:
    f.write('{"name": "eval", "step": 2, "time": 1700000000.5, "dice": 0.5}\n'
            '{"name": "train", "st')
  with metric_writer.MetricWriter(tmp_path, name="train",
                                  drop_after=1) as writer:
    writer.write(2, {"loss": 0.5})
  assert path.read_text() == (
      '{"name": "train", "step": 1, "time": 1700000000.5, "loss": 2.5, '
      '"lr": 0.001}\n'
      '{"name": "eval", "step": 2, "time": 1700000000.5, "dice": 0.5}\n'
      '{"name": "train", "step": 2, "time": 1700000000.5, "loss": 0.5}\n')
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl",
                                                        "tb"]


# -- labeled.json, preprocess.json, evaluation outputs ------------------------


def _labeled_config():
  return ml_collections.ConfigDict({
      "data": {"labeled": "", "num_labeled": 2, "label_seed": 3,
               "dataset": "phantom", "train_split": "train"},
      "model": {"num_classes": 1}})


def _records(n=4, size=8):
  rng = np.random.default_rng(0)
  return [{"stem": f"img_{i}".encode(), "has_mask": True,
           "image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
           "mask": (rng.random((size, size)) > 0.5).astype(np.uint8),
           "fov": np.ones((size, size), np.uint8)} for i in range(n)]


def test_labeled_json_round_trips_under_gs(fake_gcs, tmp_path, capsys):
  source = _records()
  indices = finetune.labeled_subset(_labeled_config(), f"{BUCKET}/ft", source)
  saved = json.loads(epath.Path(f"{BUCKET}/ft/labeled.json").read_text())
  assert saved == {"dataset": "phantom", "seed": 3,
                   "stems": [f"img_{i}" for i in indices]}
  assert fake_gcs.files() == [f"{BUCKET}/ft/labeled.json"]
  # The same bytes as a local workdir gets.
  local = tmp_path / "local_ft"
  finetune.labeled_subset(_labeled_config(), str(local), source)
  assert (local / "labeled.json").read_text() == (
      fake_gcs.root / "bucket/ft/labeled.json").read_text()
  assert "fine-tuning on 2 labelled phantom:train images" in (
      capsys.readouterr().out)


def test_preprocess_json_round_trips_under_gs(fake_gcs):
  data_cfg = ml_collections.ConfigDict({"in_channels": 1})
  run = f"{BUCKET}/ft"
  # A run without the file (older medclr) loads the default.
  assert preprocess.load(run, data_cfg) == preprocess.Preprocess(in_channels=1)
  spec = preprocess.Preprocess(
      normalize="dataset", fov_diameter=540, in_channels=3,
      dataset_stats=[[0.5, 0.25, 0.125], [0.2, 0.1, 0.05]], contrast="clahe")
  preprocess.save(run, spec)
  assert preprocess.load(run, data_cfg) == spec
  assert fake_gcs.files() == [f"{run}/preprocess.json"]  # the temp renamed


class _FakePredictor:
  """What `evaluate` needs of a restored U-Net (Orbax's gs:// restore is
  not faked): a config, a step, its preprocessing, test-time scales and
  probabilities."""

  def __init__(self, data_dir):
    self.step = 7
    self.preprocess = preprocess.Preprocess()
    self.config = ml_collections.ConfigDict({
        "data": {"dataset": "phantom", "test_split": "test",
                 "data_dir": data_dir},
        "eval": {"tta": "none", "scales": "1", "save_predictions": True},
        "model": {"num_classes": 1}})

  def scales(self, fov):
    del fov
    return (1.0,)

  def probabilities(self, image, fov):
    del fov
    return image[..., 0].astype(np.float32) / 255.0


def test_evaluation_outputs_round_trip_under_gs(fake_gcs, monkeypatch,
                                                tmp_path):
  records = _records(n=3)
  monkeypatch.setattr(evaluate, "load_for_inference",
                      lambda workdir, step=None: _FakePredictor(
                          str(tmp_path / "data")))
  monkeypatch.setattr(evaluate.data_sources, "open_split",
                      lambda data_dir, name, split: records)
  run = f"{BUCKET}/ft"
  result = evaluate.evaluate(run)
  saved = json.loads(epath.Path(f"{run}/eval/metrics.json").read_text())
  assert saved == json.loads(json.dumps(result, default=float))
  assert saved["num_images"] == 3 and saved["step"] == 7
  assert fake_gcs.files() == [f"{run}/eval/metrics.json"] + [
      f"{run}/eval/predictions/img_{i}.png" for i in range(3)]
  for i, record in enumerate(records):
    with epath.Path(f"{run}/eval/predictions/img_{i}.png").open("rb") as f:
      png = np.asarray(Image.open(f))
    np.testing.assert_array_equal(png, record["image"][..., 0])
  # Another dataset goes to eval_<name>/; --out_dir may be a URI too.
  evaluate.evaluate(run, dataset="stare")
  evaluate.evaluate(run, out_dir=f"{BUCKET}/elsewhere")
  assert {f"{run}/eval_stare/metrics.json",
          f"{BUCKET}/elsewhere/metrics.json"} <= set(fake_gcs.files())


# -- preemption: the launcher's last line, the study's check -------------------


def _save_steps(workdir, steps):
  """Real Orbax checkpoints of a tiny tree at `steps` under workdir."""
  manager = ocp.CheckpointManager(
      epath.Path(workdir) / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=10, create=True))
  for step in steps:
    manager.save(step, args=ocp.args.StandardSave({"w": np.ones(2)}))
  manager.wait_until_finished()
  manager.close()


def test_launcher_prints_done_only_for_a_finished_run(tmp_path, capsys):
  workdir = tmp_path / "run"
  _save_steps(workdir, [2, 12])
  # A step being written (Orbax's temporary name) is not a step.
  (workdir / "checkpoints" / "40.orbax-checkpoint-tmp-1").mkdir()
  # Nor is one set aside as unreadable (docs/reliability.md).
  (workdir / "checkpoints" / "50.unreadable").mkdir()
  assert checkpointing.latest_complete_step(str(workdir)) == 12
  # Preempted at 12 of 40: the loop's 'preempted' line stays the last.
  assert not cli.print_result("pretraining", {"loss": 1.0},
                                        str(workdir), 40)
  assert capsys.readouterr().out == ""
  assert cli.print_result("pretraining", {"loss": 1.0},
                                    str(workdir), 12)
  assert capsys.readouterr().out == "pretraining done: {'loss': 1.0}\n"
  assert checkpointing.latest_complete_step(str(tmp_path / "none")) is None


def _fake_training(workdir, step, num_steps):
  """A child that ends as a preempted (or finished) training run: config,
  a checkpoint step directory, the loop's line, exit status 0."""
  code = (
      "import json, pathlib, sys; w = pathlib.Path(sys.argv[1]); "
      "(w / 'checkpoints' / sys.argv[2]).mkdir(parents=True); "
      "(w / 'config.json').write_text(json.dumps({'num_steps': "
      "int(sys.argv[3])})); print(f'preempted (SIGTERM): stopped after step "
      "{sys.argv[2]} of {sys.argv[3]}')")
  return [sys.executable, "-c", code, str(workdir), str(step),
          str(num_steps)]


def test_study_stops_on_a_preempted_child_and_writes_no_row(tmp_path,
                                                           monkeypatch):
  log = tmp_path / "study.log"
  # A finished child passes; a stopped one raises, naming the steps.
  done = tmp_path / "done"
  assert cells.run(_fake_training(done, 40, 40), log, trained=done) >= 0
  stopped = tmp_path / "stopped"
  with pytest.raises(cells.Preempted, match="stopped after step 12 of 40"):
    cells.run(_fake_training(stopped, 12, 40), log, trained=stopped)
  # Still exit status 0 for the run itself; launch.study reports any
  # CommandFailed as 'error: ...' and exits 1.
  assert issubclass(cells.Preempted, cells.CommandFailed)
  (stopped / "checkpoints" / "40.unreadable").mkdir()  # set aside: no step
  assert cells.trained_steps(stopped) == (12, 40)

  config = study_drive.get_config("quick")
  config.arms = "scratch,simclr_basic_medical@large"
  config.k, config.seeds, config.all_seeds_k = "2", "0", ""
  results = tmp_path / "rows.jsonl"
  study = study_runner.Study(config, tmp_path / "w", tmp_path, results)
  study.work.mkdir()
  scratch, simclr = study.arms
  # A fine-tuning child stopped by SIGTERM: no cell row, no evaluation.
  monkeypatch.setattr(
      cells, "finetune_command",
      lambda profile, ft_dir, *args: _fake_training(ft_dir, 5, 20))
  with pytest.raises(cells.Preempted, match="stopped after step 5 of 20"):
    study.run_cell(scratch, 2, 0, None)
  # A pretraining child stopped by SIGTERM: no 'done' pretraining row, so
  # no cell fine-tunes from the unfinished encoder.
  monkeypatch.setattr(
      grid, "pretrain_command",
      lambda arm, profile, workdir, *args: _fake_training(workdir, 3, 30))
  with pytest.raises(cells.Preempted, match="stopped after step 3 of 30"):
    study.pretrain(simclr)
  assert not results.exists()
  assert "launch.evaluate" not in study.log.read_text()
