r"""AdCo pretraining of the U-Net encoder (docs/methods/adco.md).

  python -m launch.pretrain --config=configs/pretrain_adco.py \
      --workdir=/tmp/adco --config.data.sources=drive:train,hrf:train

Arguments after the colon: `smoke` (a couple of steps on the embedded phantom,
tiny model; used by the tests), `quick` (the 2-core CPU study profile: the
shared recipe of `common.pretrain_config`, as pretrain_simclr's `quick`),
`demo` (a few minutes on the phantom), `preset=NAME` (augmentation preset).

Values come from maple-research-lab/AdCo (`ops/argparser.py`, README
commands, `training/train.py`, `training/main_worker.py`) unless a comment
says otherwise.
"""
import ml_collections

from configs import common


def reference_optimiser(config):
  """AdCo's SGD, for the full-size (default) profile.

  argparser: SGD lr 0.03 (batch 256), momentum 0.9, wd 1e-4 (coupled, as
  torch SGD), `--cos 1` cosine schedule (to lr_final 0.0006 in the code;
  optim's cosine ends at 0), no warm-up. Linear scaling (0.03 * batch / 256)
  as for MoCo v2. The quick/demo/smoke profiles keep the shared Adam
  recipe, so that methods are compared with one optimiser.
  """
  common.reference_sgd(config)


PROFILES = common.extend(
    common.PRETRAIN_PROFILES,
    # Initialisation steps: 16 of 300, 8 of 150; smoke: one initialisation
    # step, one adversarial.
    quick=(common.setting("adco.bank_size", 512),),
    demo=(common.setting("adco.bank_size", 128),),
    smoke=(common.setting("adco.bank_size", 8),),
    default=(reference_optimiser,))


def get_config(arg=None):
  """AdCo config; see the module docstring for `arg`."""
  args = common.pretrain_args(arg, PROFILES)
  # main_worker.py single-crop augmentation = MoCo v2 aug+ (RRC (0.2, 1),
  # jitter (0.4,0.4,0.4,0.1) p .8, gray .2, blur p .5, flip).
  return common.pretrain_config(
      "adco", args, PROFILES, preset="mocov2",
      blocks=(common.canonical_head, adco_blocks, common.contrastive_crop))


def adco_blocks(config):
  """Loss and adversarial memory bank of maple-research-lab/AdCo."""
  # Head: `--mlp 1` is Linear(dim_mlp, dim_mlp) -> ReLU -> Linear(dim_mlp,
  # 128), dim_mlp the backbone width (512 for unet2d-32), `--moco_dim 128`:
  # the canonical 512 -> 128 head.
  config.loss = ml_collections.ConfigDict({
      "temperature": 0.12,  # `--moco_t 0.12` (default and README).
      # `--sym 0` in the headline single-crop run (68.6%); `--sym 1` is the
      # README's symmetric variant (70.6%).
      "symmetric": False})
  config.adco = ml_collections.ConfigDict({
      "momentum": 0.999,  # `--moco_m`: EMA of the key encoder.
      # `--cluster 65536` in the reference. The bank is filled with keys
      # during the first ceil(K / batch) steps; at batch 16 a 65536 bank
      # would need 4096 steps, more than this whole run. 1024 takes 64 of
      # 2000 steps (the README also reports 8192 and 16384).
      "bank_size": 1024,
      # `--mem_t 0.02` in every README command (argparser default 0.07:
      # the commands that produced the published numbers override it).
      "bank_temperature": 0.02,
      "bank_lr": 3.0,  # `--memory_lr 3`, constant (no schedule in the code).
      "bank_momentum": 0.9,  # `args.momentum`, shared with the encoder SGD.
      "bank_weight_decay": 1e-4,  # `--mem_wd 1e-4`.
  })
