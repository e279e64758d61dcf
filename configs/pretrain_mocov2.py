r"""MoCo v2 pretraining of the U-Net encoder (docs/methods/mocov2.md).

  python -m launch.pretrain --config=configs/pretrain_mocov2.py \
      --workdir=/tmp/mocov2 --config.data.sources=drive:train,hrf:train

Arguments after the colon: `smoke` (a couple of steps on the embedded phantom,
tiny model; used by the tests), `quick` (the 2-core CPU study profile: the
shared recipe of `common.pretrain_config`, as pretrain_simclr's `quick`),
`demo` (a few minutes on the phantom), `preset=NAME` (augmentation preset),
e.g. `--config=configs/pretrain_mocov2.py:quick,preset=basic_medical`.

Values come from facebookresearch/moco (`main_moco.py`, `moco/builder.py`,
README) unless a comment says otherwise.
"""
import ml_collections

from configs import common


def reference_optimiser(config):
  """main_moco.py's SGD, for the full-size (default) profile.

  main_moco.py: SGD lr 0.03 for batch 256, momentum 0.9, wd 1e-4 (coupled,
  as torch SGD), `--cos` cosine schedule, no warm-up. The MoCo README
  recommends the linear scaling rule for other batch sizes (lr 0.015 for
  batch 128), hence lr_scaling 'linear'. The quick/demo/smoke profiles keep
  the shared Adam recipe, so that methods are compared with the same
  optimiser.
  """
  common.reference_sgd(config)


PROFILES = common.extend(
    common.PRETRAIN_PROFILES,
    # 300 steps x 32 = 9600 keys: a 1024 queue turns over ~9 times; demo:
    # 150 steps x 16 = 2400 keys; smoke: two batches, the pointer wraps in
    # 2 steps.
    quick=(common.setting("moco.queue_size", 1024),),
    demo=(common.setting("moco.queue_size", 256),),
    smoke=(common.setting("moco.queue_size", 16),),
    default=(reference_optimiser,))


def get_config(arg=None):
  """MoCo v2 config; see the module docstring for `arg`."""
  return mocov2_config(common.pretrain_args(arg, PROFILES), "mocov2",
                       common.contrastive_crop)


def mocov2_config(args, method, *blocks):
  """MoCo v2's config for `method` (mocov2, or dira, built on it), with
  `blocks` added."""
  # aug+ of MoCo v2 (main_moco.py): RRC (0.2, 1), jitter (0.4,0.4,0.4,0.1)
  # p .8, grayscale .2, blur p .5, flip; see augment.PRESETS['mocov2'].
  return common.pretrain_config(
      method, args, PROFILES, preset="mocov2",
      blocks=(common.canonical_head, moco_blocks, *blocks))


def moco_blocks(config):
  """Head rule, loss and queue of facebookresearch/moco."""
  # Head: `--mlp` is Linear(dim_mlp, dim_mlp) -> ReLU -> Linear(dim_mlp, 128)
  # with dim_mlp the backbone width (2048 for ResNet-50). For unet2d-32 the
  # deepest width is 512, so the canonical 512 -> 128 head is MoCo's rule.
  config.loss = ml_collections.ConfigDict({
      "temperature": 0.2,  # `--moco-t 0.2` (MoCo v2 README commands).
      # MoCo v2 is asymmetric; True averages the loss over both view orders.
      "symmetric": False})
  config.moco = ml_collections.ConfigDict({
      "momentum": 0.999,  # `--moco-m` default.
      # Reference K = 65536 for 1.28 M ImageNet images and ~256 M keys seen.
      # Our pools hold tens of images and a 2000-step run sees 32 000 keys:
      # a 65536 queue would never hold only real keys and would repeat each
      # image ~1000 times as its own negative. 4096 is refreshed ~8 times per
      # run. Must be a multiple of batch_size (`assert K % batch_size == 0`).
      "queue_size": 4096,
  })
