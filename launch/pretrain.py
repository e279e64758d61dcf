r"""Launches contrastive pretraining; the work is `medclr.train.pretrain`.

  python -m launch.pretrain --config=configs/pretrain_simclr.py \
      --workdir=/tmp/simclr [--config.num_steps=500]
"""
from launch import cli


def train_and_evaluate(config, workdir):
  # Imported once the flags are parsed (launch/cli.py says why).
  from medclr.train import pretrain  # pylint: disable=g-import-not-at-top
  return pretrain.train_and_evaluate(config, workdir)


main = cli.train_main(train_and_evaluate, "pretraining")

if __name__ == "__main__":
  cli.run(main)
