"""The quiet console: a launcher's terminal shows medclr's own lines only.

The phantom smoke path runs as a user types it (prepare, pretrain, fine-tune
from the pretrained encoder, evaluate; plus prepare_volumes and a study
report), each launcher a subprocess with real Orbax and TFDS records. At the
default verbosity no console line comes from a library; the libraries'
lines are in the run's log.txt; the first line names the run's directory
and the last stdout line names every output, each of which exists.
"""
import glob
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from conftest import LIBRARY_LINE
from conftest import named_outputs
from conftest import REPO_ROOT

ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def _launch(module, *args):
  result = subprocess.run([sys.executable, "-m", module, *map(str, args)],
                          cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600, env=ENV)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{launcher: (completed process, the directory it writes to)}."""
  tmp = tmp_path_factory.mktemp("console")
  data, pre, ft = tmp / "data", tmp / "pre", tmp / "ft"
  rows = tmp / "rows.jsonl"
  rows.touch()
  return {
      "prepare": (_launch("launch.prepare", "--dataset=phantom",
                          f"--data_dir={data}"), data),
      "prepare_volumes": (_launch("launch.prepare_volumes", "--name=synth",
                                  "--synthetic", f"--data_dir={data}"), data),
      "pretrain": (_launch("launch.pretrain",
                           "--config=configs/pretrain_simclr.py:smoke",
                           f"--workdir={pre}",
                           f"--config.data.data_dir={data}"), pre),
      "finetune": (_launch("launch.finetune",
                           "--config=configs/finetune_unet.py:smoke",
                           f"--workdir={ft}", f"--config.data.data_dir={data}",
                           f"--config.init.pretrain_dir={pre}"), ft),
      "evaluate": (_launch("launch.evaluate", f"--workdir={ft}"), ft),
      "study": (_launch("launch.study", "--config=configs/study_drive.py:smoke",
                        f"--workdir={tmp / 'study'}", "--report_only",
                        f"--results={rows}"), None),
  }


def _library_lines(text):
  return [line for line in text.splitlines() if LIBRARY_LINE.search(line)]


def test_no_library_line_reaches_the_console(runs):
  for name, (result, _) in runs.items():
    console = result.stdout + result.stderr
    assert not _library_lines(console), (name, _library_lines(console))
    # Nothing else goes to stderr on this path: no warning is due.
    assert not result.stderr.strip(), (name, result.stderr)


def test_library_lines_are_in_the_log_file(runs):
  logs = {name: pathlib.Path(directory, "log.txt").read_text()
          for name, (_, directory) in runs.items() if directory}
  for name, text in logs.items():
    assert _library_lines(text), name
    assert text.startswith("==== "), name
  assert "python -m launch.prepare --dataset=phantom" in logs["prepare"]
  # What used to fill the console: TFDS's prints and warnings, Orbax's
  # warnings on reading the pretrained checkpoint.
  assert "Downloading and preparing dataset" in logs["prepare"]
  assert "Using custom data configuration" in logs["prepare"]
  assert "Metadata file does not exist" in logs["finetune"]
  assert "read_only=True" in logs["finetune"]
  # medclr's own INFO lines are in the file too, in the same format.
  assert re.search(r"^I\d{4} .* trainer\.py:\d+\] pretrain: 2 steps",
                   logs["pretrain"], re.M)


def test_first_line_names_the_directory_and_last_line_every_output(runs):
  for name, (result, directory) in runs.items():
    lines = result.stdout.strip().splitlines()
    if directory:
      assert lines[0] == (f"[{name}] starting in {directory}; library logs "
                          f"go to {directory / 'log.txt'}"), lines[0]
    paths, log = named_outputs(lines[-1])
    assert log == (str(directory / "log.txt") if directory else ""), lines[-1]
    for path in paths:
      assert glob.glob(path), (name, path, lines[-1])
    if lines[-1].startswith(f"[{name}] outputs in "):
      # Every entry of the directory is named (the log aside).
      folder = os.path.dirname(paths[0].rstrip("/"))
      listed = {p for path in paths for p in glob.glob(path.rstrip("/"))}
      # (eval/ in the fine-tuning workdir came later, from evaluate.)
      entries = {os.path.join(folder, e) for e in os.listdir(folder)
                 if e != "log.txt" and (name, e) != ("finetune", "eval")}
      assert entries == listed, (name, lines[-1])
  assert "tb/ (tensorboard --logdir " in runs["pretrain"][0].stdout
  assert runs["evaluate"][0].stdout.strip().splitlines()[-1].startswith(
      f"[evaluate] outputs in {runs['evaluate'][1] / 'eval'}: metrics.json, "
      "predictions/ (8 files)")


def test_progress_and_results_stay_on_the_console(runs):
  pretrain = runs["pretrain"][0].stdout
  assert re.search(r"^\[pretrain\] step 2/2 \|.*ETA", pretrain, re.M)
  assert "pretraining done: " in pretrain
  evaluate = runs["evaluate"][0].stdout
  assert re.search(r"^evaluated \S+ \(8/8\): dice", evaluate, re.M)
  assert "pooled over all FOV pixels" in evaluate


def test_verbosity_brings_library_logs_back(runs):
  workdir = runs["finetune"][1]
  result = _launch("launch.evaluate", f"--workdir={workdir}",
                   "--verbosity=-1")
  library = _library_lines(result.stderr)
  assert any("Metadata file does not exist" in line for line in library)
  # Warnings and up only: no INFO line at -1.
  assert not [line for line in library if line.startswith("I")]
  assert result.stdout.strip().splitlines()[-1].startswith(
      "[evaluate] outputs in ")


def test_medclr_warnings_stay_on_the_console(tmp_path):
  # A flat grey image has no field of view to find: medclr.data.fov warns
  # and uses the whole frame; the warning is medclr's, so it is shown.
  for split in ("train", "test"):
    for folder in ("images", "masks"):
      path = tmp_path / "raw" / split / folder / "a.png"
      path.parent.mkdir(parents=True)
      Image.fromarray(np.full((32, 32), 128 if folder == "images" else 0,
                              np.uint8)).save(path)
  result = _launch("launch.prepare", "--dataset=folder", "--name=flat",
                   f"--manual_dir={tmp_path / 'raw'}",
                   f"--data_dir={tmp_path / 'data'}")
  lines = result.stderr.strip().splitlines()
  assert lines and all(line.startswith("warning: estimate_fov: ")
                       for line in lines), result.stderr
  assert not _library_lines(result.stdout + result.stderr)


def test_to_file_outside_a_launcher_keeps_library_lines_off_stderr(tmp_path):
  # A notebook: a library logs through absl before any handler exists (absl
  # then calls logging.basicConfig(), a stderr handler) and no app.run ever
  # removes it; to_file must, or every library record reaches the notebook.
  script = ("import sys\n"
            "from absl import logging\n"
            "logging.warning('before to_file')\n"
            "from medclr import console\n"
            "console.to_file(sys.argv[1])\n"
            "logging.warning('after to_file')\n"
            "logging.info('info after to_file')\n")
  result = subprocess.run([sys.executable, "-c", script, str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, env=ENV)
  assert result.returncode == 0, result.stderr
  assert result.stderr == "WARNING:absl:before to_file\n", result.stderr
  log = (tmp_path / "log.txt").read_text()
  assert "after to_file" in log and "info after to_file" in log, log
