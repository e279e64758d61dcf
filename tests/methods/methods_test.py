"""Methods are found by name and declare their facts on their class.

A toy method is added the way docs/methods/README.md tells a user to add
one: a module beside the methods, a config file beside the configs, nothing
else. Here the two files live in temporary directories appended to the
packages' `__path__` (what a module placed in medclr/methods/ amounts to);
the toy then pretrains for real, its facts reach the study grid and the
trainers' error messages, and fine-tuning with the flags the grid derives
loads its whole U-Net body. The real methods' facts are checked against
their models and doc pages.
"""
import functools
import importlib
import sys
import textwrap

from flax import nnx
import jax
import numpy as np
import pytest

import configs
from conftest import REPO_ROOT, assert_trees_equal, finetune_from_frozen
from conftest import saved_subtrees, smoke_config
from medclr import errors
from medclr import methods
from medclr import models
from medclr.study import grid
from medclr.train import pretrain

TOY_MODULE = '''
"""Toy method: the U-Net body restores the second view from the first."""
import jax.numpy as jnp

from medclr import methods
from medclr import models
from medclr.models import unet


class Toy(methods.Method):
  """Cross-view restoration (a test's method, not a good one)."""

  name = "toy"
  transfers = ("encoder", "decoder")
  contrastive_crop = False

  def make_model(self, rngs):
    return unet.UNet(**models.model_kwargs(self.config.model),
                     num_classes=self.config.model.in_channels, rngs=rngs)

  def loss(self, model, aux, views, step):
    del step
    view1, view2 = views
    loss = jnp.mean((model(view1, train=True) - view2) ** 2)
    return loss, (aux, {"restore_loss": loss})
'''
TOY_CONFIG = '''
"""The toy method with SimCLR's data, model and profiles."""
from configs import pretrain_simclr


def get_config(arg=None):
  config = pretrain_simclr.get_config(arg)
  config.method = "toy"
  return config
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  """The toy method's module and config file, found as a user's would be."""
  root = tmp_path_factory.mktemp("toy")
  for folder, name, text in (("methods", "toy.py", TOY_MODULE),
                             ("configs", "pretrain_toy.py", TOY_CONFIG)):
    (root / folder).mkdir()
    (root / folder / name).write_text(textwrap.dedent(text).lstrip())
  added = {methods: str(root / "methods"), configs: str(root / "configs")}
  for package, folder in added.items():
    package.__path__.append(folder)
  importlib.invalidate_caches()
  yield root
  for package, folder in added.items():
    package.__path__.remove(folder)
  for module in ("medclr.methods.toy", "configs.pretrain_toy"):
    sys.modules.pop(module, None)
    parent, _, child = module.rpartition(".")
    if hasattr(sys.modules[parent], child):
      delattr(sys.modules[parent], child)


@pytest.fixture(scope="module")
def toy_run(toy, phantom_data_dir, tmp_path_factory):
  """A real 2-step smoke pretraining of the toy method."""
  del toy
  workdir = tmp_path_factory.mktemp("toy_run")
  last = pretrain.train_and_evaluate(
      smoke_config("pretrain_toy", phantom_data_dir), str(workdir))
  return workdir, last


def test_toy_method_is_found_by_name(toy):
  del toy
  assert "toy" in methods.names()
  toy_class = methods.method_class("toy")
  assert toy_class.__name__ == "Toy"
  assert methods.describe(toy_class) == (
      "transfers encoder + decoder; host pipeline `two_views`; device crops "
      "yes; ContrastiveCrop no")
  with pytest.raises(errors.ConfigError, match=r"known methods are \[.*'toy'"):
    methods.method_class("toys")


@pytest.mark.slow  # A 2-step pretraining and a 2-step fine-tuning.
def test_toy_method_pretrains_and_hands_its_body_to_the_unet(
    toy_run, phantom_data_dir, tmp_path):
  workdir, last = toy_run
  assert np.isfinite(last["loss"]) and np.isfinite(last["restore_loss"])
  # Fine-tuning with the flag the study grid derives from `transfers`.
  (flag,) = grid.parse_arm("toy_simclr_strong@large").finetune_flags
  parts = flag.removeprefix("--config.init.load=")
  assert parts == "encoder,decoder"
  pretrained, tuned = finetune_from_frozen(phantom_data_dir, workdir,
                                           tmp_path / "ft", parts)
  for part in ("encoder", "decoder"):
    assert_trees_equal(tuned[part], pretrained[part])
  assert set(saved_subtrees(workdir, 2)["params"]) == {"encoder", "decoder",
                                                       "head"}


def test_toy_facts_reach_the_study_grid(toy):
  del toy
  arm = grid.parse_arm("toy_simclr_strong*0.5@large", {"large": "x:train"})
  assert grid.method_of(arm.base) is methods.method_class("toy")
  assert arm.finetune_flags == ["--config.init.load=encoder,decoder"]
  command = grid.pretrain_command(arm, "quick", "/w/p", "/d", "x:train")
  assert "--config=configs/pretrain_toy.py:quick,preset=simclr_strong" in (
      command)
  assert "--config.data.sources=x:train" in command


def test_toy_facts_reach_the_error_messages(toy, phantom_data_dir, tmp_path):
  del toy
  # The toy declares device crops (the default): DINO's refusal names it.
  dino = smoke_config("pretrain_dino", phantom_data_dir,
                      **{"data.crop_site": "device"})
  with pytest.raises(errors.ConfigError,
                     match=r"'multicrop' pipeline.*device_crops: \[.*'toy'"):
    pretrain.train_and_evaluate(dino, str(tmp_path / "dino"))
  # It declares no ContrastiveCrop: refused by name, and not among those
  # listed as taking it.
  ccrop = smoke_config("pretrain_toy", phantom_data_dir,
                       **{"contrastive_crop.mode": "ccrop"})
  with pytest.raises(errors.ConfigError,
                     match=r"method 'toy' makes its own host crops") as raised:
    pretrain.train_and_evaluate(ccrop, str(tmp_path / "ccrop"))
  assert "'simclr'" in str(raised.value) and "'toy'" not in str(
      raised.value).split("contrastive_crop:")[1]
  assert not (tmp_path / "dino").exists() and not (tmp_path / "ccrop").exists()


def test_a_method_with_wrong_facts_is_refused(toy):
  toy_file = toy / "methods" / "toy.py"
  text = toy_file.read_text()
  broken = toy / "broken"
  broken.mkdir()
  (broken / "toy_bad.py").write_text(text.replace(
      'name = "toy"', 'name = "toy_bad"\n  host_pipeline = "slices"'))
  methods.__path__.append(str(broken))
  try:
    with pytest.raises(TypeError, match="host_pipeline='slices'"):
      methods.method_class("toy_bad")
  finally:
    methods.__path__.remove(str(broken))
    sys.modules.pop("medclr.methods.toy_bad", None)


RECIPES = {"pretrain_volume_supcon": "chaitanya,"}


@functools.cache
def _method_configs():
  """{method name: a smoke config running it}, from configs/ itself."""
  found = {}
  for path in sorted((REPO_ROOT / "configs").glob("pretrain_*.py")):
    # A file of several recipes takes one after the colon (its first).
    recipe = RECIPES.get(path.stem, "")
    config = importlib.import_module(f"configs.{path.stem}").get_config(
        f"{recipe}smoke")
    found.setdefault(config.method, config)
  return found


def _unet_shapes(config):
  unet = nnx.eval_shape(lambda: models.make_unet(config.model, nnx.Rngs(0)))
  return nnx.to_pure_dict(nnx.state(unet, nnx.Param))


@pytest.mark.parametrize("name", methods.names())
def test_each_method_has_a_config_a_page_and_true_facts(name):
  """Its config file and doc page exist, the page states the class's facts,
  and the model holds what it transfers under the U-Net's parameter paths
  and shapes (a decoder pretrained in part: its deepest levels)."""
  config = _method_configs().get(name)
  assert config, f"no configs/pretrain_*.py runs method {name!r}"
  method_class = methods.class_for(config)
  page = REPO_ROOT / "docs" / "methods" / f"{name}.md"
  assert methods.describe(methods.method_class(name)) in " ".join(
      page.read_text().split()), f"{page} does not state the class's facts"
  model = nnx.eval_shape(lambda: methods.get_method(config).make_model(
      nnx.Rngs(0)))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  unet = _unet_shapes(config)
  for part in method_class.transfers:
    held = params[part]
    assert set(held) <= set(unet[part]) and held, part
    shapes = lambda tree: jax.tree.map(lambda x: x.shape, tree)
    assert shapes(held) == shapes({k: unet[part][k] for k in held}), part
  if "decoder" not in method_class.transfers:
    assert "decoder" not in params


def test_macl_facts_follow_its_volumes_setting():
  two_d = smoke_config("pretrain_macl", "unused", **{"macl.volumes": False})
  volumes = smoke_config("pretrain_macl", "unused", **{"macl.volumes": True})
  assert methods.class_for(two_d).host_pipeline == "two_views"
  assert methods.class_for(two_d).device_crops
  assert methods.class_for(volumes).host_pipeline == "volumes"
  assert not methods.class_for(volumes).device_crops
  assert methods.class_for(volumes).transfers == ("encoder", "decoder")
