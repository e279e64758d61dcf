r"""DINO pretraining of the U-Net encoder (docs/methods/dino.md, dino.py).

  python -m launch.pretrain --config=configs/pretrain_dino.py \
      --workdir=/tmp/dino --config.data.sources=drive:train,hrf:train

Arguments after the colon: `smoke` (a couple of steps on the embedded phantom,
tiny model; used by the tests), `quick` (the 2-core CPU DRIVE profile, same
model and global view size as pretrain_simclr quick), `multicrop=<preset>`
(the multi-crop preset: dino_default, strong, weak; it fills
config.multicrop), `preset=<augment preset>` (base preset: flips, rotation
and crop aspect ratio), e.g.
`--config=configs/pretrain_dino.py:quick,multicrop=weak`. For explicit
scales: `--config.multicrop.preset=custom
--config.multicrop.global_scale=(0.5,1.0)
--config.multicrop.local_scale=(0.1,0.5)`.

Sources: facebookresearch/dino main_dino.py (code defaults) and README;
each value says where it is from.
"""
import functools

import ml_collections

from configs import common
from medclr import errors
from medclr.augment import crop_presets


def get_config(arg=None):
  """DINO config; see the module docstring for `arg`."""
  args = common.parse_arg(arg, **common.profile_args(PROFILES), preset="",
                          multicrop="dino_default")
  if args.multicrop not in crop_presets.CROP_PRESETS:
    raise errors.ConfigError(
        f"unknown multicrop preset {args.multicrop!r} in {arg!r}; known: "
        f"{sorted(crop_presets.CROP_PRESETS)}")
  # The base preset gives flips (simclr_strong: hflip 0.5, as DINO's
  # RandomHorizontalFlip) and the crop aspect range (3/4, 4/3), torchvision's
  # RandomResizedCrop default that DINO uses. Its crop area is not used:
  # config.multicrop has the global/local scales. DINO's per-view intensity
  # (methods/dino.py _VIEW_PROBS) replaces the preset's.
  # data.image_size is the side of the 2 global crops (224 in DINO; medclr's
  # canonical 128); batch_size counts images, each gives 2 + num_local crops.
  # Its own multi-crop host crops: no ContrastiveCrop.
  return common.pretrain_config(
      "dino", args, PROFILES, preset="simclr_strong",
      blocks=(dino_blocks,
              functools.partial(multicrop_block, name=args.multicrop)))


def multicrop_block(config, name):
  """`config.multicrop`, filled from the multi-crop preset `name`."""
  preset = crop_presets.CROP_PRESETS[name]
  config.multicrop = ml_collections.ConfigDict({
      # dino_default | strong | weak | custom (medclr/augment/crop_presets.py).
      "preset": name,
      # Filled from the preset; read as given only with preset 'custom'.
      "global_scale": preset.global_scale,
      "local_scale": preset.local_scale,
      "jitter": preset.jitter,
      # main_dino.py --local_crops_number default 8 (docs/methods/dino.md).
      "num_local": 8,
      # 0: image_size * 96/224 rounded to a multiple of 2**(levels-1)
      # (48 px here), DINO's 96 px locals for 224 px globals.
      "local_size": 0,
  })


def dino_blocks(config):
  """Head, loss, teacher EMA and optimiser: main_dino.py defaults."""
  # main_dino.py defaults: --out_dim 65536, --norm_last_layer True,
  # --use_bn_in_head False; DINOHead nlayers 3, hidden 2048, bottleneck 256;
  # --freeze_last_layer 1 epoch: drive:train + hrf:train (20 + 45 images)
  # at batch 16 is 4 steps.
  config.head = ml_collections.ConfigDict({
      "hidden_dim": 2048, "bottleneck_dim": 256, "out_dim": 65536,
      "num_layers": 3, "norm_last_layer": True, "use_bn": False,
      "freeze_last_layer_steps": 4})
  # DINOLoss: student temp 0.1, center momentum 0.9. Teacher temperature:
  # README's improved recipe --teacher_temp 0.07 after a linear warm-up from
  # --warmup_teacher_temp 0.04 over --warmup_teacher_temp_epochs 30 of 300
  # (10% of the steps); the code default is 0.04 throughout.
  config.loss = ml_collections.ConfigDict({
      "student_temp": 0.1, "teacher_temp": 0.07, "warmup_teacher_temp": 0.04,
      "warmup_teacher_temp_steps": 200, "center_momentum": 0.9})
  # --momentum_teacher 0.996, cosine to 1.
  config.ema = ml_collections.ConfigDict({"base_momentum": 0.996})
  # main_dino.py defaults: AdamW, --lr 5e-4 x batch/256, --warmup_epochs 10
  # of 100 (10% of the steps), cosine to --min_lr 1e-6, --weight_decay 0.04
  # cosine to --weight_decay_end 0.4, none on biases and norms
  # (get_params_groups), --clip_grad 3.0. Deviation: clipping is by global
  # norm, DINO clips each parameter's gradient norm. DINO's ResNet-50 recipe
  # (README) is
  # --config.optim.name=sgd --config.optim.learning_rate=0.03
  # --config.optim.weight_decay=1e-4 with crops (0.14, 1) / (0.05, 0.14).
  config.optim = ml_collections.ConfigDict({
      "name": "adamw", "learning_rate": 5e-4, "lr_scaling": "linear",
      "schedule": "cosine", "warmup_steps": 200, "end_learning_rate": 1e-6,
      "weight_decay": 0.04, "weight_decay_end": 0.4,
      "weight_decay_on": "kernels", "grad_clip_norm": 3.0})


def quick_run(config):
  """DINO's part of `quick`, after the shared study profile's."""
  # CPU budget: 4 local crops (48 px) instead of 8, and K = 4096 outputs
  # instead of 65536 for a 65-image pool.
  config.multicrop.num_local = 4
  config.head.out_dim = 4096
  config.head.freeze_last_layer_steps = 2  # 1 epoch of 65 images at 32
  config.loss.warmup_teacher_temp_steps = 30  # 10% of the steps
  # A recipe for 300 steps on a CNN encoder (docs/methods/dino.md,
  # benchmarks/results/pretrain_recipes.jsonl): without BatchNorm in the
  # head the pooled CNN features give nearly the same head output for
  # every image (mean cosine 0.75 at step 0), so the centred teacher is
  # uniform within 50 steps; with it (main_dino.py's use_bn_in_head) the
  # teacher sharpens. Teacher temperature 0.04 throughout (main_dino.py's
  # code default), a faster teacher (0.99: DINO's 0.996 leaves it about
  # half at its initial weights after 300 steps) and DINO's clip 3.
  config.head.use_bn = True
  config.loss.teacher_temp = 0.04
  config.ema.base_momentum = 0.99
  config.optim.grad_clip_norm = 3.0


def smoke_run(config):
  """DINO's part of `smoke`, after the shared smoke profile's."""
  config.multicrop.num_local = 2
  config.head.hidden_dim = 32
  config.head.bottleneck_dim = 16
  config.head.out_dim = 64
  config.head.freeze_last_layer_steps = 1
  config.loss.warmup_teacher_temp_steps = 1


PROFILES = common.extend(common.PRETRAIN_PROFILES, only=("quick", "smoke"),
                         quick=(quick_run,), smoke=(smoke_run,))
