r"""BYOL pretraining of the U-Net encoder (docs/methods/byol.md, byol.py).

  python -m launch.pretrain --config=configs/pretrain_byol.py \
      --workdir=/tmp/byol --config.data.sources=drive:train,hrf:train

Arguments after the colon: `smoke` (a couple of steps on the embedded phantom,
tiny model; used by the tests), `quick` (the 2-core CPU DRIVE profile, same
model and view size as pretrain_simclr quick), `preset=<augment preset>` (the
base preset: host crop and geometry), `views=same` (both views use the base
preset instead of BYOL's asymmetric pair), e.g.
`--config=configs/pretrain_byol.py:quick,preset=basic_medical`.

Sources: google-deepmind/deepmind-research byol/ (configs/byol.py,
utils/augmentations.py, utils/schedules.py); each value says where it is from.
"""
import ml_collections

from configs import common

PROFILES = common.extend(
    common.PRETRAIN_PROFILES, only=("quick", "smoke"),
    smoke=(common.setting("head.predictor_hidden_dim", 32),))


def get_config(arg=None):
  """BYOL config; see the module docstring for `arg`."""
  args = common.parse_arg(arg, **common.profile_args(PROFILES), preset="",
                          views="byol_asym")
  # The base preset gives the host crop and the geometry: simclr_strong's
  # random resized crop (0.08, 1) x (3/4, 4/3) and flip p 0.5 are BYOL's
  # (augmentations.py, dataset.py). `views='byol_asym'` then replaces the
  # intensity ops per view with BYOL's asymmetric pair (methods/byol.py
  # VIEW_PAIRS): jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, blur
  # 1.0 / 0.1, solarize 0 / 0.2. `views='same'`: both views = base preset.
  # Batch 16 images, each giving two views (as pretrain_simclr); `quick` is
  # the shared study profile and optimiser (common.py). BYOL's loss has no
  # settings (no config.loss).
  config = common.pretrain_config("byol", args, PROFILES,
                                  preset="simclr_strong", blocks=(byol_blocks,))
  config.augment.views = args.views
  return config


def byol_blocks(config):
  """Head, target EMA and optimiser: deepmind-research byol/ values."""
  # configs/byol.py network_config: projector 4096 -> 256, predictor
  # 4096 -> 256 (paper values too).
  config.head = ml_collections.ConfigDict({
      "hidden_dim": 4096, "out_dim": 256, "predictor_hidden_dim": 4096})
  # tau_base 0.996: configs/byol.py _EMA_PRESETS[1000] (the paper's value);
  # its shorter presets use 0.99 (100, 300 epochs) and 0.97 (40 epochs).
  config.ema = ml_collections.ConfigDict({"base_momentum": 0.996})
  # configs/byol.py: LARS (eta 1e-3 = optax trust_coefficient default,
  # momentum 0.9), base lr x batch/256 (_LR_PRESETS: 0.45 for <= 100
  # epochs, the preset nearest our short runs), weight decay 1e-6
  # (_WD_PRESETS), 10 warm-up epochs of 100 -> 10% of the steps, cosine to
  # 0. Biases and BatchNorm parameters get neither weight decay nor LARS
  # adaptation (exclude_bias_and_norm): weight_decay_on 'kernels'.
  config.optim = ml_collections.ConfigDict({
      "name": "lars", "learning_rate": 0.45, "lr_scaling": "linear",
      "momentum": 0.9, "schedule": "cosine", "warmup_steps": 200,
      "weight_decay": 1e-6, "weight_decay_on": "kernels",
      "grad_clip_norm": 0.0})
