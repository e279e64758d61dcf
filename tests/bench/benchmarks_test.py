"""The benchmarks run end to end at toy sizes and report sane, complete JSON.

Each benchmark's `main` runs in this process (conftest's 8 CPU devices) with
tiny images and widths, writing to a temporary results file. Nothing here
asserts on timings: only that rates are positive and finite, that records
hold the documented keys, and that equality checks hold. The end-to-end runs
are marked `slow` (about a minute together on 2 idle cores). The PyTorch parts
need the `bench` extra and are skipped with a reason when torch is absent;
the peer-identity tests check that the PyTorch peer computes the same
function as medclr's models once given the same weights.
"""
import contextlib
import importlib.util
import io
import json
import math
import pathlib
import sys

import jax
import numpy as np
import pytest

from benchmarks import common
from benchmarks import inference
from benchmarks import input_pipeline
from benchmarks import pretrain_step
from benchmarks import record_storage
from benchmarks import scaling

HAS_TORCH = importlib.util.find_spec("torch") is not None
NEEDS_TORCH = pytest.mark.skipif(
    not HAS_TORCH, reason="torch not installed: pip install torch==2.13.0 "
    "(the bench extra) to test the PyTorch peer")
TINY = ["--widths=4,8", "--hidden_dim=16", "--out_dim=8"]


def _positive(value):
  return isinstance(value, float) and math.isfinite(value) and value > 0


def _only_record(path):
  lines = path.read_text().splitlines()
  assert len(lines) == 1
  return json.loads(lines[0])


@pytest.fixture(scope="module")
def step_run(tmp_path_factory):
  """One toy pretrain_step run: (record, results path, stdout)."""
  path = tmp_path_factory.mktemp("bench") / "pretrain_step.jsonl"
  argv = TINY + ["--size=16", "--batch=4", "--steps=2", "--warmup=1",
                 "--matmul_n=128", "--preset=chaitanya_local",
                 f"--results={path}"]
  if not HAS_TORCH:
    argv.append("--notorch")
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    record = pretrain_step.main(argv)
  return record, path, stdout.getvalue()


@pytest.fixture(scope="module")
def step_record(step_run):
  return step_run[0], step_run[1]


@pytest.mark.slow
def test_pretrain_step_reports_documented_keys(step_record):
  record, _ = step_record
  for key in ("medclr_images_per_s", "medclr_images_per_s_with_aug",
              "achieved_gflops", "peak_matmul_gflops", "mfu", "compile_s",
              "peak_rss_mb"):
    assert _positive(record[key]), (key, record[key])
  assert record["devices"] == 1
  assert record["backend"] == jax.default_backend()
  assert (record["precision"], record["batch"], record["size"]) == (
      "float32", 4, 16)
  assert record["xla_memory"]["temp_size_mb"] >= 0
  assert math.isfinite(record["medclr_loss"])
  assert record["mfu"] == pytest.approx(
      record["achieved_gflops"] / record["peak_matmul_gflops"])
  assert record["machine"]["cores"] >= 1 and record["git_commit"]


@pytest.mark.slow
@NEEDS_TORCH
def test_pretrain_step_compares_with_torch(step_record):
  record, _ = step_record
  assert _positive(record["torch_images_per_s"])
  assert record["ratio_vs_torch"] == pytest.approx(
      record["medclr_images_per_s"] / record["torch_images_per_s"])
  assert math.isfinite(record["torch_loss"])


@pytest.mark.slow
def test_pretrain_step_prints_and_appends_the_same_record(step_run):
  record, path, stdout = step_run
  last_line = json.loads(stdout.strip().splitlines()[-1])
  assert last_line == record == _only_record(path)


def test_pretrain_step_rejects_bad_size(tmp_path):
  with pytest.raises(SystemExit, match="--size=17"):
    pretrain_step.main(["--widths=4,8", "--size=17",
                        f"--results={tmp_path / 'never.jsonl'}"])


@pytest.mark.slow
def test_input_pipeline_reads_step_rate_and_compares(step_record, tmp_path):
  _, step_path = step_record
  path = tmp_path / "input.jsonl"
  record = input_pipeline.main(
      ["--size=16", "--batch=4", "--phantom_images=4", "--phantom_size=32",
       "--presets=none,simclr_strong", "--steps=2", "--warmup=1",
       "--widths=4,8", f"--step_results={step_path}", f"--results={path}"])
  # Outside the repository only the file name is kept (no machine paths).
  assert record["step_source"].startswith(f"{step_path.name} at ")
  step_rate = record["step_images_per_s"]
  assert step_rate == step_record[0]["medclr_images_per_s"]
  assert set(record["presets"]) == {"none", "simclr_strong"}
  for numbers in record["presets"].values():
    for key in ("host_images_per_s", "device_aug_images_per_s",
                "pipeline_images_per_s"):
      assert _positive(numbers[key]), (key, numbers)
    assert numbers["outruns_step"] == (
        numbers["pipeline_images_per_s"] > step_rate)
  assert record["all_outrun_step"] == all(
      n["outruns_step"] for n in record["presets"].values())
  # Decode cost per uncached record beside the step's time per batch.
  assert record["step_ms"] == pytest.approx(1000 * 2 * 4 / step_rate)
  decode = record["decode"]
  assert _positive(decode["ms_per_image"])
  assert _positive(decode["cpu_ms_per_image"])
  assert decode["ms_per_batch"] == pytest.approx(4 * decode["ms_per_image"])
  assert decode["share_of_step"] == pytest.approx(
      decode["ms_per_batch"] / record["step_ms"])
  assert decode["records_timed"] == 4  # all of the 4 phantom images
  assert decode["record_versions"] == {"2.0.0": 5}  # train 4 + test 1
  # Each split's ArrayRecord file takes at least 128 kB, so 5 tiny images
  # cost about 2 x 128 / 5 kB each.
  assert 50 < decode["stored_kb_per_image"] < 60
  for numbers in record["presets"].values():
    assert numbers["host_ms_per_step"] == pytest.approx(
        1000 * 2 * 4 / numbers["host_images_per_s"])
  assert _only_record(path) == record


def test_record_storage_measures_sizes_of_a_mixed_folder(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = tmp_path / "pool" / "images"
  images.mkdir(parents=True)
  pixels = rng.integers(0, 256, (40, 48, 3), np.uint8)
  Image.fromarray(pixels).save(images / "a.jpg", quality=90)
  Image.fromarray(pixels).save(images / "b.tif")
  path = tmp_path / "storage.jsonl"
  record = record_storage.main(
      ["--dataset=unlabeled", "--name=mixed", "--decode_samples=8",
       f"--manual_dir={tmp_path / 'pool'}", f"--results={path}"])
  assert record["record_version"] == "2.0.0" and record["images"] == 2
  assert record["stored_formats"] == {"jpeg": 1, "png": 1}
  assert record["source_image_bytes"] == sum(
      f.stat().st_size for f in images.iterdir())
  assert record["source_label_bytes"] == 0
  assert record["records_per_source"] == pytest.approx(
      record["record_bytes"] / record["source_image_bytes"])
  for key in ("prepare_wall_s", "prepare_cpu_s", "decode_ms_per_image",
              "decode_cpu_ms_per_image"):
    assert _positive(record[key]), key
  assert "manual_dir" not in record and str(tmp_path) not in path.read_text()
  assert _only_record(path) == record


@pytest.mark.slow
def test_scaling_runs_over_1_to_8_devices(tmp_path):
  record = scaling.main(
      TINY + ["--size=16", "--batch=8", "--device_counts=1,8",
              "--steps=1", "--warmup=0", "--floor_draws=1",
              "--preset=chaitanya_local",
              f"--results={tmp_path / 's.jsonl'}"])
  assert [r["devices"] for r in record["rows"]] == [1, 8]
  assert record["all_equal"] is True
  assert record["rows"][0]["grad_max_abs"] > 0
  assert record["grad_tolerance_rel_l2"] >= record["grad_rtol"]
  for row in record["rows"]:
    assert row["equal"] is True
    assert row["loss_abs_diff"] <= record["loss_atol"]
    assert row["grad_rel_l2_diff"] <= record["grad_tolerance_rel_l2"]
    assert _positive(row["step_s"])
  assert record["step_time_ratio_vs_1"]["1"] == 1.0


def test_scaling_rejects_counts_not_dividing_batch():
  with pytest.raises(SystemExit, match="do not divide"):
    scaling.main(TINY + ["--batch=6", "--device_counts=1,4"])


@pytest.mark.slow
def test_inference_runs_full_image_both_frameworks(tmp_path):
  argv = ["--phantom", "--height=40", "--width=36", "--widths=4,8",
          "--window=16", "--repeats=1", "--warmup=1",
          f"--results={tmp_path / 'i.jsonl'}"]
  if not HAS_TORCH:
    argv.append("--notorch")
  record = inference.main(argv)
  assert record["image_shape"] == [40, 36, 3]
  assert record["medclr_logits_shape"] == [40, 36, 1]
  assert _positive(record["medclr_images_per_s"])
  if HAS_TORCH:
    assert _positive(record["torch_images_per_s"])
    assert record["ratio_vs_torch"] == pytest.approx(
        record["medclr_images_per_s"] / record["torch_images_per_s"])


def test_latest_record_picks_last_match(tmp_path):
  path = tmp_path / "r.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in (
      {"size": 1, "v": 1}, {"size": 2, "v": 2}, {"size": 1, "v": 3})) + "\n")
  assert common.latest_record(path, size=1)["v"] == 3
  assert common.latest_record(path, size=5) is None
  assert common.latest_record(tmp_path / "missing.jsonl", size=1) is None


def _with_nontrivial_stats(model):
  """(model, params, stats): running statistics moved off their init values.

  Fresh BatchNorm statistics (mean 0, var 1) would hide a peer that ignores
  them in eval mode.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from medclr import models  # pylint: disable=g-import-not-at-top
  graphdef, params, stats = models.split_model(model)
  rng = np.random.default_rng(1)
  stats = jax.tree.map(
      lambda x: np.asarray(x) + rng.uniform(0.1, 0.5, x.shape).astype(
          np.float32), stats)
  params = jax.tree.map(np.asarray, params)
  return nnx.merge(graphdef, params, stats), params, stats


@NEEDS_TORCH
def test_torch_peer_contrastive_model_matches_medclr():
  import torch  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_peer  # pylint: disable=g-import-not-at-top
  from medclr.methods import losses  # pylint: disable=g-import-not-at-top
  from medclr import models  # pylint: disable=g-import-not-at-top

  widths = (4, 8)
  model = models.make_contrastive(common.model_config(widths, "float32"),
                                  {"hidden_dim": 16, "out_dim": 8},
                                  nnx.Rngs(0))
  model, params, stats = _with_nontrivial_stats(model)
  peer = torch_peer.ContrastiveModel(3, widths, hidden_dim=16, out_dim=8)
  torch_peer.load_medclr_weights(peer, params, stats)
  views = np.random.default_rng(0).random((6, 16, 16, 3), np.float32)
  as_torch = torch.from_numpy(views).permute(0, 3, 1, 2).contiguous(
      memory_format=torch.channels_last)

  with torch.no_grad():
    for train in (False, True):
      peer.train(train)
      z_peer = peer(as_torch).numpy()
      z_ours = np.asarray(model(views, train=train)[0])
      np.testing.assert_allclose(z_peer, z_ours, rtol=1e-4, atol=1e-5)
    loss_peer = torch_peer.nt_xent(torch.tensor(z_ours[:3]),
                                   torch.tensor(z_ours[3:]), 0.1)
  loss_ours = losses.nt_xent_reference(z_ours[:3], z_ours[3:], 0.1)
  np.testing.assert_allclose(float(loss_peer), float(loss_ours), rtol=1e-5)


@NEEDS_TORCH
def test_torch_peer_unet_matches_medclr():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_peer  # pylint: disable=g-import-not-at-top
  from medclr import models  # pylint: disable=g-import-not-at-top

  widths = (4, 8, 16)
  model = models.make_unet(common.model_config(widths, "float32"),
                           nnx.Rngs(0))
  model, params, stats = _with_nontrivial_stats(model)
  peer_model, predict = torch_peer.make_unet_predict(3, widths)
  torch_peer.load_medclr_weights(peer_model, params, stats)
  images = np.random.default_rng(0).random((2, 16, 16, 3), np.float32)
  np.testing.assert_allclose(
      predict(images), np.asarray(model(images, train=False)), rtol=1e-4,
      atol=1e-5)


def test_profile_step_classifies_each_conv_of_a_two_layer_gradient():
  """Forward, input-gradient and filter-gradient convs are told apart."""
  from benchmarks import profile_step  # pylint: disable=g-import-not-at-top

  def conv(x, k):
    return jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def loss(kernels, x):
    return (conv(jax.nn.relu(conv(x, kernels[0])), kernels[1]) ** 2).sum()

  kernels = (np.ones((3, 3, 3, 4), np.float32),
             np.ones((3, 3, 4, 4), np.float32))
  text = jax.jit(jax.grad(loss)).lower(
      kernels, np.ones((2, 16, 16, 3), np.float32)).compile().as_text()
  instructions, _ = profile_step.parse_hlo(text)
  kinds = sorted(profile_step.conv_kind(line)
                 for opcode, line in instructions.values()
                 if opcode == "convolution")
  # The images get no gradient, so only the second conv has an input grad.
  assert kinds == ["conv filter grad"] * 2 + ["conv forward"] * 2 + [
      "conv input grad"]


@pytest.mark.slow
def test_profile_step_reports_per_op_times(tmp_path):
  from benchmarks import profile_step  # pylint: disable=g-import-not-at-top
  path = tmp_path / "profile_step.jsonl"
  argv = ["--widths=4,8", "--size=16", "--batch=2", "--steps=1",
          "--warmup=1", "--conv_repeats=1", f"--results={path}"]
  if not HAS_TORCH:
    argv.append("--notorch")
  with contextlib.redirect_stdout(io.StringIO()):
    record = profile_step.main(argv)
  assert record == _only_record(path)
  medclr = record["medclr"]
  assert {"conv forward", "conv filter grad"} <= set(medclr["ms_per_step"])
  assert _positive(medclr["step_s"]) and medclr["op_ms_sum"] > 0
  assert list(medclr["conv_ms"]) == ["3->4@16", "4->4@16", "4->8@8",
                                     "8->8@8"]
  assert "input_grad" not in medclr["conv_ms"]["3->4@16"]
  assert "input_grad" in medclr["conv_ms"]["4->4@16"]
  if HAS_TORCH:
    assert "conv forward" in record["torch"]["ms_per_step"]
    assert len(record["torch"]["conv_ms"]) == 4


def test_committed_results_hold_no_absolute_paths():
  """Results are shareable: no paths of the machine that produced them."""
  import re  # pylint: disable=g-import-not-at-top
  results = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "results"
  pattern = re.compile(r"(?<![\w.$])/(?:work|tmp|home|root|Users|mnt|scratch)/")
  offenders = []
  # Plots (PNG) hold no text; every other result file is text.
  for path in sorted(p for p in results.glob("*") if p.suffix != ".png"):
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if pattern.search(line):
        offenders.append(f"{path.name}:{number}")
  assert not offenders, f"absolute paths in {offenders[:10]}"


@pytest.mark.slow
@NEEDS_TORCH
def test_simclr_ab_frameworks_agree_on_identical_views(phantom_data_dir,
                                                       tmp_path):
  """Same weights, views and optimiser: medclr and the peer stay together."""
  from benchmarks import simclr_ab  # pylint: disable=g-import-not-at-top
  path = tmp_path / "simclr_ab.jsonl"
  with contextlib.redirect_stdout(io.StringIO()):
    simclr_ab.main([f"--data_dir={phantom_data_dir}", "--sources=phantom:train",
                    "--config_arg=smoke", "--presets=basic_medical",
                    "--steps=3", f"--results={path}"])
  row = _only_record(path)
  assert {"time", "git", "preset", "steps", "batch", "step0_abs_diff",
          "curve", "first_over_chance", "last_over_chance", "seconds",
          "command"} <= set(row)
  assert "$DATA" in row["command"] and phantom_data_dir not in row["command"]
  first, last = row["curve"][0], row["curve"][-1]
  assert (first["step"], last["step"]) == (0, 2)
  np.testing.assert_allclose(first["loss_torch"], first["loss_jax"],
                             rtol=1e-4)
  np.testing.assert_allclose(last["loss_torch"], last["loss_jax"], rtol=1e-3)
  assert "| basic_medical | PyTorch peer |" in path.with_suffix(
      ".md").read_text()


def test_test_suite_counts_outcomes_and_times_a_run(tmp_path, monkeypatch):
  from benchmarks import test_suite  # pylint: disable=import-outside-toplevel
  toy = tmp_path / "toy_test.py"
  toy.write_text(
      "import pytest, time\n"
      "def test_a(): time.sleep(0.3)\n"
      "def test_b(): pass\n"
      "def test_c(): assert False\n"
      "@pytest.mark.skip(reason='x')\n"
      "def test_d(): pass\n")
  result = test_suite.run([str(toy)], "1")
  assert result["returncode"] == 1
  assert (result["passed"], result["failed"], result["errors"],
          result["skipped"]) == (2, 1, 0, 1)
  (name, seconds), = result["slowest_files"]
  assert name == "toy_test" and seconds >= 0.3
  assert result["wall_s"] >= seconds and result["cpu_s"] > 0
  assert "--xla_backend_optimization_level=1" in test_suite.test_xla_flags()
  # With the install's seconds, the row has make test's total.
  rows = tmp_path / "rows.jsonl"
  monkeypatch.setattr(sys, "argv", [
      "test_suite", f"--tests={toy}", "--workers=1", "--install_s=41.96",
      f"--results={rows}"])
  assert test_suite.main() == 1
  row = json.loads(rows.read_text().splitlines()[-1])
  assert row["install_s"] == 42.0
  assert row["make_test_s"] == round(41.96 + row["wall_s"], 1)
