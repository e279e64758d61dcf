r"""Chaitanya et al. 2020 global contrastive loss G^D.

Method page: docs/methods/volume_supcon.md.

Volume-aware SupCon (`medclr/methods/volume_supcon.py`) with Chaitanya's
partition positives. Needs a volume set (`python -m launch.prepare_volumes
--name=acdc --manual_dir=/path/to/niftis --size=192`); by default it uses the
procedural `synthetic_volumes:train` set, written on first use.

  python -m launch.pretrain --config=configs/pretrain_chaitanya.py \
      --workdir=/tmp/chaitanya --config.data.sources=acdc:train

Arguments after the colon: `smoke` (two steps on tiny synthetic volumes,
tiny model; used by the tests), `quick` (the 2-core CPU profile: model and
view size of pretrain_simclr's quick profile so the DRIVE fine-tune matches),
`positives=gd-` (or gr, gd, pcl), `preset=...` (augmentation preset).

Sources: krishnabits001/domain_specific_cl (TF 1.12), read for this config:
train_model/pretr_encoder_global_contrastive_loss.py (flags) and models.py
(encoder_pretrain_net, brit_cont_net); arXiv 2006.10511.
"""
import ml_collections

from configs import common


def get_config(arg=None):
  """Chaitanya G^D config; see the module docstring for `arg`."""
  args = common.parse_arg(arg, smoke=False, quick=False, preset="",
                          positives="gd")
  # brit_cont_net + crop_batch: 100x100 crop of 192x192, brightness +-0.3,
  # contrast [0.7, 1.3] (augment.PRESETS['chaitanya_global']).
  # MRI: 1 channel (the paper). Set 3 to hand the encoder to an RGB
  # fine-tune such as DRIVE (quick profile). The paper's encoder is 6 levels
  # [16, 32, 64, 128, 128, 128]; medclr's canonical U-Net encoder is used so
  # fine-tuning compares like with like.
  config = common.pretrain_config(
      "volume_supcon", args, preset="chaitanya_global", in_channels=1,
      blocks=chaitanya_blocks, volume=True)
  del config.contrastive_crop  # its own host crops (volume pipeline)
  config.loss = loss_block(args.positives)
  return config


def chaitanya_blocks(config):
  """Data, head, optimiser, batch and run length of the reference."""
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


def loss_block(positives):
  """`config.loss` of the global stage (the reference's flag defaults)."""
  return ml_collections.ConfigDict({
      # global_loss_exp_no=2 (G^D) is the flags' default and the paper's
      # recommendation; 'gd-' = 1, 'gr' = 0 (SimCLR).
      "positives": positives,
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
