r"""SimCLR pretraining of the U-Net encoder (docs/methods/simclr.md).

Its default model, head, loss, batch and optimiser are the canonical step of
docs/protocol.md section 2.

  python -m launch.pretrain --config=configs/pretrain_simclr.py \
      --workdir=/tmp/simclr --config.data.sources=drive:train,hrf:train

Arguments after the colon: `smoke` (a couple of steps on the embedded phantom,
tiny model; used by the tests), `quick` (the 2-core CPU study profile), `demo`
(make quickstart), `preset=basic_medical` (augmentation preset), e.g.
`--config=configs/pretrain_simclr.py:quick,preset=basic_medical`.
"""
from configs import common


def get_config(arg=None):
  """SimCLR config; see the module docstring for `arg`."""
  args = common.pretrain_args(arg)
  config = common.pretrain_config("simclr", args, preset="simclr_strong")
  # google-research/simclr `tf2/run.py`: temperature 0.1.
  config.loss.temperature = 0.1
  if args.demo and not args.preset:
    # On the phantom, strong SimCLR views are indistinguishable across images
    # and the embedding collapses (watch embedding_std); basic views learn.
    config.augment.preset = "basic_medical"
  return config
