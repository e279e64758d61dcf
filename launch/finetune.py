r"""Launches few-label U-Net fine-tuning; the work is `medclr.train.finetune`.

  python -m launch.finetune --config=configs/finetune_unet.py \
      --workdir=/tmp/ft --config.init.pretrain_dir=/tmp/simclr \
      --config.data.num_labeled=2
"""
from launch import cli


def train_and_evaluate(config, workdir):
  # Imported once the flags are parsed (launch/cli.py says why).
  from medclr.train import finetune  # pylint: disable=g-import-not-at-top
  return finetune.train_and_evaluate(config, workdir)


main = cli.train_main(train_and_evaluate, "fine-tuning")

if __name__ == "__main__":
  cli.run(main)
