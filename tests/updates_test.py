"""End-to-end smoke runs really train: the first update moves parameters."""
from flax import nnx
import jax
import numpy as np

from conftest import saved_subtrees, smoke_config
from medclr import methods
from medclr import models
from medclr import steps


def _changed_leaves(before, after):
  flat_before = jax.tree_util.tree_leaves_with_path(before)
  flat_after = dict(jax.tree_util.tree_leaves_with_path(after))
  return {jax.tree_util.keystr(path): not np.allclose(leaf, flat_after[path])
          for path, leaf in flat_before}


def test_first_pretraining_update_moves_every_encoder_kernel(
    pretrained_dir, phantom_data_dir):
  config = smoke_config("pretrain_simclr", phantom_data_dir)
  model = methods.get_method(config).make_model(nnx.Rngs(config.seed))
  _, init_params, _ = steps.split_model(model)
  after_one = saved_subtrees(pretrained_dir, 1)["params"]
  changed = _changed_leaves(init_params["encoder"], after_one["encoder"])
  kernels = {k: v for k, v in changed.items() if "kernel" in k}
  assert kernels and all(kernels.values()), kernels


def test_first_finetuning_update_moves_the_decoder(finetuned_dir,
                                                   phantom_data_dir):
  config = smoke_config("finetune_unet", phantom_data_dir)
  model = models.make_unet(config.model, nnx.Rngs(config.seed))
  _, init_params, _ = steps.split_model(model)
  after_one = saved_subtrees(finetuned_dir, 1)["params"]
  changed = _changed_leaves(init_params["decoder"], after_one["decoder"])
  kernels = {k: v for k, v in changed.items() if "kernel" in k}
  assert kernels and all(kernels.values()), kernels
