r"""PCL / MACL image-level loss: position-threshold positives.

Method page: docs/methods/volume_supcon.md.

Volume-aware SupCon (`medclr/methods/volume_supcon.py`) where two slices are
positives when their relative positions in their volumes differ by less than
`loss.threshold`. This is PCL (Zeng et al. 2021, dewenzeng/positional_cl)
and MACL's global loss L_g (stevezs315/MACL); MACL's pixel-level and
equivariance terms are not part of it. Needs a volume set (`python -m
launch.prepare_volumes --name=chd --manual_dir=/path/to/volumes`); by default
it uses the procedural `synthetic_volumes:train` set, written on first use.

  python -m launch.pretrain --config=configs/pretrain_pcl.py \
      --workdir=/tmp/pcl --config.data.sources=chd:train

Arguments after the colon: `smoke`, `quick` (as pretrain_chaitanya),
`threshold=0.05` (BraTS value), `preset=...`.

Sources read for this config: positional_cl myconfig.py, run_script.sh,
train_contrast.py, loss/contrast_loss.py; MACL pretrain.sh.
"""
import ml_collections

from configs import common


def get_config(arg=None):
  """PCL config; see the module docstring for `arg`."""
  args = common.parse_arg(arg, smoke=False, quick=False, preset="",
                          threshold=0.1)
  # PCL's views are batchgenerators mirroring + (p 0.67) rotation, scaling
  # (0.7, 1.3) and elastic deformation, else a random crop; no medclr preset
  # has elastic deformation, so the nearest one (flip + rotation, no
  # intensity change) is the default. CT/MRI: 1 channel (in_channels=1 in
  # train_contrast.py); initial_filter_size 32 (CHD) = medclr's unet2d-32
  # widths. PCL trains 300 epochs of CHD (~164k steps); medclr's default
  # budget (2000 steps) is kept.
  config = common.pretrain_config(
      "volume_supcon", args, preset="basic_medical", in_channels=1,
      blocks=pcl_blocks, volume=True)
  del config.contrastive_crop  # its own host crops (volume pipeline)
  config.loss = ml_collections.ConfigDict({
      "positives": "pcl",
      # --slice_threshold 0.1 (CHD and KiTS; BraTS 0.05; myconfig default
      # 0.05).
      "threshold": args.threshold,
      # --temp 0.1 (run_script.sh, MACL pretrain.sh).
      "temperature": 0.1,
      # SupConLoss: mean log-prob over positives, denominator all k != i,
      # scaled by temperature / base_temperature (0.07).
      "form": "supcon",
      "tau_base": 0.07,
      # Only used by partition positives (GCL) and logged partitions.
      "partitions": 4,
  })
  if args.quick:
    config.head.hidden_dim = 256
    config.head.out_dim = 256
  return config


def pcl_blocks(config):
  """Data, head, optimiser and batch of positional_cl."""
  # PCL trains on 512x512 CHD slices; medclr's canonical view size.
  # DataLoader(shuffle=True) over all slices.
  common.volume_data(config, sources="synthetic_volumes:train",
                     image_size=128, sampling="random")
  # UNet2D_classification head: GAP -> Linear(512, 512) -> ReLU ->
  # Linear(512, classes=512) (run_script.sh --classes 512).
  config.head = ml_collections.ConfigDict({"hidden_dim": 512, "out_dim": 512})
  # SGD(lr 0.1 in run_script.sh, momentum 0.9), cosine schedule ('cos').
  # PCL also uses weight decay 1e-5, which medclr's 'sgd' does not apply.
  config.optim = ml_collections.ConfigDict({
      "name": "sgd", "learning_rate": 0.1, "momentum": 0.9,
      "lr_scaling": "none", "schedule": "cosine", "warmup_steps": 0,
      "weight_decay": 1e-5, "grad_clip_norm": 0.0})
  config.batch_size = 32  # run_script.sh --batch_size 32
