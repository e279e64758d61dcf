r"""Volume-aware SupCon: Chaitanya et al.'s G^D, or PCL's positions.

Method page: docs/methods/volume_supcon.md. The method
(`medclr/methods/volume_supcon.py`) contrasts slices of volumes; this file
holds two published recipes of it, and one of them is given after the colon:

* `chaitanya`: Chaitanya et al. 2020's global contrastive loss G^D
  (partition positives). Sources: krishnabits001/domain_specific_cl (TF
  1.12), train_model/pretr_encoder_global_contrastive_loss.py (flags) and
  models.py (encoder_pretrain_net, brit_cont_net); arXiv 2006.10511.
* `pcl`: two slices are positives when their relative positions in their
  volumes differ by less than `loss.threshold`. This is PCL (Zeng et al.
  2021, dewenzeng/positional_cl) and MACL's global loss L_g
  (stevezs315/MACL; MACL's pixel-level and equivariance terms are
  configs/pretrain_macl.py). Sources: positional_cl myconfig.py,
  run_script.sh, train_contrast.py, loss/contrast_loss.py; MACL pretrain.sh.

Both need a volume set (`python -m launch.prepare_volumes --name=acdc
--manual_dir=/path/to/niftis --size=192`); by default they use the
procedural `synthetic_volumes:train` set, written on first use.

  python -m launch.pretrain \
      --config=configs/pretrain_volume_supcon.py:chaitanya \
      --workdir=/tmp/chaitanya --config.data.sources=acdc:train
  python -m launch.pretrain --config=configs/pretrain_volume_supcon.py:pcl \
      --workdir=/tmp/pcl --config.data.sources=chd:train

Other arguments after the colon: `smoke` (two steps on tiny synthetic
volumes, tiny model; used by the tests), `quick` (the 2-core CPU profile:
model and view size of pretrain_simclr's quick profile so the DRIVE
fine-tune matches), `positives=` (gd, gd-, gr or pcl; the recipe's own by
default), `threshold=0.05` (of pcl positives; 0.05 is the BraTS value),
`preset=...` (augmentation preset), e.g. `:chaitanya,quick,positives=gd-`.
"""
import ml_collections

from configs import common
from medclr import errors


def chaitanya_blocks(config):
  """Views, data, head, optimiser, batch and run length of the reference."""
  # brit_cont_net + crop_batch: 100x100 crop of 192x192, brightness +-0.3,
  # contrast [0.7, 1.3] (augment.PRESETS['chaitanya_global']).
  config.augment.preset = "chaitanya_global"
  # A volume set ("name:split"); the synthetic one needs no download.
  common.volume_data(config, sources="synthetic_volumes:train",
                     # Slices are 192x192 in the paper (crop/pad after
                     # resampling); the 100x100 crops are resized back.
                     image_size=192,
                     # sample_minibatch_for_global_loss_opti: m volumes, one
                     # random slice from each of their n_parts partitions
                     # ('random' = uniform slices).
                     sampling="partition")
  # g_1: flatten -> Dense 1024 ReLU -> Dense 128 (no bias). Here global
  # average pooling replaces flatten (size-independent) and the dense layers
  # have biases (models.ProjectionHead).
  config.head = ml_collections.ConfigDict({"hidden_dim": 1024,
                                           "out_dim": 128})
  # AdamOptimizer(lr_reg=0.001), constant rate, no warm-up.
  config.optim = ml_collections.ConfigDict({
      "name": "adam", "learning_rate": 1e-3, "lr_scaling": "none",
      "schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0,
      "grad_clip_norm": 0.0})
  # bt_size 12 = 3 volumes x 4 partitions in the paper; 16 (4 volumes) here
  # so the batch splits over 8 devices and 4 partitions. 16 slices x 2 views
  # = 32 views, the number of rows the code's G^D batch actually fills.
  config.batch_size = 16
  # n_iter 10001 iterations.
  common.run_block(config, num_steps=10001, log_every=50,
                   checkpoint_every=1000)


def chaitanya_loss(config):
  """`config.loss` of the global stage (the reference's flag defaults)."""
  config.loss = ml_collections.ConfigDict({
      # global_loss_exp_no=2 (G^D) is the flags' default and the paper's
      # recommendation; 'gd-' = 1, 'gr' = 0 (SimCLR).
      "positives": "gd",
      # n_parts default 4.
      "partitions": 4,
      # temp_fac default 0.1.
      "temperature": 0.1,
      # The code's per-pair term: e^pos / (e^pos + sum over negatives).
      "form": "pairwise",
      # Chaitanya has no temperature/tau_base factor.
      "tau_base": 0.0,
      # Only used by positives='pcl' (PCL's CHD value).
      "threshold": 0.1,
  })


def pcl_blocks(config):
  """Views, data, optimiser and batch of positional_cl (MACL's too)."""
  # PCL's views are batchgenerators mirroring + (p 0.67) rotation, scaling
  # (0.7, 1.3) and elastic deformation, else a random crop; no medclr preset
  # has elastic deformation, so the nearest one (flip + rotation, no
  # intensity change) is the default.
  config.augment.preset = "basic_medical"
  # PCL trains on 512x512 CHD slices; medclr's canonical view size.
  # DataLoader(shuffle=True) over all slices.
  common.volume_data(config, sources="synthetic_volumes:train",
                     image_size=128, sampling="random")
  # SGD(lr 0.1 in run_script.sh, momentum 0.9), cosine schedule ('cos').
  # PCL also uses weight decay 1e-5, which medclr's 'sgd' does not apply.
  config.optim = ml_collections.ConfigDict({
      "name": "sgd", "learning_rate": 0.1, "momentum": 0.9,
      "lr_scaling": "none", "schedule": "cosine", "warmup_steps": 0,
      "weight_decay": 1e-5, "grad_clip_norm": 0.0})
  # run_script.sh --batch_size 32. PCL trains 300 epochs of CHD (~164k
  # steps); medclr's default budget (2000 steps) is kept.
  config.batch_size = 32


def pcl_head(config):
  # UNet2D_classification head: GAP -> Linear(512, 512) -> ReLU ->
  # Linear(512, classes=512) (run_script.sh --classes 512).
  config.head = ml_collections.ConfigDict({"hidden_dim": 512, "out_dim": 512})


def pcl_loss(config):
  """`config.loss` of PCL (and of MACL's L_g)."""
  config.loss = ml_collections.ConfigDict({
      "positives": "pcl",
      # --slice_threshold 0.1 (CHD and KiTS; BraTS 0.05; myconfig default
      # 0.05).
      "threshold": 0.1,
      # --temp 0.1 (run_script.sh, MACL pretrain.sh).
      "temperature": 0.1,
      # SupConLoss: mean log-prob over positives, denominator all k != i,
      # scaled by temperature / base_temperature (0.07).
      "form": "supcon",
      "tau_base": 0.07,
      # Only used by partition positives (GCL) and logged partitions.
      "partitions": 4,
  })


# The recipes first, so that `quick` and `smoke` shrink them.
PROFILES = {
    "chaitanya": (chaitanya_blocks, chaitanya_loss),
    "pcl": (pcl_blocks, pcl_head, pcl_loss),
    **common.VOLUME_PROFILES,
    "pcl+quick": (common.setting("head.hidden_dim", 256),
                  common.setting("head.out_dim", 256)),
}


def get_config(arg=None):
  """Volume SupCon config; see the module docstring for `arg`."""
  args = common.parse_arg(arg, **common.profile_args(PROFILES), preset="",
                          positives="", threshold=0.1)
  if args.chaitanya == args.pcl:
    raise errors.ConfigError(
        "configs/pretrain_volume_supcon.py: pass one recipe, chaitanya or "
        f"pcl, after the colon, got {arg!r}")
  # CT/MRI: 1 channel (the papers; in_channels=1 in PCL's
  # train_contrast.py); `quick` and `smoke` use 3 to hand the encoder to an
  # RGB fine-tune such as DRIVE. Chaitanya's encoder is 6 levels [16, 32,
  # 64, 128, 128, 128], PCL's initial_filter_size 32 (CHD) is medclr's
  # unet2d-32: the canonical U-Net encoder is used so fine-tuning compares
  # like with like. The recipe sets the augmentation preset.
  config = common.pretrain_config("volume_supcon", args, PROFILES, preset="",
                                  in_channels=1)
  if args.positives:
    config.loss.positives = args.positives
  config.loss.threshold = args.threshold
  return config
