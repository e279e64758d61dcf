"""Tests for the volume-aware SupCon method (Chaitanya G^R/G^D-/G^D, PCL).

* the loss against a brute-force loop that states each variant's rules
  directly (which views are positives, negatives or ignored);
* G^R equals NT-Xent; G^D- prunes negatives exactly as Chaitanya's code;
* 1 and 8 devices give the same loss and gradients;
* positive masks on slices of the MNI152 template (nilearn wheel);
* end to end: smoke pretraining, exact resume, fine-tuning from it.
"""
import importlib
import math
import pathlib
import shutil

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import nibabel as nib
import numpy as np
import pytest

from configs import finetune_unet
from conftest import finetune_from, saved_subtrees, smoke_config
from medclr import errors
from medclr.data import volumes
from medclr.methods import losses
from medclr.methods import volume_supcon as vs
from medclr.train import pretrain

GLOBAL_BATCH = 16
DIM_IN, DIM_OUT = 6, 5


def _params(workdir, step):
  return jax.tree.leaves(saved_subtrees(workdir, step)["params"])


def _relation(a, b, partition, position, positives, threshold):
  """'pos' | 'neg' | 'ignore' for slices a, b.

  Positives as defined in docs/methods/volume_supcon.md.
  """
  if positives == "gr":  # SimCLR: only the same slice
    return "pos" if a == b else "neg"
  if positives == "gd-":  # same partition of other slices: not a negative
    if a == b:
      return "pos"
    return "ignore" if partition[a] == partition[b] else "neg"
  if positives == "gd":  # same partition index anywhere: positive
    return "pos" if partition[a] == partition[b] else "neg"
  # pcl: close positions are positives
  return "pos" if abs(position[a] - position[b]) < threshold else "neg"


def _brute_force(z1, z2, partition, position, *, positives, form,
                 temperature, threshold=0.1, tau_base=0.0):
  """One anchor and one positive at a time, float64 numpy."""
  z = np.concatenate([np.asarray(z1), np.asarray(z2)]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n = len(z1)
  partition = np.asarray(partition)
  position = np.asarray(position, np.float32).astype(np.float64)
  total = 0.0
  for i in range(2 * n):
    def e(k, i=i):
      return math.exp(z[i] @ z[k] / temperature)
    relation = {k: _relation(i % n, k % n, partition, position, positives,
                             threshold) for k in range(2 * n) if k != i}
    pos = [k for k, r in relation.items() if r == "pos"]
    neg = [k for k, r in relation.items() if r == "neg"]
    terms = []
    for p in pos:
      if form == "supcon":
        denominator = sum(e(k) for k in pos + neg)
      else:
        denominator = e(p) + sum(e(k) for k in neg)
      terms.append(-math.log(e(p) / denominator))
    total += sum(terms) / len(terms)
  scale = temperature / tau_base if tau_base else 1.0
  return scale * total / (2 * n)


def _inputs(n=8, seed=0):
  key1, key2, key3 = jax.random.split(jax.random.key(seed), 3)
  z1 = jax.random.normal(key1, (n, 4))
  z2 = z1 + 0.5 * jax.random.normal(key2, (n, 4))
  labels = {"partition": jnp.arange(n, dtype=jnp.int32) % 3,
            "position": jax.random.uniform(key3, (n,))}
  return z1, z2, labels


@pytest.mark.parametrize("positives", vs.POSITIVES)
@pytest.mark.parametrize("form", vs.FORMS)
def test_loss_matches_brute_force(positives, form):
  z1, z2, labels = _inputs()
  spec = vs.LossSpec(positives, temperature=0.2, form=form, threshold=0.3)
  loss, _ = vs.volume_supcon_reference(z1, z2, labels, spec)
  np.testing.assert_allclose(
      loss, _brute_force(z1, z2, labels["partition"], labels["position"],
                         positives=positives, form=form, temperature=0.2,
                         threshold=0.3), rtol=1e-5)


def test_forms_differ_only_with_several_positives():
  z1, z2, labels = _inputs()
  def loss(positives, form):
    return float(vs.volume_supcon_reference(
        z1, z2, labels, vs.LossSpec(positives, 0.1, form))[0])
  assert loss("gd-", "supcon") == pytest.approx(loss("gd-", "pairwise"))
  assert loss("gd", "supcon") != pytest.approx(loss("gd", "pairwise"))


@pytest.mark.parametrize("form", vs.FORMS)
def test_gr_equals_nt_xent(form):
  z1, z2, labels = _inputs(seed=1)
  loss, positives = vs.volume_supcon_reference(
      z1, z2, labels, vs.LossSpec("gr", 0.1, form))
  np.testing.assert_allclose(loss, losses.nt_xent_reference(z1, z2, 0.1),
                             rtol=1e-6)
  assert float(positives) == 1.0


def test_tau_base_scales_the_loss():
  z1, z2, labels = _inputs(seed=2)
  plain, _ = vs.volume_supcon_reference(z1, z2, labels,
                                        vs.LossSpec("pcl", 0.1, "supcon"))
  scaled, _ = vs.volume_supcon_reference(
      z1, z2, labels, vs.LossSpec("pcl", 0.1, "supcon", tau_base=0.07))
  np.testing.assert_allclose(scaled, plain * 0.1 / 0.07, rtol=1e-6)


def test_gd_minus_prunes_negatives_like_the_reference_code():
  """Chaitanya's layout: partition = index % 4; np.delete(range(rem, bs, 4))."""
  n = 8
  labels = vs._view_labels(  # pylint: disable=protected-access
      {"partition": jnp.arange(n) % 4, "position": jnp.zeros(n)}, n, 0)
  positive, negative = vs.pair_masks(labels, labels, "gd-")
  for i in range(2 * n):
    pruned = set(range(i % 4, 2 * n, 4))
    assert set(np.flatnonzero(negative[i])) == set(range(2 * n)) - pruned
    assert list(np.flatnonzero(positive[i])) == [(i + n) % (2 * n)]


def test_masks_never_mark_self_and_never_overlap():
  z1, z2, labels = _inputs()
  # pylint: disable-next=protected-access
  view_labels = vs._view_labels(labels, 8, 0)
  for positives in vs.POSITIVES:
    positive, negative = vs.pair_masks(view_labels, view_labels, positives,
                                       0.3)
    assert not np.diag(positive).any() and not np.diag(negative).any()
    assert not (positive & negative).any()
    assert positive.sum(1).min() >= 1  # the other view, at least


def test_spec_rejects_bad_values():
  with pytest.raises(ValueError, match="config.loss.positives"):
    vs.LossSpec("gdx")
  with pytest.raises(ValueError, match="config.loss.threshold"):
    vs.LossSpec("pcl", threshold=0.0)
  with pytest.raises(ValueError, match="config.loss.form"):
    vs.LossSpec("gd", form="mean")


# ---------------------------------------------------------------------------
# 1 vs 8 devices.


def _mesh(num_devices):
  return jax.make_mesh((num_devices,), ("data",),
                       axis_types=(jax.sharding.AxisType.Explicit,),
                       devices=jax.devices()[:num_devices])


def _loss_and_grads(loss_fn, graphdef, params, views1, views2, labels):
  def objective(params, views1, views2, labels):
    dense = nnx.merge(graphdef, params)
    return loss_fn(dense(views1), dense(views2), labels)[0]
  return jax.jit(jax.value_and_grad(objective))(params, views1, views2,
                                                labels)


@pytest.mark.parametrize("form", vs.FORMS)  # PCL uses 'supcon'
@pytest.mark.parametrize("positives", vs.POSITIVES)
def test_eight_devices_match_one(positives, form):
  graphdef, params = nnx.split(nnx.Linear(DIM_IN, DIM_OUT,
                                          rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(params)
  key1, key2, key3 = jax.random.split(jax.random.key(1), 3)
  views1 = jax.random.normal(key1, (GLOBAL_BATCH, DIM_IN))
  views2 = views1 + 0.3 * jax.random.normal(key2, (GLOBAL_BATCH, DIM_IN))
  labels = {"partition": jnp.arange(GLOBAL_BATCH, dtype=jnp.int32) % 4,
            "position": jax.random.uniform(key3, (GLOBAL_BATCH,))}
  spec = vs.LossSpec(positives, 0.1, form, threshold=0.2)
  want_loss, want_grads = _loss_and_grads(
      lambda a, b, l: vs.volume_supcon_reference(a, b, l, spec), graphdef,
      params, views1, views2, labels)
  for num_devices in (8, 1):
    with jax.set_mesh(_mesh(num_devices)):
      sharded = jax.device_put((views1, views2, labels), jax.P("data"))
      loss, grads = _loss_and_grads(
          lambda a, b, l: vs.volume_supcon(a, b, l, spec), graphdef, params,
          *sharded)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    # Gradient entries are O(1) sums of many terms: float32 rounding in a
    # different summation order leaves ~1e-7 absolute differences.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                         atol=2e-6),
                 grads, want_grads)


# ---------------------------------------------------------------------------
# MNI152 template (shipped in the nilearn wheel).


@pytest.fixture(scope="module")
def mni_slices(tmp_path_factory):
  try:
    from nilearn import datasets  # pylint: disable=g-import-not-at-top
    template = datasets.load_mni152_template(resolution=2)
  except Exception as e:  # pylint: disable=broad-except
    pytest.skip(f"MNI152 template not loadable offline from nilearn: {e}")
  folder = tmp_path_factory.mktemp("mni")
  data = np.asarray(template.get_fdata(), np.float32)
  nib.save(nib.Nifti1Image(data, template.affine),
           str(folder / "mni.nii.gz"))
  # A second "subject": every other axial slice, so it has another length.
  affine = template.affine.copy()
  affine[:, 2] *= 2
  nib.save(nib.Nifti1Image(data[:, :, ::2], affine),
           str(folder / "mni_half.nii.gz"))
  return volumes.read_volume_folder(folder, volumes.VolumeOptions(size=32))


def _expand(relation):
  """Slice-level 'P'/'N'/'.' matrix -> view-level (positive, negative)."""
  rel = np.array([list(row) for row in relation])
  tiled = np.tile(rel, (2, 2))
  off_self = ~np.eye(len(tiled), dtype=bool)
  return (tiled == "P") & off_self, (tiled == "N") & off_self


def test_mni_template_masks_for_each_variant(mni_slices):
  by_key = {(s["volume"], s["slice_index"]): s for s in mni_slices}
  assert by_key[("mni", 0)]["num_slices"] == 95
  assert by_key[("mni_half", 0)]["num_slices"] == 48
  # Axial order after reorientation: the top slice (above the skull) is
  # darker than the middle of the brain.
  assert (by_key[("mni", 94)]["image"].mean() <
          by_key[("mni", 47)]["image"].mean())
  # A: mni 10 (part 0, pos 0.106)   B: mni 60 (part 2, pos 0.638)
  # C: half 5 (part 0, pos 0.106)   D: half 40 (part 3, pos 0.851)
  batch = [by_key[k] for k in (("mni", 10), ("mni", 60), ("mni_half", 5),
                               ("mni_half", 40))]
  partition = volumes.partition_of([s["slice_index"] for s in batch],
                                   [s["num_slices"] for s in batch], 4)
  np.testing.assert_array_equal(partition, [0, 2, 0, 3])
  labels = vs._view_labels(  # pylint: disable=protected-access
      {"partition": jnp.asarray(partition),
       "position": jnp.asarray([s["position"] for s in batch])}, 4, 0)
  expected = {
      ("gr", 0.1): ["PNNN", "NPNN", "NNPN", "NNNP"],
      ("gd-", 0.1): ["PN.N", "NPNN", ".NPN", "NNNP"],
      ("gd", 0.1): ["PNPN", "NPNN", "PNPN", "NNNP"],
      ("pcl", 0.1): ["PNPN", "NPNN", "PNPN", "NNNP"],
      ("pcl", 0.25): ["PNPN", "NPNP", "PNPN", "NPNP"],
  }
  for (positives, threshold), relation in expected.items():
    positive, negative = vs.pair_masks(labels, labels, positives, threshold)
    want_positive, want_negative = _expand(relation)
    np.testing.assert_array_equal(positive, want_positive,
                                  err_msg=f"{positives} {threshold}")
    np.testing.assert_array_equal(negative, want_negative,
                                  err_msg=f"{positives} {threshold}")


# ---------------------------------------------------------------------------
# Configs and end to end.


@pytest.mark.parametrize("arg", [
    "chaitanya", "chaitanya,smoke", "chaitanya,quick",
    "chaitanya,positives=gd-", "pcl", "pcl,smoke", "pcl,quick",
    "pcl,threshold=0.05"])
def test_configs_load_lock_and_validate(arg):
  config = importlib.import_module(
      "configs.pretrain_volume_supcon").get_config(arg)
  assert isinstance(config, ml_collections.ConfigDict)
  config.lock()
  with pytest.raises(AttributeError):
    config.loss.treshold = 0.1
  spec = vs.loss_spec(config.loss)
  assert config.method == "volume_supcon"
  assert config.model.in_channels == config.data.in_channels
  assert config.batch_size % 8 == 0
  if config.data.sampling == "partition":
    assert config.batch_size % config.loss.partitions == 0
  if "smoke" in arg:
    assert config.num_steps <= 2 and config.model.preset == "tiny"
  if "quick" in arg:
    finetune_quick = finetune_unet.get_config("quick")
    assert config.model.widths == finetune_quick.model.widths
    assert config.data.image_size == finetune_quick.data.crop_size
  if arg.startswith("chaitanya"):
    assert (spec.positives, spec.temperature) == (
        "gd-" if "gd-" in arg else "gd", 0.1)
  else:
    assert spec.positives == "pcl"
    assert spec.threshold == (0.05 if "0.05" in arg else 0.1)
    assert spec.scale == pytest.approx(0.1 / 0.07)


@pytest.mark.parametrize("arg", [None, "smoke", "chaitanya,pcl,quick"])
def test_config_needs_exactly_one_recipe(arg):
  with pytest.raises(errors.ConfigError, match="chaitanya or pcl"):
    importlib.import_module("configs.pretrain_volume_supcon").get_config(arg)


def test_recipe_arguments_override_its_loss():
  module = importlib.import_module("configs.pretrain_volume_supcon")
  config = module.get_config("chaitanya,positives=pcl,threshold=0.2")
  assert (config.loss.positives, config.loss.threshold) == ("pcl", 0.2)
  assert config.loss.form == "pairwise"  # still Chaitanya's recipe
  # PCL's quick head is its own; Chaitanya's quick keeps the reference's.
  assert module.get_config("pcl,quick").head.out_dim == 256
  assert module.get_config("chaitanya,quick").head.out_dim == 128


@pytest.mark.slow
def test_chaitanya_smoke_pretrains_resumes_and_finetunes(tmp_path,
                                                         phantom_data_dir):
  config = smoke_config("pretrain_volume_supcon:chaitanya",
                        str(tmp_path / "data"),
                        num_steps=3, checkpoint_every=1, keep_checkpoints=10,
                        async_checkpoints=False)
  full = tmp_path / "full"
  last = pretrain.train_and_evaluate(config, str(full))
  assert np.isfinite(last["loss"])
  # 2 volumes x 4 partitions: each view's positives are the 3 other views
  # of its partition (its own other view and the other volume's two).
  assert last["positives_per_anchor"] == 3.0

  killed = tmp_path / "killed"
  shutil.copytree(full, killed)
  shutil.rmtree(killed / "checkpoints" / "3")
  (killed / "metrics.jsonl").unlink()
  pretrain.train_and_evaluate(config, str(killed))
  want, got = _params(full, 3), _params(killed, 3)
  assert len(want) == len(got) > 0
  for a, b in zip(want, got):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert any(not np.allclose(a, b) for a, b in zip(_params(full, 2), want))

  finetune_from(full, phantom_data_dir, tmp_path / "ft")


@pytest.mark.slow
def test_pcl_smoke_pretrains(tmp_path):
  config = smoke_config("pretrain_volume_supcon:pcl", str(tmp_path / "data"))
  last = pretrain.train_and_evaluate(config, str(tmp_path / "run"))
  assert np.isfinite(last["loss"])
  assert last["positives_per_anchor"] >= 1.0
  assert pathlib.Path(tmp_path / "data" / "medclr2d" / "synthetic_volumes"
                      ).is_dir()
