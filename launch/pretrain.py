r"""Launches contrastive pretraining; the work is `medclr.train.pretrain`.

  python -m launch.pretrain --config=configs/pretrain_simclr.py \
      --workdir=/tmp/simclr [--config.num_steps=500]
"""
from launch import cli
from medclr.train import pretrain

main = cli.train_main(pretrain.train_and_evaluate, "pretraining")

if __name__ == "__main__":
  cli.run(main)
