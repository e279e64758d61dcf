r"""MACL (JCL): one-stage asymmetric encoder + partial-decoder pretraining.

Method page: docs/methods/macl.md. Built on configs/pretrain_pcl.py (the
image-level loss L_g is PCL's position-threshold SupCon), plus the pixel
loss L_d and the equivariance term L_ER.

  python -m launch.pretrain --config=configs/pretrain_macl.py \
      --workdir=/tmp/macl --config.data.sources=isbi2012_em:train
  python -m launch.pretrain --config=configs/pretrain_macl.py:quick,volumes=0 \
      --workdir=/tmp/macl2d --config.data.sources=drive:train,hrf:train

Arguments after the colon: `smoke`, `quick` (as pretrain_pcl), `volumes=0`
for a 2D pool (no slice positions: each view's only positive is its other
view, positives 'gr'), `threshold=`, `preset=`.
Sources: stevezs315/MACL train_contrast.py, network/unet2d.py, pretrain.sh.
"""
import ml_collections

from configs import common
from configs import pretrain_pcl


def get_config(arg=None):
  """MACL config; see the module docstring for `arg`."""
  args = common.parse_arg(arg, smoke=False, quick=False, preset="",
                          threshold=0.1, volumes=True)
  pcl_arg = ",".join(f"{k}={v}" if not isinstance(v, bool) else k
                     for k, v in (("smoke", args.smoke), ("quick", args.quick),
                                  ("threshold", args.threshold),
                                  ("preset", args.preset))
                     if v not in (False, ""))
  config = pretrain_pcl.get_config(pcl_arg or None)
  config.method = "macl"
  del config.head  # MACL's own projectors (medclr/methods/macl.py)
  config.macl = ml_collections.ConfigDict({
      "volumes": bool(args.volumes),
      # scale_factor 0.25: the dominant branch sees the views downscaled.
      "scale": 0.25,
      # online_decoder(...)[1]: the second decoder block's output.
      "blocks": 2,
      # Linear(4 f, int(classes x scale_factor)) with --classes 512.
      "out_dim": 128,
      # loss_instance + alpha x loss_pixel + alpha_ER x loss_ER.
      "global_weight": 1.0, "pixel_weight": 0.5, "er_weight": 1.0,
  })
  if not args.volumes:
    config.loss.positives = "gr"
    config.data.sources = ("phantom:train" if args.smoke else
                           "drive:train,hrf:train")
    del config.data.sampling
  if args.smoke:
    config.macl.out_dim = 16
  return config
