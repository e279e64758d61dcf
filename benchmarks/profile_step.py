r"""Per-op time of the canonical step, medclr (XLA:CPU) and PyTorch side by side.

  python -m benchmarks.profile_step                 # unet2d-32, 16 x 2 views
  python -m benchmarks.profile_step --notorch --steps=3

medclr: the step of `benchmarks.pretrain_step` (augmentation preset 'none')
runs `--steps` times under `jax.profiler.trace`; XLA:CPU records one trace
event per executed HLO instruction (thunk), which is matched to the compiled
HLO to get its opcode, shape and, for fusions, what the fused computation
holds; convolutions are split into forward, input gradient and filter
gradient (`conv_kind`). Library convolutions (Eigen) run on the intra-op
thread pool and their trace event covers only their dispatch, so each of
the encoder's convolutions is also timed alone (`conv_ms`: forward, input
grad, filter grad, jitted separately on the step's 2B views). PyTorch: the
peer's step under `torch.profiler`, self CPU time per aten op, and the same
per-conv table (`conv_ms`: forward, forward + gradients). Times are
milliseconds per step; `step_s` is the wall time of a step measured before
profiling. Op times can add up to more than the step when ops overlap on the
2 cores.

The last stdout line is one JSON object, also appended to
benchmarks/results/profile_step.jsonl.
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

from benchmarks import common
from benchmarks import pretrain_step

NAME = "profile_step"
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([^\s=]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"(?<![\w.\-])([a-z][a-z0-9\-_]*)\(")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([^\s(]+)\s*\(.*\{\s*$")


def parse_hlo(text):
  """{instruction: (opcode, line)}, {computation: [(opcode, line)]} of HLO."""
  instructions, computations, current = {}, collections.defaultdict(list), None
  for line in text.splitlines():
    head = _COMPUTATION.match(line)
    if head and "=" not in line.split("(")[0]:
      current = head.group(1)
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    opcode = _OPCODE.search(match.group(2))
    if opcode:
      instructions[match.group(1)] = (opcode.group(1), line.strip())
      computations[current].append((opcode.group(1), line.strip()))
  return instructions, computations


def conv_kind(line):
  """'conv forward' / 'conv input grad' / 'conv filter grad' of a conv line.

  XLA:CPU canonicalises every convolution to `b01f_01io->b01f` with explicit
  transposes around it, so the kind is read from elsewhere. The filter
  gradient convolves the input with the output gradient: its window is a
  whole feature map, larger than its output (the kernel, e.g. 3x3). Of the
  rest, the op_name metadata marks the backward pass (`transpose(jvp`).
  """
  shape = re.search(r"=\s*[a-z0-9]+\[([0-9,]*)\]", line)
  dims = [int(d) for d in shape.group(1).split(",") if d] if shape else []
  window = re.search(r"window=\{size=(\d+)x(\d+)", line)
  if window and len(dims) == 4 and (
      int(window.group(1)) > dims[1] or int(window.group(2)) > dims[2]):
    return "conv filter grad"
  if "transpose(jvp" in line:
    return "conv input grad"
  return "conv forward"


def category(name, instructions, computations):
  """A readable op class for an HLO instruction name."""
  opcode, line = instructions[name]
  if opcode == "convolution":
    return conv_kind(line)
  if opcode in ("fusion", "custom-call", "call"):
    called = re.search(r"calls=%?([^\s,}]+)", line)
    body = computations.get(called.group(1), ()) if called else ()
    inner = {op for op, _ in body}
    if "convolution" in inner:
      conv_line = next(text for op, text in body if op == "convolution")
      return conv_kind(conv_line) + f" ({'ynn' if 'ynn' in name else 'fused'})"
    if "dot" in inner:
      return "dot (fused)"
    if "reduce" in inner or "reduce-window" in inner:
      return "reduction fusion"
    if inner and inner <= {"parameter", "transpose", "copy", "bitcast",
                           "reshape", "broadcast", "slice", "pad",
                           "concatenate", "reverse"}:
      return "layout (transpose/copy/pad)"
    return "elementwise fusion"
  if opcode in ("transpose", "copy", "pad", "reverse", "slice", "bitcast",
                "reshape", "concatenate"):
    return "layout (transpose/copy/pad)"
  if opcode in ("reduce", "reduce-window", "select-and-scatter"):
    return "reduction / pooling"
  return opcode


def trace_events(directory):
  """Complete ('X') events of the perfetto trace written under directory."""
  files = glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"),
                    recursive=True)
  if not files:
    raise RuntimeError(f"no perfetto_trace.json.gz under {directory}")
  with gzip.open(sorted(files)[-1]) as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  return [e for e in events if e.get("ph") == "X" and "dur" in e]


def summarise(per_key_us, steps, top=None):
  """{key: ms per step}, largest first."""
  items = sorted(per_key_us.items(), key=lambda kv: -kv[1])[:top]
  return {k: round(v / steps / 1e3, 2) for k, v in items}


def report_times(wall, by_category, by_op, args):
  """The per-framework record: wall step time, op totals, top ops."""
  return {
      "step_s": common.median(wall),
      "op_ms_sum": round(sum(by_category.values()) / args.steps / 1e3, 1),
      "ms_per_step": summarise(by_category, args.steps),
      "top_ops_ms": summarise(by_op, args.steps, top=args.top),
  }


def profile_medclr(args):
  """Per-category and per-op ms/step of medclr's step, and its wall time."""
  import jax  # pylint: disable=g-import-not-at-top
  from medclr import sharding  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh(1)
  model = pretrain_step.Model(pretrain_step.canonical_config(
      batch=args.batch, size=args.size, widths=args.widths), mesh)
  step = pretrain_step.MedclrStep(model, mesh=mesh, preset="none")
  instructions, computations = parse_hlo(step.compiled.as_text())
  wall = common.time_calls(step, args.steps, args.warmup)
  with tempfile.TemporaryDirectory() as directory:
    with jax.profiler.trace(directory, create_perfetto_trace=True):
      for _ in range(args.steps):
        step()
    events = trace_events(directory)
  by_category, by_op = collections.Counter(), collections.Counter()
  for event in events:
    name = event["name"]
    if name not in instructions:
      continue
    kind = category(name, instructions, computations)
    by_category[kind] += event["dur"]
    shape = re.search(r"=\s*(\S+)", instructions[name][1]).group(1)
    by_op[f"{kind}: {name} {shape}"] += event["dur"]
  return report_times(wall, by_category, by_op, args)


def conv_layers(args):
  """(in_channels, out_channels, side) of every 3x3 conv of the encoder."""
  layers, previous = [], 3
  for level, width in enumerate(args.widths):
    side = args.size // 2**level
    layers += [(previous, width, side), (width, width, side)]
    previous = width
  return layers


def time_medclr_convs(args):
  """ms of each encoder conv alone in XLA: forward, input grad, filter grad.

  XLA:CPU's trace does not show how long a library convolution runs (its
  event covers the dispatch), so the step's convolutions are timed one by
  one here, jitted separately, on the step's batch of 2B views.
  """
  import jax  # pylint: disable=g-import-not-at-top

  def conv(x, k):
    return jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  rows = {}
  for index, (c_in, c_out, side) in enumerate(conv_layers(args)):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (2 * args.batch, side, side, c_in))
    k = jax.random.normal(keys[1], (3, 3, c_in, c_out)) * 0.05
    dy = jax.random.normal(keys[2], (2 * args.batch, side, side, c_out))
    kinds = {
        "forward": (jax.jit(conv), (x, k)),
        "input_grad": (jax.jit(lambda k, dy: jax.vjp(
            lambda x: conv(x, k), x)[1](dy)[0]), (k, dy)),
        "filter_grad": (jax.jit(lambda x, dy: jax.vjp(
            lambda k: conv(x, k), k)[1](dy)[0]), (x, dy)),
    }
    if index == 0:  # the step never differentiates the input images
      del kinds["input_grad"]
    row = {}
    for kind, (fn, inputs) in kinds.items():
      times = common.time_calls(
          lambda fn=fn, inputs=inputs: jax.block_until_ready(fn(*inputs)),
          args.conv_repeats, 1)
      row[kind] = round(common.median(times) * 1e3, 1)
    row["total"] = round(sum(row.values()), 1)
    rows[f"{c_in}->{c_out}@{side}"] = row
  return rows


def time_torch_convs(args):
  """ms of each encoder conv alone in PyTorch: forward, forward + backward.

  As in the step, the first conv's input (the images) gets no gradient.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_peer  # pylint: disable=g-import-not-at-top

  torch_peer.configure_threads()
  rows = {}
  for index, (c_in, c_out, side) in enumerate(conv_layers(args)):
    conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False).to(
        memory_format=torch.channels_last)
    x = torch.randn(2 * args.batch, c_in, side, side).contiguous(
        memory_format=torch.channels_last).requires_grad_(index > 0)
    dy = torch.randn(2 * args.batch, c_out, side, side).contiguous(
        memory_format=torch.channels_last)

    def forward():
      with torch.no_grad():
        conv(x)

    def both():
      wrt = (x, conv.weight) if index else (conv.weight,)
      torch.autograd.grad(conv(x), wrt, dy)

    row = {}
    for kind, fn in (("forward", forward), ("forward_and_grads", both)):
      row[kind] = round(common.median(common.time_calls(
          fn, args.conv_repeats, 1)) * 1e3, 1)
    rows[f"{c_in}->{c_out}@{side}"] = row
  return rows


def torch_category(name):
  if "convolution_backward" in name:
    return "conv backward (input + filter grad)"
  if "convolution" in name:
    return "conv forward"
  if "batch_norm" in name:
    return "batch norm"
  if "threshold" in name or "relu" in name:
    return "relu"
  if "max_pool" in name:
    return "pooling"
  if "adam" in name or "_foreach" in name:
    return "optimizer"
  if name.startswith("aten::"):
    return "other aten"
  return "framework"


def profile_torch(args):
  """Per-category and per-op self-CPU ms/step of the PyTorch peer's step."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_peer  # pylint: disable=g-import-not-at-top

  step = torch_peer.make_pretrain_step(
      batch=args.batch, size=args.size, widths=args.widths,
      precision="float32", temperature=pretrain_step.TEMPERATURE)
  wall = common.time_calls(step, args.steps, args.warmup)
  activities = [torch.profiler.ProfilerActivity.CPU]
  with torch.profiler.profile(activities=activities) as profiler:
    for _ in range(args.steps):
      step()
  by_category, by_op = collections.Counter(), collections.Counter()
  for average in profiler.key_averages():
    by_category[torch_category(average.key)] += average.self_cpu_time_total
    by_op[average.key] += average.self_cpu_time_total
  return report_times(wall, by_category, by_op, args)


def parse_args(argv):
  parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--size", type=int, default=128)
  parser.add_argument("--widths", default=pretrain_step.CANONICAL_WIDTHS)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--top", type=int, default=15,
                      help="how many single ops to list")
  parser.add_argument("--conv_repeats", type=int, default=5,
                      help="timed calls per single-conv measurement (0: "
                      "skip the per-conv table)")
  common.add_torch_flags(parser)
  parser.add_argument("--results", default=None)
  args = parser.parse_args(argv)
  args.widths = common.parse_widths(args.widths)
  common.check_size(args.size, args.widths)
  return args


def main(argv=None):
  args = parse_args(argv)
  common.force_cpu_devices(1)
  start = time.perf_counter()
  result = {"batch": args.batch, "views": 2 * args.batch, "size": args.size,
            "widths": list(args.widths), "steps": args.steps,
            "medclr": profile_medclr(args)}
  if args.conv_repeats:
    result["medclr"]["conv_ms"] = time_medclr_convs(args)
    result["medclr"]["conv_ms_sum"] = round(sum(
        row["total"] for row in result["medclr"]["conv_ms"].values()), 1)
  if args.torch:
    try:
      result["torch"] = profile_torch(args)
      if args.conv_repeats:
        result["torch"]["conv_ms"] = time_torch_convs(args)
        result["torch"]["conv_ms_sum"] = round(sum(
            row["forward_and_grads"]
            for row in result["torch"]["conv_ms"].values()), 1)
    except ImportError as e:
      result["torch_skipped"] = (f"torch not importable ({e}); install the "
                                 "bench extra: pip install torch==2.13.0")
  result["wall_s"] = round(time.perf_counter() - start, 1)
  return common.report(NAME, result, args.results)


if __name__ == "__main__":
  main(sys.argv[1:])
