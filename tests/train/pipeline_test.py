"""End-to-end: pretrain -> checkpoint -> fine-tune -> evaluate on the phantom.

Each stage runs the real `train_and_evaluate` on 8 fake CPU devices with the
`smoke` configs; assertions check what a user relies on between the stages.
"""
import json
import os

import jax
import numpy as np

from conftest import smoke_config
from medclr import checkpointing
from medclr import models
from medclr import optim
from medclr import sharding
from medclr.evaluate import evaluate
from medclr.train import loop
from medclr.train import warm_start


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_pretrain_writes_checkpoint_metrics_and_config(pretrained_dir):
  rows = _read_jsonl(os.path.join(pretrained_dir, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2]
  for row in rows:
    assert np.isfinite(row["loss"]) and row["loss"] > 0
    assert 0 < row["embedding_std"] < 1
    assert "lr" in row
  assert os.listdir(os.path.join(pretrained_dir, "tb"))
  assert checkpointing.read_config(pretrained_dir)["method"] == "simclr"
  shapes, step = checkpointing.saved_tree_shapes(pretrained_dir)
  assert step == 2
  assert "encoder" in shapes["params"] and "projector" in shapes["params"]


def _fresh_unet_state(config):
  mesh = sharding.make_mesh(-1)
  tx, _ = optim.make_optimizer(config.optim, config.num_steps,
                               config.batch_size)
  with jax.set_mesh(mesh):
    _, abstract, init_fn = loop.init_state(
        lambda rngs: models.make_unet(config.model, rngs), tx, mesh,
        config.seed)
    return abstract, init_fn()


def test_pretrained_encoder_arrives_unchanged_in_unet(phantom_data_dir,
                                                      pretrained_dir):
  config = smoke_config("finetune_unet", phantom_data_dir,
                        **{"init.pretrain_dir": pretrained_dir})
  abstract, state = _fresh_unet_state(config)
  before_decoder = jax.device_get(state["params"]["decoder"])
  state, step = warm_start.init_from_pretrained(state, abstract, config.init)
  assert step == 2
  saved, _ = checkpointing.restore_subtrees(
      pretrained_dir,
      {"params": {"encoder": abstract["params"]["encoder"]},
       "batch_stats": {"encoder": abstract["batch_stats"]["encoder"]}})
  got = jax.device_get(state["params"]["encoder"])
  want = jax.device_get(saved["params"]["encoder"])
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(state["batch_stats"]["encoder"]),
               jax.device_get(saved["batch_stats"]["encoder"]))
  # The encoder really changed from its random init, the decoder did not.
  fresh = jax.device_get(_fresh_unet_state(config)[1]["params"]["encoder"])
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(fresh), jax.tree.leaves(got)))
  jax.tree.map(np.testing.assert_array_equal, before_decoder,
               jax.device_get(state["params"]["decoder"]))


def test_finetune_then_evaluate_full_resolution(finetuned_dir,
                                                phantom_data_dir):
  labeled = json.load(open(os.path.join(finetuned_dir, "labeled.json")))
  assert len(labeled["stems"]) == smoke_config(
      "finetune_unet", phantom_data_dir).data.num_labeled
  result = evaluate.evaluate(finetuned_dir)
  assert result["num_images"] > 0 and result["step"] == 2
  for row in result["per_image"]:
    for key in ("dice", "iou", "auc_roc", "sensitivity", "specificity",
                "accuracy"):
      assert key in row
    assert 0 <= row["dice"] <= 1 and 0 <= row["accuracy"] <= 1
  assert "dice" in result["summary"]
  saved = json.load(open(os.path.join(finetuned_dir, "eval", "metrics.json")))
  assert saved["num_images"] == result["num_images"]
  preds = os.listdir(os.path.join(finetuned_dir, "eval", "predictions"))
  assert len(preds) == result["num_images"]
  # Predictions keep the full resolution of the test image (no resizing).
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from medclr.data import sources  # pylint: disable=g-import-not-at-top
  source = sources.open_split(phantom_data_dir, "phantom", "test")
  record = source[0]
  stem = record["stem"]
  stem = stem.decode() if isinstance(stem, bytes) else stem
  pred = np.asarray(Image.open(os.path.join(finetuned_dir, "eval",
                                            "predictions", f"{stem}.png")))
  assert pred.shape == np.asarray(record["mask"]).shape


def _raw_params(workdir, step):
  """params of `<workdir>/checkpoints/<step>/state`, read with plain Orbax
  (not through medclr.checkpointing)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  state = ocp.PyTreeCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(step), "state"))
  return jax.device_get(state["params"])


def test_launch_finetune_starts_from_the_pretrained_encoder(
    tmp_path, phantom_data_dir, pretrained_dir):
  """A real `launch.finetune` with learning rate 0: the encoder in its first
  checkpoint is the pretrained one, leaf for leaf."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import REPO_ROOT  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "ft"
  result = subprocess.run(
      [sys.executable, "-m", "launch.finetune",
       "--config=configs/finetune_unet.py:smoke", f"--workdir={workdir}",
       f"--config.data.data_dir={phantom_data_dir}",
       f"--config.init.pretrain_dir={pretrained_dir}",
       "--config.optim.learning_rate=0", "--config.num_steps=1"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-3000:]
  got = _raw_params(workdir, 1)["encoder"]
  want = _raw_params(pretrained_dir, 2)["encoder"]
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  bad = subprocess.run(
      [sys.executable, "-m", "launch.finetune",
       "--config=configs/finetune_unet.py:smoke",
       f"--workdir={tmp_path / 'bad'}",
       f"--config.data.data_dir={phantom_data_dir}",
       f"--config.init.pretrain_dir={pretrained_dir}",
       "--config.init.pretrain_checkpoint_step=7"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert bad.returncode == 1
  assert "error: checkpoint step 7 not found" in bad.stderr
  assert not (tmp_path / "bad").exists()
