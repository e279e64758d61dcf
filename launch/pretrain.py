r"""Launches contrastive pretraining; the work is `medclr.train.pretrain`.

  python -m launch.pretrain --config=configs/pretrain_simclr.py \
      --workdir=/tmp/simclr [--config.num_steps=500]
"""
from launch import cli

main = cli.train_main("medclr.train.pretrain", "pretraining")

if __name__ == "__main__":
  cli.run(main)
