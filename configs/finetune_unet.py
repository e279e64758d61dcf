r"""Few-label U-Net fine-tuning (docs/protocol.md section 1).

  python -m launch.finetune --config=configs/finetune_unet.py \
      --workdir=/tmp/ft_k2 --config.init.pretrain_dir=/tmp/simclr \
      --config.data.num_labeled=2 --config.data.label_seed=0

Without `init.pretrain_dir` the U-Net trains from scratch. Resume order: (1)
this workdir's latest checkpoint, (2) the encoder (and decoder, if listed in
`init.load` and saved) from `init.pretrain_dir`, (3) random init.
Arguments: `smoke` (tiny, phantom, two steps), `quick` (2-core CPU
profile), `demo` (make quickstart).
"""
import ml_collections

from configs import common

FOV_DIAMETER = 540


def get_config(arg=None):
  """Fine-tuning config; see the module docstring for `arg`."""
  args = common.parse_arg(arg, **common.profile_args(PROFILES))
  config = ml_collections.ConfigDict()
  config.data = data_block()
  config.init = ml_collections.ConfigDict({
      "pretrain_dir": "",
      # Step of the checkpoint in pretrain_dir to start from; -1: latest.
      "pretrain_checkpoint_step": -1,
      "load": "encoder",  # comma list of U-Net parts: encoder[,decoder]
      # U-Net parts (encoder, decoder, head) that get no update for the
      # first freeze_steps steps, e.g. to fit a new decoder to a pretrained
      # encoder first. BatchNorm statistics still adapt.
      "freeze": "",
      "freeze_steps": 0,
  })
  # Joint image/mask augmentation on device: flips, +-15 degree rotations,
  # and the colour, exposure and gamma changes between cameras (DRIVE k=2
  # -> STARE: +0.07 Dice on seed 0, docs/cross_camera.md).
  config.augment = ml_collections.ConfigDict(
      {"preset": "basic_medical_color", "strength": 1.0})
  config.model = common.model_config("unet2d-32")
  # Loss: pixel BCE + dice_weight x soft Dice, inside the FOV.
  config.loss = ml_collections.ConfigDict({"dice_weight": 1.0})
  config.optim = ml_collections.ConfigDict({
      "name": "adam", "learning_rate": 1e-3, "lr_scaling": "none",
      "schedule": "cosine", "warmup_steps": 50, "weight_decay": 0.0,
      "grad_clip_norm": 0.0,
      # > 0: evaluate an exponential moving average of the weights (decay
      # per step) instead of the last weights.
      "ema_decay": 0.0})
  config.semi = semi_block()
  config.batch_size = 8
  common.run_block(config, num_steps=1000, log_every=20, checkpoint_every=250)
  # window: sliding-window side (0: the crop size; -1: the whole image at
  # once, padded to the U-Net's multiple). tta: test-time augmentation,
  # mean logits over 'none', 'flips' (4 passes) or 'd4' (8) symmetries.
  # scales: comma list of input scales whose (tta) logits are averaged.
  # 'auto' scales: each image at the training FOV's scale (1 when
  # fov_diameter already resamples it there; docs/cross_camera.md).
  config.eval = ml_collections.ConfigDict(
      {"window": 0, "overlap": 0.5, "batch_size": 4, "save_predictions": True,
       "tta": "flips", "scales": "auto"})
  common.apply_profiles(config, args, PROFILES)
  return config


def data_block():
  """`config.data`: the labelled set, its label budget and preprocessing."""
  return ml_collections.ConfigDict({
      "data_dir": common.default_data_dir(),
      "dataset": "drive",
      "train_split": "train",
      "test_split": "test",
      "num_labeled": 2,
      "label_seed": 0,
      # Comma list of training image names (file stems); overrides
      # num_labeled and label_seed.
      "labeled": "",
      "crop_size": 128,
      # Where training patches go: 'uniform' (anywhere in the image) or
      # 'fov' (centres inside the field of view).
      "patch_sampling": "uniform",
      "in_channels": 3,
      "worker_count": 0,
      **common.preprocess_fields(),
      # Fundus vessels at one scale across cameras: every image resampled
      # so its field of view is this many pixels across (DRIVE's own is
      # about 540). Chosen across cameras in docs/cross_camera.md; images
      # without an aperture (EM, endoscopy, MRI) need 0.
      "fov_diameter": FOV_DIAMETER,
      # The green channel in all three inputs: it raised the cross-camera
      # Dice in every cell measured (DRIVE k=2 -> STARE 0.747 -> 0.768,
      # STARE k=2 -> DRIVE 0.675 -> 0.738, docs/cross_camera.md). Images
      # with one channel (EM, MRI) are unchanged; colour that carries the
      # object (endoscopy, dermoscopy) needs 'rgb'.
      "channels": "green",
  })


def semi_block():
  """`config.semi`: mode 'arco' adds, to every labelled batch, as many
  patches of the split's unlabelled images, an EMA teacher, pseudo-labels
  and a pixel contrastive loss (docs/methods/arco.md)."""
  return ml_collections.ConfigDict({
      "mode": "",  # '' (supervised only) or 'arco'
      "teacher_decay": 0.99,
      # Teacher pixels with max(p, 1 - p) below this get no pseudo-label.
      "confidence": 0.9,
      "unsup_weight": 1.0,
      "contrast_weight": 0.01,
      "temperature": 0.5,
      "num_queries": 256,
      "num_negatives": 512,
      "sampler": "sg",  # naive | sg | sag (medclr/train/arco/sampling.py)
      "grid": 4,
      "representation_dim": 32,
      "rampup_steps": 0,
      # Intensity-only views keep the student's pixels on the teacher's.
      "strong_preset": "chaitanya_local",
  })


def quick_run(config):
  """The 2-core CPU profile, chosen one factor at a time:
  benchmarks/results/ablation.md."""
  config.model = common.model_config("small")
  config.data.crop_size = 96
  config.batch_size = 16
  # Under 5 minutes on an idle 2-core CPU (about 0.4 s a step); 700
  # steps took 316 s and scored no better (benchmarks/results/ablation.md).
  config.num_steps = 600
  config.optim.learning_rate = 2e-3
  config.optim.warmup_steps = 30
  config.eval.window = -1
  config.semi.rampup_steps = 200


def phantom_set(config):
  config.data.dataset = "phantom"
  config.data.fov_diameter = 0  # the phantom at its own 64-128 px


def demo_run(config):
  """make quickstart: a few minutes on 2 CPU cores."""
  config.data.crop_size = 64
  config.model = common.model_config("small")
  config.num_steps = 300
  config.optim.warmup_steps = 30
  config.checkpoint_every = 100


# The pretraining profiles' `tiny_run` (model, batch, steps, no warm-up,
# intervals) is the smoke fine-tune's too.
PROFILES = {
    "quick": (quick_run,),
    "demo": (phantom_set, demo_run),
    "smoke": (phantom_set, common.setting("data.crop_size", 32),
              common.tiny_run),
}
