"""Full-resolution evaluation of a fine-tuned U-Net on a test split.

Used by `launch/evaluate.py` and by `notebooks/evaluate_checkpoint.ipynb`:
`load_for_inference` gives a predict function for any image, and `evaluate`
runs it over a split, computes the metrics inside the FOV mask, and writes
`<out_dir>/metrics.json` plus prediction PNGs.
"""
import json
import os
import time

from absl import logging
from flax import nnx
import jax
import ml_collections
import numpy as np
from PIL import Image

from medclr import checkpointing
from medclr import crops
from medclr import inference
from medclr import metrics as seg_metrics
from medclr import models
from medclr import steps
from medclr.data import sources as data_sources


class Predictor:
  """A restored U-Net: `probabilities(image)` at full resolution."""

  def __init__(self, config, params, batch_stats, graphdef, step):
    self.config = config
    self.step = step
    predict = steps.make_predict_fn(graphdef)
    self._predict = jax.jit(lambda x: predict(params, batch_stats, x))
    self.window = config.eval.window or config.data.crop_size

  def logits(self, image):
    """Sliding-window logits (H, W, K) of a float32 (H, W, C) image."""
    return inference.sliding_window_predict(
        self._predict, image, self.window, overlap=self.config.eval.overlap,
        batch_size=self.config.eval.batch_size)

  def probabilities(self, image):
    """Foreground probability (binary) or class probabilities (multi-class)."""
    logits = self.logits(image)
    if logits.shape[-1] == 1:
      return inference.foreground_probability(logits)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def load_for_inference(workdir, step=None):
  """Restores the fine-tuned U-Net of `workdir` (latest step by default)."""
  config = ml_collections.ConfigDict(checkpointing.read_config(workdir))
  if "init" not in config:
    raise checkpointing.CheckpointError(
        f"{workdir} holds a pretraining run; evaluate a fine-tuning workdir "
        "(launch.finetune --config.init.pretrain_dir=...)")
  def make_model():
    return models.make_unet(config.model, nnx.Rngs(0))
  graphdef = nnx.graphdef(nnx.eval_shape(make_model))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.eval_shape(lambda: steps.split_model(make_model())[1:])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      abstract)
  wanted = {"params": abstract[0]}
  if abstract[1]:
    wanted["batch_stats"] = abstract[1]
  restored, step = checkpointing.restore_subtrees(workdir, wanted, step)
  return Predictor(config, restored["params"], restored.get("batch_stats", {}),
                   graphdef, step)


def _image_metrics(prob, record, num_classes):
  target = np.asarray(record["mask"]).astype(np.int32)
  fov = np.asarray(record["fov"]) > 0
  if num_classes == 1:
    return seg_metrics.segmentation_metrics(prob, target, fov)
  return seg_metrics.multiclass_metrics(prob.argmax(-1), target, fov,
                                        num_classes)


def evaluate(workdir, *, split=None, out_dir=None, save_predictions=None,
             step=None):
  """Evaluates `workdir`'s U-Net on every image of the test split.

  Returns:
    dict with 'per_image' (list), 'summary' (mean/std), 'step', 'dataset'.
  """
  predictor = load_for_inference(workdir, step)
  config = predictor.config
  split = split or config.data.test_split
  out_dir = out_dir or os.path.join(workdir, "eval")
  if save_predictions is None:
    save_predictions = config.eval.save_predictions
  source = data_sources.open_split(config.data.data_dir, config.data.dataset,
                                   split)
  pred_dir = os.path.join(out_dir, "predictions")
  os.makedirs(pred_dir, exist_ok=True)
  per_image, t0 = [], time.time()
  for index in range(len(source)):
    record = source[index]
    stem = record["stem"]
    stem = stem.decode() if isinstance(stem, bytes) else str(stem)
    image = crops.to_float(np.asarray(record["image"]), config.data.in_channels)
    prob = predictor.probabilities(image)
    row = _image_metrics(prob, record, config.model.num_classes)
    row["stem"] = stem
    per_image.append(row)
    if save_predictions and config.model.num_classes == 1:
      Image.fromarray((prob * 255).round().astype(np.uint8)).save(
          os.path.join(pred_dir, f"{stem}.png"))
    logging.info("evaluated %s (%d/%d): dice %.4f", stem, index + 1,
                 len(source), row.get("dice", float("nan")))
  per_image.sort(key=lambda r: r["stem"])
  result = {"workdir": os.path.abspath(workdir), "step": predictor.step,
            "dataset": config.data.dataset, "split": split,
            "num_images": len(per_image),
            "seconds": round(time.time() - t0, 2),
            "summary": seg_metrics.summarize(per_image),
            "per_image": per_image}
  tmp = os.path.join(out_dir, "metrics.json.tmp")
  with open(tmp, "w") as f:
    json.dump(result, f, indent=2, default=float)
  os.replace(tmp, os.path.join(out_dir, "metrics.json"))
  return result
