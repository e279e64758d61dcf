"""The evaluation notebook runs top to bottom on a smoke fine-tuning workdir."""
import os

import nbclient
import nbformat

from conftest import REPO_ROOT


def test_evaluate_checkpoint_notebook_executes(finetuned_dir, monkeypatch):
  path = REPO_ROOT / "notebooks" / "evaluate_checkpoint.ipynb"
  notebook = nbformat.read(path, as_version=4)
  # The kernel inherits the environment: point it at the smoke workdir and
  # keep it on CPU.
  monkeypatch.setenv("MEDCLR_NOTEBOOK_WORKDIR", finetuned_dir)
  monkeypatch.setenv("MEDCLR_NOTEBOOK_NUM_SHOWN", "2")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  client = nbclient.NotebookClient(
      notebook, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": str(path.parent)}})
  client.execute()
  outputs = "".join(
      out.get("text", "") for cell in notebook.cells
      if cell.cell_type == "code" for out in cell.get("outputs", []))
  assert "checkpoint step 2" in outputs
  assert "dice" in outputs.lower()
  errors = [out for cell in notebook.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if out.output_type == "error"]
  assert not errors
  assert os.path.exists(os.path.join(finetuned_dir, "eval_notebook",
                                     "metrics.json"))
