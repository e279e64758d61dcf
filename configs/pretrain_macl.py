r"""MACL (JCL): one-stage asymmetric encoder + partial-decoder pretraining.

Method page: docs/methods/macl.md. Built on the `pcl` recipe of
configs/pretrain_volume_supcon.py (the image-level loss L_g is PCL's
position-threshold SupCon), plus the pixel loss L_d and the equivariance
term L_ER.

  python -m launch.pretrain --config=configs/pretrain_macl.py \
      --workdir=/tmp/macl --config.data.sources=isbi2012_em:train
  python -m launch.pretrain --config=configs/pretrain_macl.py:quick,volumes=0 \
      --workdir=/tmp/macl2d --config.data.sources=drive:train,hrf:train

Arguments after the colon: `smoke`, `quick` (as pretrain_volume_supcon),
`volumes=0` for a 2D pool (no slice positions: each view's only positive is
its other view, positives 'gr'), `threshold=`, `preset=`.
Sources: stevezs315/MACL train_contrast.py, network/unet2d.py, pretrain.sh.
"""
import ml_collections

from configs import common
from configs import pretrain_volume_supcon as volume_supcon

PROFILES = common.extend(common.VOLUME_PROFILES,
                         smoke=(common.setting("macl.out_dim", 16),))


def get_config(arg=None):
  """MACL config; see the module docstring for `arg`."""
  args = common.parse_arg(arg, **common.profile_args(PROFILES), preset="",
                          threshold=0.1, volumes=True)
  # PCL's recipe (volume_supcon:pcl) without its projection head: MACL has
  # its own projectors (medclr/methods/macl.py).
  config = common.pretrain_config(
      "macl", args, PROFILES, preset="basic_medical", in_channels=1,
      blocks=(volume_supcon.pcl_blocks, volume_supcon.pcl_loss, macl_block))
  config.loss.threshold = args.threshold
  config.macl.volumes = bool(args.volumes)
  if not args.volumes:
    config.loss.positives = "gr"
    config.data.sources = ("phantom:train" if args.smoke else
                           "drive:train,hrf:train")
    del config.data.sampling
  return config


def macl_block(config):
  """`config.macl`: MACL's decoder branch and loss weights."""
  config.macl = ml_collections.ConfigDict({
      # False: a 2D pool, whose views have no slice positions.
      "volumes": True,
      # scale_factor 0.25: the dominant branch sees the views downscaled.
      "scale": 0.25,
      # online_decoder(...)[1]: the second decoder block's output.
      "blocks": 2,
      # Linear(4 f, int(classes x scale_factor)) with --classes 512.
      "out_dim": 128,
      # loss_instance + alpha x loss_pixel + alpha_ER x loss_ER.
      "global_weight": 1.0, "pixel_weight": 0.5, "er_weight": 1.0,
  })
