r"""Launches few-label U-Net fine-tuning; the work is `medclr.train.finetune`.

  python -m launch.finetune --config=configs/finetune_unet.py \
      --workdir=/tmp/ft --config.init.pretrain_dir=/tmp/simclr \
      --config.data.num_labeled=2
"""
from launch import runner
from medclr.train import finetune

main = runner.train_main(finetune.train_and_evaluate, "fine-tuning")

if __name__ == "__main__":
  runner.run(main)
