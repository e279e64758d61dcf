"""Test setup: eight fake CPU devices, created before JAX touches a backend."""
import gc
import os
import pathlib
import re
import shutil
import sys
import tempfile

# With PYTHONDONTWRITEBYTECODE=1 (some machines set it) no .pyc is written,
# and each of the launcher processes the tests start would compile every
# module it imports again. `make install` writes those of the modules runs
# and tests import; the test run writes the rest, once, for all processes.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

# Tests compile hundreds of small programs and run each for a few steps, so
# XLA:CPU's backend compile time is half of their time. Two flags cut it:
# LLVM optimisation level 1 instead of the default (a DINO end-to-end test:
# 87 -> 61 CPU seconds) and, on jaxlib 0.10, XLA's loop emitters instead of
# its new fusion emitters (the SimCLR smoke step: 3.4 -> 2.4 s, the same
# loss to the last bit; the suite's compile time 858 -> 551 s). Level 0
# is not used: it miscompiles SimCLR and fine-tuning steps into NaN
# gradients with either emitter (jaxlib 0.10.2). An unknown XLA flag aborts
# the process, so the emitter flag is only set on the jaxlib it was checked
# with. Set before JAX creates its backend, inherited by the launchers tests
# start; a user's own level wins.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=1",)
TEST_XLA_FLAGS_BY_JAXLIB = {
    (0, 10): TEST_XLA_FLAGS + ("--xla_cpu_use_fusion_emitters=false",),
}


def _test_xla_flags():
  from medclr import xla_defaults  # pylint: disable=import-outside-toplevel
  return TEST_XLA_FLAGS_BY_JAXLIB.get(xla_defaults.jaxlib_version(),
                                     TEST_XLA_FLAGS)


if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(
      [os.environ.get("XLA_FLAGS", ""), *_test_xla_flags()]).strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

# Must run before any device use: every test sees an 8-device mesh on CPU.
jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _share_compilations():
  """One XLA compilation cache for the whole test run.

  Many tests compile the same smoke steps (in both pytest-xdist workers and
  in the launcher subprocesses they start); compiling dominates their time.
  The directory is per run: the first process to load this file (pytest's
  controller) names it and every xdist worker and launcher subprocess
  inherits it through the environment, so a run never reuses programs
  compiled by another version of the code. A user's own setting wins.
  """
  cache = os.environ.setdefault(
      "JAX_COMPILATION_CACHE_DIR",
      os.path.join(tempfile.gettempdir(), f"medclr-test-xla-{os.getpid()}"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update(
      "jax_persistent_cache_min_compile_time_secs",
      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
  return cache


_XLA_CACHE = _share_compilations()


# Test files by measured run time, longest first (pytest --durations on 2
# cores). With `--dist loadfile --no-loadscope-reorder` (make test)
# pytest-xdist hands out whole files in collection order, so the long ones
# start first, short files fill the end and both workers finish together.
# A stale order only costs balance.
LONGEST_FIRST = (
    "study_test", "reliability_test", "dira_test", "augment_test",
    "benchmarks_test", "devices_test", "walkthrough_test",
    "volume_supcon_test", "moco_test", "adco_test", "byol_test", "dino_test",
    "errors_test", "models_test", "macl_test", "semi_test", "console_test",
    "trainer_test",
    "updates_test", "kill_test", "multihost_test", "guard_test",
    "notebook_test", "device_crops_test", "chaitanya_local_test", "data_test",
    "methods_test", "losses_test", "pipeline_test", "evaluate_test",
    "simclr_test", "hostile_inputs_test", "precision_test", "fov_test",
    "properties_test", "augment_preview_test", "contrastive_crop_test",
    "preprocess_test", "pixel_contrast_test", "record_storage_test",
    "probe_test", "resume_test")


def pytest_collection_modifyitems(items):
  """Runs the files of LONGEST_FIRST first (a stable sort: files stay whole
  and in order inside)."""
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


def pytest_collection_finish(session):  # pylint: disable=unused-argument
  """Keeps Python's cyclic collector off the objects that live all run.

  A worker holds every test module, JAX, Flax and torch for the whole run,
  and tracing allocates millions of short-lived objects, so full
  collections walk the same long-lived heap over and over (GC was 4.6% of
  a worker's CPU on three method test files). Frozen objects are skipped;
  the larger first threshold makes young collections rarer.
  """
  gc.collect()
  gc.freeze()
  gc.set_threshold(50_000, 20, 20)


def pytest_unconfigure(config):  # pylint: disable=unused-argument
  """The process that named this run's cache removes it."""
  if _XLA_CACHE.endswith(f"medclr-test-xla-{os.getpid()}"):
    shutil.rmtree(_XLA_CACHE, ignore_errors=True)


# What a library's log line looks like on a console: Python's default
# format, absl's prefix (I1206 20:58:36.309787 ...), a library's name, or
# what TFDS prints while writing records.
LIBRARY_LINE = re.compile(
    r"^(WARNING|INFO|ERROR|DEBUG|CRITICAL):|^[IWEF]\d{4} \d\d:\d\d:\d\d"
    r"|orbax|tensorflow_datasets|absl|Downloading and preparing dataset"
    r"|Subsequent calls will reuse this data")


def named_outputs(line):
  """The paths an '[tag] outputs in DIR: a, b/ (...); library logs: L' or
  '[tag] outputs: P, Q; ...' line names, and the log file."""
  line, _, log = line.partition("; library logs: ")
  listing = re.fullmatch(r"\[\w+\] outputs in (\S+): (.*)", line)
  if not listing:
    paths = re.fullmatch(r"\[\w+\] outputs: (.*)", line).group(1)
    return paths.split(", "), log
  directory, names = listing.groups()
  names = [re.sub(r" \(.*\)$", "", name)  # commas inside (...) stay
           for name in re.split(r", (?![^(]*\))", names)]
  return [os.path.join(directory, name) for name in names], log


SHARED_DATA = pathlib.Path(
    os.environ.get("MEDCLR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data():
  """Path of ../shared/data, or skip with a clear reason when it is absent."""
  if not (SHARED_DATA / "drive").is_dir():
    pytest.skip(f"real data not found at {SHARED_DATA} (set MEDCLR_SHARED_DATA "
                "or place DRIVE/HRF/ISBI there); skipping real-data test")
  return SHARED_DATA


@pytest.fixture(scope="session")
def phantom_data_dir(tmp_path_factory):
  """The embedded phantom dataset, prepared once per session as TFDS records."""
  from medclr.data import prepare  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path_factory.mktemp("phantom_data")
  prepare.prepare("phantom", None, str(data_dir))
  return str(data_dir)


def smoke_config(module, data_dir, **overrides):
  """`configs/<module>.py:smoke` pointed at `data_dir`, with field overrides.

  `module` may name a variant: 'pretrain_volume_supcon:pcl' is
  `configs/pretrain_volume_supcon.py:pcl,smoke`.
  """
  import importlib  # pylint: disable=g-import-not-at-top
  module, _, variant = module.partition(":")
  config = importlib.import_module(f"configs.{module}").get_config(
      f"{variant},smoke" if variant else "smoke")
  config.data.data_dir = data_dir
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


@pytest.fixture(scope="session")
def pretrained_dir(tmp_path_factory, phantom_data_dir):
  """A finished 2-step smoke SimCLR pretraining workdir (shared by tests)."""
  from medclr.train import pretrain  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  pretrain.train_and_evaluate(smoke_config("pretrain_simclr", phantom_data_dir),
                              workdir)
  return workdir


@pytest.fixture(scope="session")
def finetuned_dir(tmp_path_factory, phantom_data_dir, pretrained_dir):
  """A finished smoke fine-tuning workdir initialised from `pretrained_dir`."""
  from medclr.train import finetune  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("finetune"))
  finetune.train_and_evaluate(
      smoke_config("finetune_unet", phantom_data_dir,
                   **{"init.pretrain_dir": pretrained_dir}), workdir)
  return workdir


def saved_subtrees(workdir, step, parts=("params",)):
  """The listed top-level parts of the train state saved at `step` (numpy).

  Restored as float32 onto the shapes in the checkpoint's metadata, as a test
  of what a run actually wrote.
  """
  import jax  # pylint: disable=g-import-not-at-top,redefined-outer-name
  import numpy as np  # pylint: disable=g-import-not-at-top
  from medclr import checkpointing  # pylint: disable=g-import-not-at-top
  shapes, _ = checkpointing.saved_tree_shapes(workdir, step)
  abstract = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s, np.float32),
      {part: shapes[part] for part in parts},
      is_leaf=lambda s: isinstance(s, tuple))
  restored, _ = checkpointing.restore_subtrees(workdir, abstract, step)
  return jax.device_get(restored)


def saved_state(workdir, step):
  """The whole train state saved at `step` (numpy, saved dtypes) and the
  data iterator's saved position(s) ({file name: JSON text}).
  """
  import jax  # pylint: disable=g-import-not-at-top,redefined-outer-name
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  step_dir = pathlib.Path(workdir) / "checkpoints" / str(step)
  metadata = ocp.PyTreeCheckpointer().metadata(step_dir / "state")
  metadata = getattr(metadata, "item_metadata", metadata)
  metadata = getattr(metadata, "tree", metadata)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      metadata, is_leaf=lambda m: hasattr(m, "shape"))
  state = ocp.PyTreeCheckpointer().restore(
      step_dir / "state", args=ocp.args.PyTreeRestore(
          item=abstract,
          restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)))
  iterator = {f.name: f.read_text()
              for f in sorted((step_dir / "data_iter").glob("*.json"))}
  return jax.device_get(state), iterator


def finetune_from(pretrain_dir, data_dir, workdir):
  """One real fine-tuning step at learning rate 0 from `pretrain_dir`.

  Asserts a finite loss and that the U-Net's saved encoder is, bit for bit,
  the encoder the pretraining run saved (each read from its own checkpoint),
  so a method whose checkpoint layout broke the hand-over fails here.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from medclr import checkpointing  # pylint: disable=g-import-not-at-top
  from medclr.train import finetune  # pylint: disable=g-import-not-at-top
  config = smoke_config("finetune_unet", data_dir, num_steps=1,
                        **{"init.pretrain_dir": str(pretrain_dir),
                           "optim.learning_rate": 0.0})
  last = finetune.train_and_evaluate(config, str(workdir))
  assert np.isfinite(last["loss"])
  _, pretrained_step = checkpointing.saved_tree_shapes(pretrain_dir)
  pretrained, _ = saved_state(pretrain_dir, pretrained_step)
  tuned, _ = saved_state(workdir, 1)
  assert_trees_equal(tuned["params"]["encoder"],
                     pretrained["params"]["encoder"])
  return last


def assert_trees_equal(got, want):
  """Same tree structure, dtypes and bits in every leaf."""
  import jax  # pylint: disable=g-import-not-at-top,redefined-outer-name
  import numpy as np  # pylint: disable=g-import-not-at-top
  assert jax.tree.structure(got) == jax.tree.structure(want)

  def check(path, a, b):
    assert np.asarray(a).dtype == np.asarray(b).dtype, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  jax.tree_util.tree_map_with_path(check, got, want)


def assert_trees_close_to_scale(got, want, fraction, per_leaf=True):
  """Same structure; every leaf within `fraction` of want's largest entry
  (with `per_leaf=False`, of the largest entry of the whole tree: for leaves
  whose own values are mere noise, such as a bias before a BatchNorm).
  """
  import jax  # pylint: disable=g-import-not-at-top,redefined-outer-name
  import numpy as np  # pylint: disable=g-import-not-at-top
  assert jax.tree.structure(got) == jax.tree.structure(want)
  tree_scale = max((float(np.abs(np.asarray(b)).max())
                    for b in jax.tree.leaves(want) if np.size(b)), default=0.)

  def check(path, a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.abs(b).max()) if b.size else 0.0
    scale = scale if per_leaf else tree_scale
    err = float(np.abs(a - b).max()) if b.size else 0.0
    assert err <= fraction * scale, (
        f"{jax.tree_util.keystr(path)}: differs by {err:.3g}, more than "
        f"{fraction} of its largest entry {scale:.3g}")
  jax.tree_util.tree_map_with_path(check, got, want)


def assert_trees_close(got, want, rtol, atol):
  """Same tree structure and every leaf close."""
  import jax  # pylint: disable=g-import-not-at-top,redefined-outer-name
  import numpy as np  # pylint: disable=g-import-not-at-top
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree_util.tree_map_with_path(
      lambda path, a, b: np.testing.assert_allclose(
          a, b, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path)),
      got, want)


def resume_after_kill(full, dest, killed_after, train):
  """Copies finished run `full` to `dest` as a run killed after saving step
  `killed_after` (later checkpoints removed), resumes it with
  `train(workdir)` and asserts the final state and data-iterator position
  equal the uninterrupted run's bit for bit. Returns the final state."""
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(full, dest)
  steps = sorted(int(p.name) for p in (pathlib.Path(full) / "checkpoints"
                                       ).iterdir() if p.name.isdigit())
  for step in steps:
    if step > killed_after:
      shutil.rmtree(pathlib.Path(dest) / "checkpoints" / str(step))
  train(str(dest))
  want, want_iter = saved_state(full, steps[-1])
  got, got_iter = saved_state(dest, steps[-1])
  assert_trees_equal(got, want)
  assert got_iter == want_iter and got_iter
  return want


def finetune_from_frozen(data_dir, pretrain_dir, workdir, parts):
  """A real smoke fine-tuning run from `pretrain_dir` with `parts` loaded
  and frozen for the whole run: returns (pretrained params, fine-tuned
  params), both as saved, so what it loaded is what it ends with."""
  from medclr import checkpointing  # pylint: disable=g-import-not-at-top
  from medclr.train import finetune  # pylint: disable=g-import-not-at-top
  finetune.train_and_evaluate(smoke_config(
      "finetune_unet", data_dir, **{
          "init.pretrain_dir": str(pretrain_dir), "init.load": parts,
          "init.freeze": parts, "init.freeze_steps": -1}), str(workdir))
  _, pretrained_step = checkpointing.saved_tree_shapes(str(pretrain_dir))
  return (saved_subtrees(pretrain_dir, pretrained_step)["params"],
          saved_subtrees(workdir, 2)["params"])


def write_dicom_slice(path, pixels, series_uid, *, instance_number,
                      pixel_spacing=(1.0, 1.0), orientation=None,
                      position=None, slope=None, intercept=None):
  """One uint16 CT slice as a DICOM file (pydicom), for the volume tests.

  `orientation` / `position` (ImageOrientationPatient, ImagePositionPatient)
  and the rescale tags are written only when given.
  """
  from pydicom import uid as dicom_uid  # pylint: disable=g-import-not-at-top
  from pydicom.dataset import Dataset  # pylint: disable=g-import-not-at-top
  from pydicom.dataset import FileMetaDataset  # pylint: disable=g-import-not-at-top
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = dicom_uid.CTImageStorage
  meta.MediaStorageSOPInstanceUID = dicom_uid.generate_uid()
  meta.TransferSyntaxUID = dicom_uid.ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.SeriesInstanceUID = series_uid
  ds.Modality = "CT"
  ds.Rows, ds.Columns = pixels.shape
  ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
  ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
  ds.PhotometricInterpretation = "MONOCHROME2"
  ds.PixelSpacing = list(pixel_spacing)
  ds.InstanceNumber = instance_number
  if orientation is not None:
    ds.ImageOrientationPatient = list(orientation)
  if position is not None:
    ds.ImagePositionPatient = list(position)
  if slope is not None:
    ds.RescaleSlope = slope
  if intercept is not None:
    ds.RescaleIntercept = intercept
  ds.PixelData = np.asarray(pixels, np.uint16).tobytes()
  ds.save_as(path, enforce_file_format=True)
