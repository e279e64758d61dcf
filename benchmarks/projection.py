r"""Roofline projection of the canonical pretraining step onto accelerators.

  python -m benchmarks.projection                  # batches 32..256 per chip
  python -m benchmarks.projection --batches=32 --precisions=bfloat16 --tpu=none

THESE ARE PROJECTIONS FROM XLA'S COST ANALYSIS, NOT MEASUREMENTS. Nothing here
runs the step: it is lowered and compiled with abstract inputs only, and
`compiled.cost_analysis()` gives the FLOPs and bytes accessed of one step of
`batch` images x 2 views on one chip (the canonical `unet2d-32` SimCLR step of
docs/protocol.md section 2, augmentation preset `none`, i.e. the pure model
step that `benchmarks/pretrain_step.py` times as `medclr_images_per_s`).

Costs come from the compiler of the target where this machine has it: XLA:TPU
compiles for a v5e (and with --tpu=v5e,v4 a v4) topology without a TPU when
`libtpu` is importable (`pip install -e '.[tpu]'`; a few minutes per module
on 2 cores), XLA:CPU always. The H100 has no compiler here; it is projected
from the XLA:CPU module (see HARDWARE for each chip's source and caveats).

Per chip and precision: step time = max(FLOPs / peak FLOP/s, bytes / HBM
bandwidth), MFU = the model's analytic FLOPs (3x the encoder's forward
convolutions, as pretrain_step counts them) / (step time x peak), and the
host input rate a host must sustain to keep its chips fed. Beside it, the
measured host-side input rate per core of each augmentation preset (Grain's
decode + random crops, `host_images_per_s` of the latest
benchmarks/results/input_pipeline.jsonl record, one process) and the cores
that needs. One JSON line per (chip, precision, batch) is appended to
benchmarks/results/projection.jsonl; benchmarks/results/projection.md is
rewritten with the table.
"""
import argparse
import collections
import dataclasses
import json
import math
import os
import re
import sys

from benchmarks import common
from benchmarks import input_pipeline
from benchmarks import pretrain_step

NAME = "projection"
BATCHES = (32, 64, 128, 256)
SIZE = 128
# XLA:TPU topologies to compile for (the smallest each compiler accepts); one
# device of it runs the per-chip program.
TPU_TOPOLOGIES = {"v5e": "v5e:2x2", "v4": "v4:2x2x1"}
COST_LABELS = {"cpu": "XLA:CPU", "tpu_v5e": "XLA:TPU v5e",
               "tpu_v4": "XLA:TPU v4"}


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published peak numbers of one accelerator chip, with their sources."""
  name: str
  peak_flops: dict  # precision -> dense FLOP/s at JAX's default precision
  hbm_bytes_per_s: float
  chips_per_host: int
  cost_from: tuple  # compiled modules whose costs project it, best first
  sources: tuple
  note: str = ""


HARDWARE = {
    "tpu_v5e": Chip(
        "TPU v5e", {"bfloat16": 197e12, "float32": 197e12}, 819e9, 4,
        ("tpu_v5e", "cpu"),
        ("https://cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16 per chip; "
         "HBM2 16 GB, 819 GB/s; up to 8 chips per host)",
         "libtpu 0.0.42's v5e topology: chips_per_host_bounds 2x2x1"),
        "4 chips per host, as libtpu lays out multi-host slices; the "
        "single-host v5litepod-8 has 8 (twice the host rate). "
        "No float32 peak is published; JAX's default precision runs float32 "
        "convolutions on the bf16 MXUs, so float32 uses the bf16 peak (an "
        "upper bound if XLA:TPU uses several bf16 passes)."),
    "tpu_v4": Chip(
        "TPU v4", {"bfloat16": 275e12, "float32": 275e12}, 1200e9, 4,
        ("tpu_v4", "tpu_v5e", "cpu"),
        ("https://cloud.google.com/tpu/docs/v4 (275 TFLOP/s bf16 per chip; "
         "HBM2 32 GiB, 1200 GB/s)",
         "libtpu 0.0.42's v4 topology: chips_per_host_bounds 2x2x1 (a v4-8 "
         "is one host of 4 chips)"),
        "float32 as for v5e. Costs from the XLA:TPU v4 module when it was "
        "compiled (--tpu=v5e,v4), else from v5e's: at these batches the two "
        "agree in FLOPs and within 5% in bytes."),
    "h100_sxm": Chip(
        "H100 SXM", {"bfloat16": 989.5e12, "float32": 494.5e12}, 3.35e12, 8,
        ("cpu",),
        ("https://www.nvidia.com/en-us/data-center/h100/ (SXM: BF16 tensor "
         "1,979 and TF32 tensor 989 TFLOP/s with sparsity, half that dense; "
         "FP32 67 TFLOP/s; HBM3 3.35 TB/s; 8 GPUs per HGX/DGX node)",
         "https://docs.jax.dev/en/latest/201/precision.html (default "
         "float32 matmul/conv precision: TF32 on recent GPUs, bf16 on TPU)"),
        "float32 uses the dense TF32 tensor-core peak (JAX's default "
        "precision on Hopper); at precision=highest it would be 67 TFLOP/s. "
        "No XLA:GPU compiler here: FLOPs and bytes are XLA:CPU's module's "
        "(no TPU lane padding, as on a GPU); its bfloat16 module converts "
        "convolutions back to float32, so bfloat16 bytes are overstated."),
}


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog=f"python -m benchmarks.{NAME}",
      description="Roofline projection of the canonical step (no step runs).")
  parser.add_argument("--batches", default=",".join(map(str, BATCHES)),
                      help="per-chip batch sizes (images; 2 views each)")
  parser.add_argument("--precisions", default=",".join(common.PRECISIONS))
  parser.add_argument("--tpu", default="v5e",
                      help="TPU topologies to compile for: comma list of "
                           f"{sorted(TPU_TOPOLOGIES)} or 'none' (needs "
                           "libtpu; skipped with a message without it)")
  parser.add_argument("--input_results", default=None,
                      help="input_pipeline JSONL (default benchmarks/results)")
  parser.add_argument("--costs_json", default=None,
                      help="cache of compiled costs: entries found there are "
                           "not compiled again, new ones are added")
  parser.add_argument("--results", default=None, help="JSONL to append to")
  parser.add_argument("--markdown", default=None,
                      help="table to write (default benchmarks/results/"
                           "projection.md)")
  args = parser.parse_args(argv)
  args.batches = [int(b) for b in args.batches.split(",") if b]
  args.precisions = [p for p in args.precisions.split(",") if p]
  args.tpu = [] if args.tpu == "none" else [
      f"tpu_{t}" for t in args.tpu.split(",") if t]
  bad = sorted(set(args.precisions) - set(common.PRECISIONS))
  if set(args.tpu) - {f"tpu_{name}" for name in TPU_TOPOLOGIES}:
    raise SystemExit(f"--tpu: expected a comma list of {sorted(TPU_TOPOLOGIES)}"
                     " or 'none'")
  if bad or not args.batches or min(args.batches) < 2:
    raise SystemExit(f"--precisions must be in {common.PRECISIONS} and "
                     f"--batches >= 2 (got {args.precisions}, {args.batches})")
  return args


# ---------------------------------------------------------------- lowering


def tpu_devices(target):
  """One device of a compile-only TPU topology (no TPU needed), or None."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no GCE metadata server
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    topology = topologies.get_topology_desc(
        topology_name=TPU_TOPOLOGIES[target[len("tpu_"):]], platform="tpu")
  except Exception as e:  # pylint: disable=broad-except
    # libtpu missing, or held by another process (its lock file): the
    # caller skips the target.
    print(f"no {target} compiler: {str(e).splitlines()[0][:200]}",
          file=sys.stderr)
    return None
  return topology.devices[:1]


def lower_step(batch, precision, devices, widths=(32, 64, 128, 256, 512),
               size=SIZE):
  """The canonical step lowered on a 1-device mesh of `devices`, abstractly.

  The state and batch are `ShapeDtypeStruct`s, so nothing is initialised or
  run: only tracing and lowering happen here.
  """
  if not devices:
    raise ValueError("lower_step needs a device (got none)")
  import jax  # pylint: disable=g-import-not-at-top
  from medclr.train import loop  # pylint: disable=g-import-not-at-top
  from medclr import methods  # pylint: disable=g-import-not-at-top
  from medclr import optim  # pylint: disable=g-import-not-at-top
  from medclr import sharding  # pylint: disable=g-import-not-at-top
  from medclr.train import steps  # pylint: disable=g-import-not-at-top

  config = pretrain_step.canonical_config(
      batch=batch, size=size, widths=widths, precision=precision,
      preset="none")
  method = methods.get_method(config)
  tx, lr_fn = optim.make_optimizer(config.optim, 1, config.batch_size)
  mesh = jax.make_mesh((1,), (sharding.DATA_AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Explicit,))
  with jax.set_mesh(mesh):
    graphdef, abstract, _ = loop.init_state(method.make_model, tx, mesh,
                                            config.seed, method.init_aux)
  # Outside the mesh: the step closes over a concrete PRNG key, which a
  # compile-only TPU device could not hold.
  step = steps.make_pretrain_step(graphdef, tx, lr_fn, method, config.seed)
  view = jax.ShapeDtypeStruct((batch, size, size, config.data.in_channels),
                              jax.numpy.float32,
                              sharding=sharding.data_sharding(mesh))
  with jax.set_mesh(mesh):
    return jax.jit(step, donate_argnums=0).lower(
        abstract, {"view1": view, "view2": view})


def step_cost(compiled):
  """FLOPs and bytes accessed of one compiled step."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list):  # older jax: one dict per device
    analysis = analysis[0]
  return {"flops": float(analysis["flops"]),
          "bytes_accessed": float(analysis["bytes accessed"])}


_DEFINITION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[")
_CONVOLUTION = re.compile(r"\sconvolution\(([^)]*)\)")
_TYPE = re.compile(r"\w+\[[^\]]*\](\{[^}]*\})?")


def conv_operand_dtypes(hlo_text):
  """Counter of (lhs dtype, rhs dtype) over every convolution in HLO text.

  HLO prints operands by name only, so names are first mapped to the element
  type of their definition (names are unique within a module).
  """
  lines = hlo_text.splitlines()
  dtypes = {}
  for line in lines:
    match = _DEFINITION.match(line)
    if match:
      dtypes[match.group(1)] = match.group(2)
  found = collections.Counter()
  for line in lines:
    match = _CONVOLUTION.search(line)
    if match:
      # Drop printed operand types (their shapes and layouts hold commas).
      operands = _TYPE.sub("", match.group(1))
      names = [o.strip().lstrip("%") for o in operands.split(",")]
      found[tuple(dtypes.get(n, "?") for n in names[:2])] += 1
  return found


def compile_costs(targets, batches, precisions, cache=None):
  """{"target/precision/batch": cost dict} for every target available.

  `cache` (a JSON file) keeps costs across runs: XLA:TPU takes minutes per
  module here, so a re-run only compiles what is missing.
  """
  import jax  # pylint: disable=g-import-not-at-top
  costs = _read_json(cache)
  for target in targets:
    missing = [(precision, batch) for precision in precisions
               for batch in batches
               if cost_key(target, precision, batch) not in costs]
    if not missing:
      continue
    devices = (jax.devices("cpu")[:1] if target == "cpu"
               else tpu_devices(target))
    if devices is None:
      continue  # tpu_devices said why; rows fall back to another module
    for precision, batch in missing:
      key = cost_key(target, precision, batch)
      costs[key] = module_cost(lower_step(batch, precision, devices))
      print(f"{key}: {costs[key]['flops'] / 1e9:.0f} GFLOP, "
            f"{costs[key]['bytes_accessed'] / 1e9:.2f} GB", file=sys.stderr)
      _write_json(cache, costs)
  return costs


def cost_key(target, precision, batch):
  return f"{target}/{precision}/{batch}"


def module_cost(lowered):
  """Cost analysis of the compiled module, and its convolutions' dtypes."""
  compiled = lowered.compile()
  cost = step_cost(compiled)
  cost["conv_dtypes_lowered"] = _dtype_summary(
      conv_operand_dtypes(lowered.as_text(dialect="hlo")))
  cost["conv_dtypes_compiled"] = _dtype_summary(
      conv_operand_dtypes(compiled.as_text()))
  return cost


def _read_json(path):
  if not path or not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _write_json(path, value):
  if path:
    with open(path, "w", encoding="utf-8") as f:
      json.dump(value, f, indent=1, sort_keys=True)


def _dtype_summary(counter):
  return {"x".join(pair): n for pair, n in sorted(counter.items())}


# ---------------------------------------------------------------- roofline


def roofline(flops, bytes_accessed, peak_flops, bandwidth):
  """Step time bound: the slower of compute at peak and memory at bandwidth."""
  compute_s = flops / peak_flops
  memory_s = bytes_accessed / bandwidth
  return {"compute_s": compute_s, "memory_s": memory_s,
          "step_s": max(compute_s, memory_s),
          "bound": "compute" if compute_s >= memory_s else "memory"}


def model_flops(batch, widths=(32, 64, 128, 256, 512), size=SIZE):
  """The step's useful FLOPs, as pretrain_step counts them (2 views)."""
  from medclr.models import encoder  # pylint: disable=g-import-not-at-top
  return 3 * 2 * batch * encoder.encoder_forward_flops(3, widths, size, size)


def project(cost, chip, precision, batch, useful_flops):
  """One projected row: step time, MFU and the host input rate needed."""
  peak = chip.peak_flops[precision]
  bound = roofline(cost["flops"], cost["bytes_accessed"], peak,
                   chip.hbm_bytes_per_s)
  views_per_s = 2 * batch / bound["step_s"]
  return {
      **bound,
      "mfu": useful_flops / (bound["step_s"] * peak),
      "views_per_s_per_chip": views_per_s,
      # What one host's input pipeline must deliver (two-view images/s
      # counts views, as benchmarks/input_pipeline.py does).
      "host_views_per_s_needed": views_per_s * chip.chips_per_host,
  }


def cores_needed(views_per_s, per_core_views_per_s):
  return math.ceil(views_per_s / per_core_views_per_s)


def input_rates(path=None, crop_site="host"):
  """(preset -> measured host-side views/s of one process, record info).

  `crop_site` picks records of `input_pipeline --crop_site`. Committed
  records name the field as the flag was named when they were written:
  'crops' before issue 26's renames, none before the flag existed (host).
  """
  path = path or common.default_results_path(input_pipeline.NAME)
  match = {"benchmark": input_pipeline.NAME, "batch": 16, "size": SIZE,
           "worker_count": 0}
  record = common.latest_record(path, crop_site=crop_site, **match)
  if record is None:
    record = common.latest_record(path, crops=crop_site, **match)
  if record is None and crop_site == "host":
    record = common.latest_record(path, crops=None, crop_site=None, **match)
  if record is None:
    return {}, None
  rates = {name: values["host_images_per_s"]
           for name, values in record["presets"].items()}
  return rates, {"file": common.repo_relative(path),
                 "timestamp": record["timestamp"],
                 "git_commit": record["git_commit"], "data": record["data"],
                 "load_avg": record["machine"].get("load_avg_1m_5m_15m")}


# ---------------------------------------------------------------- report


def chip_cost(costs, chip, precision, batch):
  """(source target, cost) of the best compiled module for `chip`."""
  for target in chip.cost_from:
    cost = costs.get(cost_key(target, precision, batch))
    if cost is not None:
      return target, cost
  raise KeyError(f"no compiled cost for {chip.name} {precision} {batch}")


def rows_for(costs, precisions, batches, rates, device_rates=None):
  """One projected row per (chip, precision, batch); `device_rates` are the
  host rates with `config.data.crop_site='device'`."""
  rows = []
  for key, chip in HARDWARE.items():
    for precision in precisions:
      for batch in batches:
        source, cost = chip_cost(costs, chip, precision, batch)
        row = {"chip": key, "precision": precision, "batch_per_chip": batch,
               "cost_from": COST_LABELS[source],
               "xla_flops": cost["flops"],
               "xla_bytes_accessed": cost["bytes_accessed"],
               "model_flops": model_flops(batch),
               "peak_flops": chip.peak_flops[precision],
               "hbm_bytes_per_s": chip.hbm_bytes_per_s,
               "chips_per_host": chip.chips_per_host,
               **project(cost, chip, precision, batch, model_flops(batch))}
        row["conv_dtypes"] = {"lowered": cost["conv_dtypes_lowered"],
                              "compiled": cost["conv_dtypes_compiled"]}
        row["host_cores_needed"] = {
            preset: cores_needed(row["host_views_per_s_needed"], rate)
            for preset, rate in rates.items()}
        row["host_cores_needed_device_crops"] = {
            preset: cores_needed(row["host_views_per_s_needed"], rate)
            for preset, rate in (device_rates or {}).items()}
        rows.append(row)
  return rows


def _si(value, unit):
  for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if value >= scale:
      return f"{value / scale:.3g} {prefix}{unit}"
  return f"{value:.3g} {unit}"


def table(rows, preset="simclr_strong"):
  """The projection table: one line per (chip, precision, batch)."""
  head = ["chip", "precision", "batch/chip", "costs from", "GFLOP/step",
          "GB/step", "compute / memory ms", "step ms", "MFU",
          "views/s/chip", "views/s/host", f"host cores ({preset})",
          "host cores (all presets)",
          f"host cores, device crops ({preset})"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cores = r["host_cores_needed"]
    device = r.get("host_cores_needed_device_crops", {})
    cells = [HARDWARE[r["chip"]].name, r["precision"], r["batch_per_chip"],
             r["cost_from"], f"{r['xla_flops'] / 1e9:.0f}",
             f"{r['xla_bytes_accessed'] / 1e9:.1f}",
             f"{r['compute_s'] * 1e3:.1f} / {r['memory_s'] * 1e3:.1f}",
             f"{r['step_s'] * 1e3:.1f} ({r['bound']})", f"{r['mfu']:.2f}",
             f"{r['views_per_s_per_chip']:,.0f}",
             f"{r['host_views_per_s_needed']:,.0f}",
             cores.get(preset, "-"),
             f"{min(cores.values())}-{max(cores.values())}" if cores else "-",
             device.get(preset, "-")]
    lines.append("| " + " | ".join(map(str, cells)) + " |")
  return "\n".join(lines)


def conv_dtype_lines(costs):
  """Which dtypes the convolutions take, per compiled module (bf16 check)."""
  lines = ["| module | lowered (what medclr hands XLA) | compiled |",
           "|---|---|---|"]
  for key in sorted(costs):
    target, precision, batch = key.split("/")
    if batch != str(max(int(k.split("/")[2]) for k in costs)):
      continue  # the same at every batch: show one
    cost = costs[key]
    lines.append(f"| {COST_LABELS[target]} {precision} | "
                 f"{_counts(cost['conv_dtypes_lowered'])} | "
                 f"{_counts(cost['conv_dtypes_compiled'])} |")
  return "\n".join(lines)


def _counts(summary):
  return ", ".join(f"{n} {pair}" for pair, n in sorted(summary.items()))


def hardware_lines():
  lines = ["| chip | peak bf16 | peak float32 (JAX default precision) | "
           "HBM bandwidth | chips/host | costs from | sources | note |",
           "|---|---|---|---|---|---|---|---|"]
  for chip in HARDWARE.values():
    lines.append(
        f"| {chip.name} | {_si(chip.peak_flops['bfloat16'], 'FLOP/s')} | "
        f"{_si(chip.peak_flops['float32'], 'FLOP/s')} | "
        f"{_si(chip.hbm_bytes_per_s, 'B/s')} | {chip.chips_per_host} | "
        f"{', '.join(chip.cost_from)} | {'; '.join(chip.sources)} | "
        f"{chip.note} |")
  return "\n".join(lines)


def _rates_text(rates, info):
  """'preset rate, ...' and where the record came from."""
  text = ", ".join(f"{p} {rates[p]:.0f}" for p in sorted(rates))
  source = (f"`{info['file']}`, record of {info['timestamp']} (commit "
            f"{info['git_commit'][:7]}, data: {info['data']}, load average "
            f"{info['load_avg']})" if info else "no record found")
  return f"{text or '-'}. Source: {source}"


def markdown(rows, host, device, costs):
  """The projection report: table, inputs and assumptions.

  `host` and `device` are (rates, record info) of `input_rates` for host
  and device crops.
  """
  return f"""# Projection: the canonical step on TPU v5e, TPU v4 and H100

**These are projections from XLA's cost analysis, not measurements.** No
step ran on any accelerator: `python -m benchmarks.projection` lowers and
compiles the canonical pretraining step (`unet2d-32` SimCLR, 128 px, 2 views
per image, Adam, augmentation preset `none`; docs/protocol.md section 2)
with abstract inputs on one device and reads `compiled.cost_analysis()`.

Step time = max(XLA FLOPs / peak FLOP/s, XLA bytes accessed / HBM
bandwidth); MFU = the model's FLOPs (3x the encoder's forward convolutions,
{model_flops(1) / 1e9:.1f} GFLOP per image of 2 views, as
`benchmarks/pretrain_step.py` counts them) / (step time x peak). Views/s
count both views (2 per image), as the other benchmarks do; "views/s/host"
is what one host's input pipeline must deliver to keep all its chips busy.
"host cores" is how many host cores, at the measured Grain rate per core
(decode + random resized crops, one process each; below), deliver that, for
SimCLR's preset and the range over all presets; "device crops" is the same
with `config.data.crop_site='device'`, where the host only ships each image
fitted into a fixed canvas and the step cuts the views. The device-side
augmentation (and, with device crops, the crops) runs inside the step on
the chip and is not in the step cost above (preset `none`).

{table(rows)}

## Inputs

Measured host-side input rate, views/s per core (one Python process,
`worker_count=0`, `host_images_per_s` of `benchmarks/input_pipeline.py`),
host crops: {_rates_text(*host)}.

Device crops (`--crop_site=device`): {_rates_text(*device)}.

{hardware_lines()}

Convolution operand dtypes (the bfloat16 option, `config.model.dtype`):

{conv_dtype_lines(costs)}

## Assumptions and limits

- A roofline is a lower bound on step time: it assumes every op runs at
  peak FLOP/s or at full HBM bandwidth and that compute and memory overlap
  perfectly. Real steps are slower (kernel launch and op overheads, BatchNorm
  reductions, the all-reduce across chips, host transfers).
- Bytes accessed is XLA's sum over the compiled module's top-level ops
  (fusions) of operand and result bytes; traffic inside a fusion is not
  counted. It depends on the compiler's fusion and layouts (XLA:TPU, for
  one, pads the channel dimension of the 32- and 64-channel levels to 128
  lanes), so the XLA:CPU and XLA:TPU modules differ at the same batch.
- Single chip: the gradient all-reduce over the data axis (about
  {_param_bytes_text()} of float32 gradients per step, independent of the
  batch) is not included.
- float32 on TPU: no float32 peak is published; JAX's default precision
  computes float32 convolutions with bfloat16 MXU passes (the compiled
  module's convolutions above mix bf16 and f32 operands), so the bf16 peak
  is used, an upper bound. H100 float32 uses TF32 tensor cores (JAX's
  default on Hopper).
- Host input: assumes the host's cores match this machine's (AMD EPYC, one
  core per Grain process) and scale linearly with Grain workers
  (`config.data.worker_count`); the measured rates are from DRIVE-sized
  phantom images (584 px) cropped to 128 px.
- Device crops move bytes instead of work: each image crosses the host to
  chip link as its uint8 canvas (480 px for SimCLR's area 0.08 at 128 px
  views: 0.69 MB, against 0.39 MB for two float32 128 px views); neither
  that link nor the crops' cost on the chip is in the projection.
"""


def _param_bytes_text(widths=(32, 64, 128, 256, 512), hidden=512, out=128):
  """float32 gradient size of the encoder convolutions and the head."""
  count, previous = 0, 3
  for width in widths:
    count += 9 * previous * width + 9 * width * width
    previous = width
  count += previous * hidden + hidden * out
  return f"{4 * count / 1e6:.0f} MB"


def main(argv=None):
  """Compiles (or reads cached costs), projects, writes rows and the table."""
  args = parse_args(argv)
  costs = compile_costs(["cpu"] + args.tpu, args.batches, args.precisions,
                        cache=args.costs_json)
  rates, rates_info = input_rates(args.input_results)
  device_rates, device_info = input_rates(args.input_results, "device")
  rows = rows_for(costs, args.precisions, args.batches, rates, device_rates)
  md_path = args.markdown or common.RESULTS_DIR / f"{NAME}.md"
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(markdown(rows, (rates, rates_info), (device_rates, device_info),
                     costs))
  return [common.report(NAME, {
      **row, "input_views_per_s_per_core": rates, "input_source": rates_info,
      "input_views_per_s_per_core_device_crops": device_rates,
      "input_source_device_crops": device_info}, args.results)
          for row in rows]


if __name__ == "__main__":
  main(sys.argv[1:])
