"""Full-resolution evaluation of a fine-tuned U-Net on a test split.

Used by `launch/evaluate.py` and by `notebooks/evaluate_checkpoint.ipynb`:
`load_for_inference` gives a predict function for any image, and `evaluate`
runs it over a split, computes the metrics inside the FOV mask, and writes
`<out_dir>/metrics.json` plus prediction PNGs.
"""
import json
import time

from absl import logging
from etils import epath
from flax import nnx
import jax
import ml_collections
import numpy as np
from PIL import Image

from medclr import checkpointing
from medclr import models
from medclr.data import fov as fov_lib
from medclr.data import pipeline
from medclr.data import preprocess
from medclr.data import sources as data_sources
from medclr.evaluate import adapt_bn
from medclr.evaluate import inference
from medclr.evaluate import metrics as seg_metrics


# The metrics `launch.evaluate` and the notebook print (mean +/- std).
SHOWN = ("dice", "iou", "auc_roc", "sensitivity", "specificity", "accuracy",
         "mean_dice", "mean_iou")
# Crop batches BatchNorm adaptation averages over (of the training batch
# size and crop side): 32 x 16 crops of 96 px are about a third of the
# pixels of DRIVE's 20 test images.
ADAPT_BATCHES = 32


class Predictor:
  """A restored U-Net: `probabilities(image, fov)` at full resolution.

  The image goes through the training run's `Preprocess` (FOV scale,
  normalisation) and the prediction comes back on the image's own grid.
  """

  def __init__(self, config, params, batch_stats, graphdef, step,
               preprocess_spec):
    self.config = config
    self.step = step
    self.preprocess = preprocess_spec
    self.graphdef = graphdef
    self.params = params
    self._set_batch_stats(batch_stats)
    self.window = config.eval.window or config.data.crop_size

  def _set_batch_stats(self, batch_stats):
    predict = models.make_predict_fn(self.graphdef)
    self.batch_stats = batch_stats
    self._predict = jax.jit(
        lambda x: predict(self.params, batch_stats, x))

  def adapt_batch_norm(self, images_and_fovs, num_batches=ADAPT_BATCHES):
    """Re-estimates BatchNorm statistics on unlabelled (image, fov) pairs of
    the target set (`medclr.evaluate.adapt_bn`), from batches of training-sized
    crops; weights stay as trained."""
    inputs = [self.preprocess.model_input(image, fov)
              for image, fov in images_and_fovs]
    batches = adapt_bn.random_crops(
        inputs, self.config.data.crop_size, self.config.batch_size,
        num_batches)
    self._set_batch_stats(adapt_bn.adapted_batch_stats(
        self.graphdef, self.params, self.batch_stats, batches))

  @property
  def multiple(self):
    """Side divisor the U-Net needs: 2 ** (pooling levels)."""
    return 2 ** (len(self.config.model.widths) - 1)

  def scales(self, fov):
    """Test-time input scales for an image whose native FOV mask is `fov`:
    `config.eval.scales`, or with 'auto' the FOV ratio
    (`Preprocess.test_scale`)."""
    text = str(self.config.eval.get("scales", "1"))
    if text == inference.AUTO_SCALES:
      return (self.preprocess.test_scale(fov),)
    return inference.parse_scales(text)

  def logits(self, image, fov=None):
    """Sliding-window logits (H, W, K) of an (H, W, C) uint8 or [0, 1] image.

    `fov`: its (H, W) field-of-view mask; None estimates it when the run
    normalises or resamples by FOV, or uses the automatic test scale.
    """
    if fov is None:
      fov = (np.ones(np.shape(image)[:2], np.uint8) if self._fov_unused()
             else fov_lib.estimate_fov(np.asarray(image)))
    model_image = self.preprocess.model_input(image, fov)
    scales = self.scales(fov)
    logits = sum(self._scaled_logits(model_image, s) for s in scales)
    return self.preprocess.restore(logits / len(scales), np.shape(image)[:2])

  def _fov_unused(self):
    """Whether nothing reads the FOV: no normalisation in it, no resampling
    by it and no automatic test scale."""
    auto = str(self.config.eval.get("scales", "1")) == inference.AUTO_SCALES
    return (self.preprocess.normalize == "none"
            and not self.preprocess.fov_diameter and not auto)

  def _scaled_logits(self, model_image, scale):
    """TTA logits of the image resampled by `scale`, on its own grid."""
    mode = self.config.eval.get("tta", "none")
    if scale == 1.0:
      return inference.tta_predict(self._predict_image, model_image, mode)
    size_hw = model_image.shape[:2]
    scaled = preprocess.resize_image(
        model_image.astype(np.float32),
        tuple(max(1, round(n * scale)) for n in size_hw))
    logits = inference.tta_predict(self._predict_image, scaled, mode)
    return preprocess.resize_image(logits, size_hw)

  def _predict_image(self, image):
    """Logits of one model-scale image: whole (window < 0) or by windows."""
    if self.window < 0:
      return inference.whole_image_predict(self._predict, image,
                                           self.multiple)
    return inference.sliding_window_predict(
        self._predict, image, self.window, overlap=self.config.eval.overlap,
        batch_size=self.config.eval.batch_size)

  def probabilities(self, image, fov=None):
    """Foreground probability (binary) or class probabilities (multi-class)."""
    logits = self.logits(image, fov)
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
  abstract = jax.eval_shape(lambda: models.split_model(make_model())[1:])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      abstract)
  # A run with a weight average is evaluated with the average.
  averaged = config.optim.get("ema_decay", 0.0) > 0
  wanted = ({"aux": {"ema_params": abstract[0]}} if averaged else
            {"params": abstract[0]})
  if abstract[1]:
    wanted["batch_stats"] = abstract[1]
  restored, step = checkpointing.restore_subtrees(workdir, wanted, step)
  params = restored["aux"]["ema_params"] if averaged else restored["params"]
  return Predictor(config, params, restored.get("batch_stats", {}),
                   graphdef, step, preprocess.load(workdir, config.data))


def _image_metrics(prob, record, num_classes):
  target = np.asarray(record["mask"]).astype(np.int32)
  fov = np.asarray(record["fov"]) > 0
  if num_classes == 1:
    return seg_metrics.segmentation_metrics(prob, target, fov)
  return seg_metrics.multiclass_metrics(prob.argmax(-1), target, fov,
                                        num_classes)


class _Pooled:
  """FOV pixels of every image, for metrics over the whole split at once."""

  def __init__(self):
    self.scores, self.truths = [], []

  def add(self, prob, record):
    fov = np.asarray(record["fov"]) > 0
    self.scores.append(prob[fov].astype(np.float32))
    self.truths.append(np.asarray(record["mask"])[fov] > 0)

  def metrics(self):
    return seg_metrics.segmentation_metrics(np.concatenate(self.scores),
                                            np.concatenate(self.truths))


def _scale_fields(predictor, record):
  """The image's FOV diameter (native px: its mask, or the estimate made at
  preparation for sets without one) and the model-input scale it got."""
  fov = np.asarray(record["fov"])
  diameter = fov_lib.fov_diameter(fov)
  resample = predictor.preprocess.scale(fov)
  return {"fov_diameter": round(diameter, 1),
          "scale": [round(resample * s, 4) for s in predictor.scales(fov)]}


def _predict_all(predictor, source, pred_dir, save_predictions):
  """Per-image metrics (sorted by stem) and pooled sums over a split.

  `pred_dir` is an epath.Path (a local directory or gs://...).
  """
  pred_dir.mkdir(parents=True, exist_ok=True)
  num_classes = predictor.config.model.num_classes
  per_image, pooled = [], _Pooled()
  for index in range(len(source)):
    record = source[index]
    stem = data_sources.stem_of(record)
    prob = predictor.probabilities(np.asarray(record["image"]),
                                   np.asarray(record["fov"]))
    row = _image_metrics(prob, record, num_classes)
    row.update(stem=stem, **_scale_fields(predictor, record))
    per_image.append(row)
    if num_classes == 1:
      pooled.add(prob, record)
    if save_predictions:
      with (pred_dir / f"{stem}.png").open("wb") as f:
        Image.fromarray((prob * 255).round().astype(np.uint8)).save(
            f, format="PNG")
    logging.info("evaluated %s (%d/%d): dice %.4f, FOV %.0f px, scale %s",
                 stem, index + 1, len(source), row.get("dice", float("nan")),
                 row["fov_diameter"], row["scale"])
  per_image.sort(key=lambda r: r["stem"])
  return per_image, pooled


def evaluate(workdir, *, split=None, out_dir=None, save_predictions=None,
             step=None, dataset=None, data_dir=None, tta=None, scales=None,
             adapt_bn=False):
  """Evaluates `workdir`'s U-Net on every image of a split.

  Args:
    workdir: a fine-tuning workdir (a local directory or gs://...).
    split: split to evaluate (default the config's test split).
    out_dir: where metrics.json goes (default <workdir>/eval, or
      <workdir>/eval_<dataset> for another dataset); any epath.
    save_predictions: write probability PNGs (default from the config).
    step: checkpoint step (latest by default).
    dataset: another prepared dataset to evaluate on (cross-dataset).
    data_dir: where `dataset` is prepared (default the run's data_dir).
    tta: test-time augmentation instead of the config's `eval.tta`.
    scales: input scales instead of the config's `eval.scales` ('1,1.25',
      or 'auto': from each image's FOV).
    adapt_bn: re-estimate BatchNorm statistics on the evaluated images
      (labels unused) before predicting (`medclr.evaluate.adapt_bn`).

  Returns:
    dict with 'per_image' (list), 'summary' (mean/std over images), 'pooled'
    (binary: metrics over all FOV pixels of the split), 'step', 'dataset'.
  """
  predictor = load_for_inference(workdir, step)
  config = _with_eval_flags(predictor.config, tta, scales)
  name = dataset or config.data.dataset
  split = split or config.data.test_split
  out_dir = epath.Path(
      out_dir or default_out_dir(workdir, name, config.data.dataset))
  if save_predictions is None:
    save_predictions = config.eval.save_predictions
  source = data_sources.open_split(data_dir or config.data.data_dir, name,
                                   split)
  # Test masks the model has no class for would be scored silently wrong.
  pipeline.check_mask_classes(
      source, [i for i in range(len(source)) if source[i]["has_mask"]],
      config.model.num_classes, f"{name}:{split}")
  t0 = time.time()
  if adapt_bn:
    predictor.adapt_batch_norm(
        (np.asarray(source[i]["image"]), np.asarray(source[i]["fov"]))
        for i in range(len(source)))
  binary = config.model.num_classes == 1
  per_image, pooled = _predict_all(
      predictor, source, pred_dir=out_dir / "predictions",
      save_predictions=save_predictions and binary)
  result = {"step": predictor.step, "dataset": name, "split": split,
            "tta": config.eval.get("tta", "none"),
            "scales": str(config.eval.get("scales", "1")),
            "adapt_bn": bool(adapt_bn), "trained_on": config.data.dataset,
            "num_images": len(per_image),
            "seconds": round(time.time() - t0, 2),
            "summary": seg_metrics.summarize(per_image),
            "per_image": per_image}
  if binary:
    result["pooled"] = pooled.metrics()
  _write_json(out_dir / "metrics.json", result)
  return result


def default_out_dir(workdir, dataset, trained_on):
  """Where `evaluate` writes by default: <workdir>/eval for the run's own
  dataset, <workdir>/eval_<dataset> for another (an epath.Path)."""
  suffix = "" if dataset == trained_on else f"_{dataset}"
  return epath.Path(workdir) / f"eval{suffix}"


def saved_result(out_dir, step, dataset, split):
  """The result `evaluate` wrote to `out_dir` for this checkpoint step,
  dataset and split, or None when there is none (or one of another step,
  dataset or split: stale for this checkpoint)."""
  path = epath.Path(out_dir) / "metrics.json"
  if not path.exists():
    return None
  result = json.loads(path.read_text())
  wanted = {"step": step, "dataset": dataset, "split": split}
  return result if all(result.get(k) == v for k, v in wanted.items()) else None


def _with_eval_flags(config, tta, scales):
  """`config` with the command line's evaluation flags; checked before any
  work."""
  if tta is not None:
    config.eval.tta = tta
  if scales is not None:
    config.eval.scales = scales
  inference.check_scales(config.eval.get("scales", "1"))
  return config


def _write_json(path, value):
  """Writes `value` to `path` (any epath) through a temporary file."""
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(json.dumps(value, indent=2, default=float))
  tmp.replace(path)


def format_result(result, shown):
  """`evaluate`'s result as console text: the header line, the `shown`
  metrics (mean +/- std over images) and the pooled ones."""
  lines = [f"{result['dataset']}/{result['split']}: {result['num_images']} "
           f"images, checkpoint step {result['step']} (trained on "
           f"{result['trained_on']})",
           seg_metrics.format_table({result["split"]: {
               k: v for k, v in result["summary"].items() if k in shown}})]
  if "pooled" in result:
    pooled = ", ".join(f"{k} {v:.4f}" for k, v in result["pooled"].items()
                       if k in shown)
    lines.append(f"pooled over all FOV pixels: {pooled}")
  return "\n".join(lines)
