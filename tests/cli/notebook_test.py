"""The evaluation notebook, executed top to bottom on a smoke fine-tuning run.

It reads the evaluation `launch.evaluate` wrote for the checkpoint instead of
predicting again, views another prepared set with `DATASET`, and draws the
overlays with a legend of their colours.
"""
import json
import shutil

import nbclient
import nbformat
import numpy as np
from PIL import Image
import pytest

from conftest import LIBRARY_LINE
from conftest import REPO_ROOT
from medclr.data import prepare
from medclr.data import sources
from medclr.evaluate import evaluate

NOTEBOOK = REPO_ROOT / "notebooks" / "evaluate_checkpoint.ipynb"
LEGEND = "legend: true positive, false positive, false negative"


@pytest.fixture
def workdir(finetuned_dir, tmp_path):
  """A copy of the smoke run without evaluations (other tests evaluate it)."""
  copy = tmp_path / "finetune"
  shutil.copytree(finetuned_dir, copy, ignore=shutil.ignore_patterns("eval*"))
  return copy


def _execute(monkeypatch, **settings):
  """Runs the notebook with MEDCLR_NOTEBOOK_<KEY> settings; its text output.

  The kernel inherits the environment, which also keeps it on CPU.
  """
  for key, value in settings.items():
    monkeypatch.setenv(f"MEDCLR_NOTEBOOK_{key}", str(value))
  monkeypatch.setenv("MEDCLR_NOTEBOOK_NUM_SHOWN", "2")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(
      notebook, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
  outputs = [out for cell in notebook.cells if cell.cell_type == "code"
             for out in cell.get("outputs", [])]
  assert not [out for out in outputs if out.output_type == "error"]
  text = "".join(out.get("text", "") for out in outputs)
  # Orbax's and absl's lines go to the run's log.txt, as in the launchers.
  assert not [line for line in text.splitlines() if LIBRARY_LINE.search(line)]
  return text


def _outcome_pixels(path):
  """Pixels of the saved figure, below its legend, in an overlay colour
  (one channel near full, the others near zero): a vessel tree drawn in
  green, red and blue covers thousands; a black overlay none."""
  with Image.open(path) as figure:
    rgb = np.asarray(figure.convert("RGB")).astype(int)
  below_legend = rgb[rgb.shape[0] // 8:]
  full, off = below_legend >= 200, below_legend <= 60
  return int(((full.sum(-1) == 1) & (off.sum(-1) == 2)).sum())


def test_reuses_the_evaluation_of_the_checkpoint(workdir, monkeypatch):
  evaluate.evaluate(str(workdir))  # what `launch.evaluate --workdir` runs
  metrics = workdir / "eval" / "metrics.json"
  before = metrics.read_bytes(), metrics.stat().st_mtime_ns
  text = _execute(monkeypatch, WORKDIR=workdir)
  assert "checkpoint step 2" in text
  assert f"using {metrics} (tta " in text, text
  assert "evaluating" not in text
  assert (metrics.read_bytes(), metrics.stat().st_mtime_ns) == before
  assert "pooled over all FOV pixels" in text
  # The overlays show the evaluation's own predictions.
  assert f"overlays of 2 images: 2 from {workdir / 'eval/predictions'}" in text
  assert LEGEND in text
  assert _outcome_pixels(workdir / "eval" / "overlays.png") > 500


def test_dataset_views_another_prepared_set(workdir, tmp_path, monkeypatch):
  data_dir = tmp_path / "data"
  prepare.prepare("phantom", None, str(data_dir), name="other", num_train=1,
                  num_test=3, size=64, seed=7)
  text = _execute(monkeypatch, WORKDIR=workdir, DATASET="other",
                  DATA_DIR=data_dir)
  out_dir = workdir / "eval_other"
  assert f"viewing other/test from {data_dir}" in text
  assert f"evaluating other/test into {out_dir} (no evaluation" in text
  saved = json.loads((out_dir / "metrics.json").read_text())
  assert (saved["dataset"], saved["trained_on"]) == ("other", "phantom")
  want = sources.stems(sources.open_split(str(data_dir), "other", "test"))
  assert [row["stem"] for row in saved["per_image"]] == sorted(want)
  assert f"overlays of 2 images: 2 from {out_dir / 'predictions'}" in text
  assert LEGEND in text
  assert _outcome_pixels(out_dir / "overlays.png") > 500
  assert not (workdir / "eval").exists()  # the run's own set is not touched
