r"""Launches contrastive pretraining; the work is `medclr.pretrain`.

  python -m launch.pretrain --config=configs/pretrain_simclr.py \
      --workdir=/tmp/simclr [--config.num_steps=500]
"""
from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from launch import runner
from medclr import pretrain

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "pretraining config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "checkpoints, config and metrics go here")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  runner.start_distributed()
  last = runner.run_user_errors_clean(pretrain.train_and_evaluate,
                                      _CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:
    print(f"pretraining done: {last}")


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main)
