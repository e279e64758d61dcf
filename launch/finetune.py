r"""Launches few-label U-Net fine-tuning; the work is `medclr.train.finetune`.

  python -m launch.finetune --config=configs/finetune_unet.py \
      --workdir=/tmp/ft --config.init.pretrain_dir=/tmp/simclr \
      --config.data.num_labeled=2
"""
from launch import cli
from medclr.train import finetune

main = cli.train_main(finetune.train_and_evaluate, "fine-tuning")

if __name__ == "__main__":
  cli.run(main)
