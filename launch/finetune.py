r"""Launches few-label U-Net fine-tuning; the work is `medclr.train.finetune`.

  python -m launch.finetune --config=configs/finetune_unet.py \
      --workdir=/tmp/ft --config.init.pretrain_dir=/tmp/simclr \
      --config.data.num_labeled=2
"""
from launch import cli

main = cli.train_main("medclr.train.finetune", "fine-tuning")

if __name__ == "__main__":
  cli.run(main)
