r"""Evaluates a fine-tuned U-Net at full resolution on the test split.

  python -m launch.evaluate --workdir=/tmp/ft [--split=test] [--step=N]
  python -m launch.evaluate --workdir=/tmp/ft --dataset=stare [--data_dir=D]

Writes <workdir>/eval/metrics.json (another dataset: eval_<name>/) and
prediction PNGs, prints a table: mean and std over images, and the pooled
metrics over all field-of-view pixels of the split.
"""
from absl import flags

from launch import cli

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "a fine-tuning workdir (a local folder or gs://...)")
_SPLIT = flags.DEFINE_string("split", None, "split to evaluate (config's "
                             "test split by default)")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (latest if unset)")
_OUT = flags.DEFINE_string("out_dir", None, "default <workdir>/eval (any "
                           "epath: a local folder or gs://...)")
_DATASET = flags.DEFINE_string(
    "dataset", None, "evaluate on this prepared dataset instead of the one "
    "the run was trained on (cross-dataset)")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "where --dataset is prepared (default: the run's "
    "config.data.data_dir)")
_TTA = flags.DEFINE_enum(
    "tta", None, ["none", "flips", "d4"],
    "test-time augmentation (default: the run's config.eval.tta)")
_SCALES = flags.DEFINE_string(
    "scales", None, "input scales whose logits are averaged, e.g. '1,1.25', "
    "or 'auto' (from each image's FOV; default: the run's "
    "config.eval.scales)")
_ADAPT_BN = flags.DEFINE_bool(
    "adapt_bn", False, "re-estimate BatchNorm statistics on the evaluated "
    "images (labels unused) before predicting: test-time adaptation to "
    "another camera or scanner")
flags.mark_flags_as_required(["workdir"])


def main(_):
  # Imported once the flags are parsed (launch/cli.py says why).
  evaluate = cli.import_module("medclr.evaluate.evaluate")
  result = cli.run_user_errors_clean(
      lambda: evaluate.evaluate(_WORKDIR.value, split=_SPLIT.value,
                                out_dir=_OUT.value, step=_STEP.value,
                                dataset=_DATASET.value,
                                data_dir=_DATA_DIR.value, tta=_TTA.value,
                                scales=_SCALES.value,
                                adapt_bn=_ADAPT_BN.value))
  print(evaluate.format_result(result, evaluate.SHOWN))
  return _OUT.value or str(evaluate.default_out_dir(
      _WORKDIR.value, result["dataset"], result["trained_on"]))


if __name__ == "__main__":
  cli.run(main, log_dir=lambda: _WORKDIR.value)
