r"""DiRA: MoCo v2 + restoration by the U-Net decoder + adversarial restoration.

Method page: docs/methods/dira.md.

  python -m launch.pretrain --config=configs/pretrain_dira.py \
      --workdir=/tmp/dira --config.data.sources=drive:train,hrf:train

Arguments after the colon: `smoke`, `quick`, `demo`, `preset=` (as
pretrain_mocov2). Fine-tuning loads the whole U-Net body:
`--config.init.load=encoder,decoder`.
Sources: fhaghighi/DiRA main_DiRA_moco.py (flags), trainer.py,
DiRA_models.py, transformation.py; arXiv 2204.10437.
"""
import ml_collections

from configs import common
from configs import pretrain_mocov2


def get_config(arg=None):
  """DiRA config; see the module docstring for `arg`."""
  # MoCo v2's config and profiles, without ContrastiveCrop (DiRA makes its
  # own distortions).
  config = pretrain_mocov2.mocov2_config(
      common.pretrain_args(arg, pretrain_mocov2.PROFILES), "dira")
  config.dira = ml_collections.ConfigDict({
      # --contrastive_weight 1, --mse_weight 10, --adv_weight 0.001.
      "contrast_weight": 1.0, "restore_weight": 10.0,
      "adversarial_weight": 0.001,
      # Stage 1 (`--mode dir`: discriminative + restorative) runs until this
      # step, stage 2 (`--mode dira`) adds the critic: half the run here.
      "adversarial_start": config.num_steps // 2,
      # Discriminator: Adam lr 2e-4, betas (0.5, 0.999).
      "critic_lr": 2e-4,
  })
  return config
