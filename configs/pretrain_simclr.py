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
import ml_collections

from configs import common


def basic_views(config):
  # On the phantom, strong SimCLR views are indistinguishable across images
  # and the embedding collapses (watch embedding_std); basic views learn.
  # An explicit `preset=` still wins.
  config.augment.preset = "basic_medical"


PROFILES = common.extend(common.PRETRAIN_PROFILES, demo=(basic_views,))


def get_config(arg=None):
  """SimCLR config; see the module docstring for `arg`."""
  args = common.pretrain_args(arg, PROFILES)
  return common.pretrain_config(
      "simclr", args, PROFILES, preset="simclr_strong",
      blocks=(common.canonical_head, loss_block, common.contrastive_crop))


def loss_block(config):
  # google-research/simclr `tf2/run.py`: temperature 0.1.
  config.loss = ml_collections.ConfigDict({"temperature": 0.1})
