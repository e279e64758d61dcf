"""benchmarks/projection.py: roofline arithmetic and the bfloat16 convolutions.

The arithmetic is checked on constructed numbers; the dtype check lowers a
small step (widths 8,16 at 16 px, batch 2) so it compiles in seconds.
"""
import importlib.util
import json
import math

import jax
import pytest

from benchmarks import projection
from medclr.models import encoder

SMALL = {"widths": (8, 16), "size": 16}


def test_roofline_takes_the_slower_of_compute_and_memory():
  compute = projection.roofline(2e12, 1e9, peak_flops=1e15, bandwidth=1e12)
  assert compute["compute_s"] == pytest.approx(2e-3)
  assert compute["memory_s"] == pytest.approx(1e-3)
  assert compute["step_s"] == pytest.approx(2e-3)
  assert compute["bound"] == "compute"
  memory = projection.roofline(1e12, 4e9, peak_flops=1e15, bandwidth=1e12)
  assert memory["step_s"] == pytest.approx(4e-3)
  assert memory["bound"] == "memory"


def test_projection_row_mfu_and_host_rate():
  chip = projection.Chip("test chip", {"bfloat16": 1e15}, 1e12, 4, ("cpu",),
                         ())
  cost = {"flops": 1e12, "bytes_accessed": 4e9}  # memory bound: 4 ms
  row = projection.project(cost, chip, "bfloat16", batch=8,
                           useful_flops=0.8e12)
  assert row["step_s"] == pytest.approx(4e-3)
  # 0.8 TFLOP useful in 4 ms on a 1 PFLOP/s chip.
  assert row["mfu"] == pytest.approx(0.8e12 / (4e-3 * 1e15))
  assert row["views_per_s_per_chip"] == pytest.approx(16 / 4e-3)
  assert row["host_views_per_s_needed"] == pytest.approx(4 * 16 / 4e-3)
  assert projection.cores_needed(16000, 130) == 124
  assert projection.cores_needed(1300, 130) == 10


def test_input_rates_pick_host_or_device_crop_records(tmp_path):
  path = tmp_path / "input_pipeline.jsonl"
  base = {"benchmark": "input_pipeline", "batch": 16, "size": 128,
          "worker_count": 0, "timestamp": "t", "git_commit": "abc1234",
          "data": "phantom", "machine": {}}
  records = [
      dict(base, presets={"none": {"host_images_per_s": 700.0}}),  # no flag
      dict(base, crops="device",
           presets={"none": {"host_images_per_s": 9000.0}}),
      dict(base, size=96, crops="host",
           presets={"none": {"host_images_per_s": 1.0}}),  # other size
  ]
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  host, _ = projection.input_rates(path)
  device, info = projection.input_rates(path, "device")
  assert host == {"none": 700.0} and device == {"none": 9000.0}
  assert info["git_commit"] == "abc1234"
  # A record written since the flag became --crop_site wins over the older
  # ones, which name the field as the flag was named then.
  with path.open("a") as f:
    f.write(json.dumps(dict(base, crop_site="device", presets={
        "none": {"host_images_per_s": 8000.0}})) + "\n")
  assert projection.input_rates(path, "device")[0] == {"none": 8000.0}
  assert projection.input_rates(path)[0] == {"none": 700.0}
  rows = projection.rows_for(
      {projection.cost_key("cpu", "float32", 32):
       {"flops": 1e12, "bytes_accessed": 1e10, "conv_dtypes_lowered": {},
        "conv_dtypes_compiled": {}}}, ["float32"], [32], host, device)
  for row in rows:
    need = row["host_views_per_s_needed"]
    assert row["host_cores_needed"]["none"] == math.ceil(need / 700)
    assert row["host_cores_needed_device_crops"]["none"] == math.ceil(
        need / 9000)
  assert "host cores, device crops (none)" in projection.table(rows, "none")


def test_model_flops_match_the_protocol():
  # docs/protocol.md section 2: about 2.14 GFLOP per 128 px view forward,
  # a training step about 3x forward, 2 views per image.
  assert projection.model_flops(1) / 1e9 == pytest.approx(6 * 2.14, rel=0.01)


def test_conv_operand_dtypes_reads_names_through_definitions():
  hlo = """
  %a = bf16[2,8,8,3]{3,2,1,0} parameter(0)
  %k.1 = bf16[3,3,3,8]{3,2,1,0} convert(%w)
  %c = f32[2,8,8,8]{3,2,1,0} convolution(%a, %k.1), window={size=3x3}
  ROOT %d = f32[2,8,8,8]{3,2,1,0} convolution(f32[2,8,8,8] %c, %c)
  """
  found = projection.conv_operand_dtypes(hlo)
  assert found == {("bf16", "bf16"): 1, ("f32", "f32"): 1}


@pytest.mark.parametrize("precision, dtype", [("bfloat16", "bf16"),
                                              ("float32", "f32")])
def test_precision_option_reaches_every_convolution(precision, dtype):
  lowered = projection.lower_step(2, precision, jax.devices("cpu")[:1],
                                  **SMALL)
  found = projection.conv_operand_dtypes(lowered.as_text(dialect="hlo"))
  # Every conv forward, its filter gradient, and its input gradient except
  # the first's (the images need none): 3 x 4 - 1, all in `dtype`.
  assert sum(found.values()) == 3 * 2 * len(SMALL["widths"]) - 1
  assert set(found) == {(dtype, dtype)}


def test_compiled_step_has_a_cost_analysis():
  # Compiled, never run: the projection only reads the cost analysis.
  lowered = projection.lower_step(2, "float32", jax.devices("cpu")[:1],
                                  **SMALL)
  cost = projection.step_cost(lowered.compile())
  useful = 3 * 2 * 2 * encoder.encoder_forward_flops(
      3, SMALL["widths"], SMALL["size"], SMALL["size"])
  # XLA counts the convolutions the model FLOPs count, plus the rest.
  assert cost["flops"] >= useful and cost["bytes_accessed"] > 0


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="needs libtpu (pip install -e '.[tpu]') to "
                           "compile for a TPU topology")
def test_bfloat16_convolutions_stay_bfloat16_in_the_tpu_module():
  devices = projection.tpu_devices("tpu_v5e")
  assert devices, "libtpu is installed but refused a v5e topology (stderr)"
  lowered = projection.lower_step(2, "bfloat16", devices, **SMALL)
  found = projection.conv_operand_dtypes(lowered.compile().as_text())
  bf16 = found[("bf16", "bf16")]
  assert bf16 >= 0.9 * sum(found.values())
