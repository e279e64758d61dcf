r"""Evaluates a fine-tuned U-Net at full resolution on the test split.

  python -m launch.evaluate --workdir=/tmp/ft [--split=test] [--step=N]

Writes <workdir>/eval/metrics.json and prediction PNGs, prints a table.
"""
from absl import app
from absl import flags

from launch import runner
from medclr import evaluate
from medclr import metrics

_WORKDIR = flags.DEFINE_string("workdir", None, "a fine-tuning workdir")
_SPLIT = flags.DEFINE_string("split", None, "split to evaluate (config's "
                             "test split by default)")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (latest if unset)")
_OUT = flags.DEFINE_string("out_dir", None, "default <workdir>/eval")
flags.mark_flags_as_required(["workdir"])
SHOWN = ("dice", "iou", "auc_roc", "sensitivity", "specificity", "accuracy",
         "mean_dice", "mean_iou")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  result = runner.run_user_errors_clean(
      lambda: evaluate.evaluate(_WORKDIR.value, split=_SPLIT.value,
                                out_dir=_OUT.value, step=_STEP.value))
  print(f"{result['dataset']}/{result['split']}: {result['num_images']} images,"
        f" checkpoint step {result['step']}")
  shown = {k: v for k, v in result["summary"].items() if k in SHOWN}
  print(metrics.format_table({result["split"]: shown}))


if __name__ == "__main__":
  app.run(main)
