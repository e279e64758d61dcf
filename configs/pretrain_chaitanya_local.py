r"""Chaitanya et al. 2020 local contrastive loss: the decoder stage.

Method page: docs/methods/chaitanya_local.md. The second of two launches:
it starts from a global-stage checkpoint (configs/pretrain_volume_supcon.py
with its `chaitanya` recipe, or any pretraining run with the same encoder),
freezes its encoder, and trains the deepest decoder blocks with the local
loss.

  python -m launch.pretrain --config=configs/pretrain_simclr.py:quick \
      --workdir=/tmp/global
  python -m launch.pretrain --config=configs/pretrain_chaitanya_local.py:quick \
      --workdir=/tmp/local --config.init.pretrain_dir=/tmp/global
  python -m launch.finetune --config=configs/finetune_unet.py:quick \
      --workdir=/tmp/ft --config.init.pretrain_dir=/tmp/local \
      --config.init.load=encoder,decoder

Without `init.pretrain_dir` the encoder is random and frozen (allowed, for
ablations; the console warns). Arguments after the colon: `smoke`, `quick`.
Sources: krishnabits001/domain_specific_cl,
train_model/pretr_decoder_local_contrastive_loss.py (flags) and models.py
(decoder_pretrain_net); arXiv 2006.10511.
"""
import ml_collections

from configs import common


PROFILES = common.extend(
    common.PRETRAIN_PROFILES, only=("quick", "smoke"),
    smoke=(common.setting("local.region_dim", 16),))


def get_config(arg=None):
  """Local-stage config; see the module docstring for `arg`."""
  args = common.pretrain_args(arg, PROFILES)
  # One crop per image, seen twice (no ContrastiveCrop); g_2 and the region
  # map replace the projection head (no config.head).
  config = common.pretrain_config(
      "chaitanya_local", args, PROFILES, preset="chaitanya_local",
      in_channels=3, blocks=(local_blocks,))
  # Decoder blocks trained: the reference trains 3 of its 5 (features at a
  # quarter of the input size); here all but the shallowest level.
  config.local.blocks = max(1, len(config.model.widths) - 2)
  return config


def local_blocks(config):
  """Init, local-loss, optimiser, batch and run length of the reference."""
  # Stage 2 reads stage 1's encoder and never updates it (var_list of
  # the reference's optimiser: decoder and g_2 only; BatchNorm statistics
  # still adapt).
  config.init = ml_collections.ConfigDict({
      "pretrain_dir": "", "pretrain_checkpoint_step": -1, "load": "encoder",
      "freeze": "encoder", "freeze_steps": -1})
  config.local = ml_collections.ConfigDict({
      "blocks": 3,
      # <local_reg> -> flat -> Dense 128 (no bias): wgt_en=1.
      "region_dim": 128,
      # Host crops: the fraction of the image each crop covers. Fundus
      # images: about the fine-tuning patch (96 of 565 px) at native scale.
      "crop_area": (0.03, 0.03),
  })
  config.loss = ml_collections.ConfigDict({"temperature": 0.1})  # temp_fac
  config.optim = ml_collections.ConfigDict({
      "name": "adam", "learning_rate": 1e-3, "lr_scaling": "none",
      "schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0,
      "grad_clip_norm": 0.0})
  config.batch_size = 16  # bt_size 12; 16 splits over 8 devices
  common.run_block(config, num_steps=10001, log_every=50,
                   checkpoint_every=1000)
