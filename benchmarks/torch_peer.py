r"""The PyTorch peer of medclr's canonical models and step.

The canonical step is docs/protocol.md section 2.

Layer for layer the `unet2d-32` models of `medclr.models`: per level two
3x3 conv (no bias: BatchNorm cancels it) + BatchNorm (PyTorch momentum 0.1 =
Flax 0.9, eps 1e-5 in both) + ReLU, 2x2 max-pool between levels; the
contrastive head is global average pool -> Linear 512 -> ReLU -> Linear 128;
the U-Net decoder is a 2x2 stride-2 transposed conv, skip concatenation and
the same two-conv block per level, then a 1x1 conv. The SimCLR step is
NT-Xent (temperature 0.1) over all 2B views and Adam 1e-3.

It runs in the fastest standard configuration a PyTorch user would pick on
CPU: `channels_last` tensors, all cores as threads, and
`torch.autocast('cpu', dtype=torch.bfloat16)` for bfloat16.

Used in-process by `benchmarks.pretrain_step` / `benchmarks.inference`, or as
a separate process (so XLA's and PyTorch's thread pools never meet):

  python -m benchmarks.torch_peer --batch=16 --size=128 --precision=float32

which prints one JSON line. Needs the `bench` extra (torch==2.13.0).
"""
import argparse
import contextlib
import json
import os
import sys

from benchmarks import common
import torch
from torch import nn
import torch.nn.functional as F

# PyTorch's momentum is the weight of the new batch statistic: 1 - Flax's 0.9.
BN_MOMENTUM = 0.1
BN_EPS = 1e-5


def configure_threads(threads=None):
  """Uses all cores (or `threads`) for PyTorch's intra-op parallelism."""
  torch.set_num_threads(int(threads or os.cpu_count() or 1))
  return torch.get_num_threads()


class ConvBlock(nn.Sequential):
  """Two (3x3 conv -> BatchNorm -> ReLU), as `medclr.models.encoder`."""

  def __init__(self, in_channels, out_channels):
    super().__init__(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
    )


class Encoder(nn.Module):
  """U-Net down path; returns every level's features, shallow to deep."""

  def __init__(self, in_channels, widths):
    super().__init__()
    channels = (in_channels,) + tuple(widths)
    self.levels = nn.ModuleList(
        ConvBlock(c_in, c_out) for c_in, c_out in zip(channels, channels[1:]))

  def forward(self, x):
    features = []
    for index, level in enumerate(self.levels):
      if index:
        x = F.max_pool2d(x, 2)
      x = level(x)
      features.append(x)
    return features


class ContrastiveModel(nn.Module):
  """Encoder -> global average pool -> Linear -> ReLU -> Linear."""

  def __init__(self, in_channels, widths, hidden_dim=512, out_dim=128):
    super().__init__()
    self.encoder = Encoder(in_channels, widths)
    self.projector = nn.Sequential(
        nn.Linear(widths[-1], hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim))

  def forward(self, x):
    pooled = self.encoder(x)[-1].float().mean(dim=(2, 3))
    return self.projector(pooled)


class UNet(nn.Module):
  """Encoder + (transposed conv, concat skip, ConvBlock) per level + 1x1."""

  def __init__(self, in_channels, widths, num_classes=1):
    super().__init__()
    self.encoder = Encoder(in_channels, widths)
    self.upconvs = nn.ModuleList(
        nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
        for i in range(len(widths) - 1))
    self.blocks = nn.ModuleList(
        ConvBlock(2 * widths[i], widths[i]) for i in range(len(widths) - 1))
    self.head = nn.Conv2d(widths[0], num_classes, 1)

  def forward(self, x):
    features = self.encoder(x)
    x = features[-1]
    for index in reversed(range(len(features) - 1)):
      x = self.upconvs[index](x)
      x = self.blocks[index](torch.cat([x, features[index]], dim=1))
    return self.head(x).float()


def nt_xent(z1, z2, temperature):
  """NT-Xent over the 2N views [z1; z2], as losses.nt_xent_reference."""
  n = z1.shape[0]
  z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
  logits = z @ z.T / temperature
  self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
  logits = logits.masked_fill(self_mask, float("-inf"))
  positive = torch.cat([torch.arange(n) + n, torch.arange(n)]).to(z.device)
  return F.cross_entropy(logits, positive)


def _copy(target, array):
  import numpy as np  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    target.copy_(torch.from_numpy(np.array(array, dtype=np.float32)))


def _load_conv_block(block, params, stats):
  """medclr ConvBlock (conv0, norm0, conv1, norm1) -> ConvBlock here."""
  for conv, norm, suffix in ((block[0], block[1], "0"), (block[3], block[4],
                                                          "1")):
    # Flax HWIO kernels -> PyTorch OIHW.
    _copy(conv.weight, params["conv" + suffix]["kernel"].transpose(3, 2, 0, 1))
    _copy(norm.weight, params["norm" + suffix]["scale"])
    _copy(norm.bias, params["norm" + suffix]["bias"])
    _copy(norm.running_mean, stats["norm" + suffix]["mean"])
    _copy(norm.running_var, stats["norm" + suffix]["var"])


def load_medclr_weights(model, params, batch_stats):
  """Copies a medclr model's pure-dict weights into the peer `model`.

  Makes the two frameworks compute the same function, which is how the tests
  check that the peer is layer-for-layer the same model.

  Args:
    model: a `ContrastiveModel` or `UNet` of this module.
    params: `nnx.to_pure_dict` params of the matching medclr model (numpy).
    batch_stats: its BatchNorm running statistics (numpy).
  """
  for index, level in enumerate(model.encoder.levels):
    _load_conv_block(level, params["encoder"][f"level{index}"],
                     batch_stats["encoder"][f"level{index}"])
  if isinstance(model, ContrastiveModel):
    for layer, name in ((model.projector[0], "hidden"),
                        (model.projector[2], "output")):
      _copy(layer.weight, params["projector"][name]["kernel"].T)
      _copy(layer.bias, params["projector"][name]["bias"])
    return
  for index, (upconv, block) in enumerate(zip(model.upconvs, model.blocks)):
    level = params["decoder"][f"level{index}"]
    # PyTorch's transposed conv is the adjoint of its conv, which correlates
    # with the spatially flipped kernel of lax.conv_transpose.
    kernel = level["upconv"]["kernel"][::-1, ::-1]
    _copy(upconv.weight, kernel.transpose(2, 3, 0, 1))
    _copy(upconv.bias, level["upconv"]["bias"])
    _load_conv_block(block, level["block"],
                     batch_stats["decoder"][f"level{index}"]["block"])
  _copy(model.head.weight, params["head"]["kernel"].transpose(3, 2, 0, 1))
  _copy(model.head.bias, params["head"]["bias"])


def autocast(precision):
  """The context a PyTorch user wraps the forward pass in for `precision`."""
  if precision == "bfloat16":
    return torch.autocast("cpu", dtype=torch.bfloat16)
  if precision == "float32":
    return contextlib.nullcontext()
  raise ValueError(f"precision must be 'float32' or 'bfloat16', got "
                   f"{precision!r}")


def make_pretrain_step(*, batch, size, widths, precision, in_channels=3,
                       temperature=0.1, threads=None, hidden_dim=512,
                       out_dim=128, seed=0):
  """The peer's SimCLR train step as a no-argument callable.

  Args:
    batch: images per step; each gives two views, so 2 * batch views.
    size: view side in pixels.
    widths: encoder widths.
    precision: 'float32' or 'bfloat16' (autocast).
    in_channels: image channels.
    temperature: NT-Xent temperature.
    threads: intra-op threads; default all cores.
    hidden_dim: projection head hidden width.
    out_dim: projection dimension.
    seed: torch seed of weights and inputs.

  Returns:
    step(): runs one step and returns its loss as a float; `step.threads`
    is the thread count in use.
  """
  threads = configure_threads(threads)
  torch.manual_seed(seed)
  model = ContrastiveModel(in_channels, widths, hidden_dim, out_dim)
  model = model.to(memory_format=torch.channels_last).train()
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  views = torch.rand(2 * batch, in_channels, size, size).contiguous(
      memory_format=torch.channels_last)

  def step():
    optimizer.zero_grad(set_to_none=True)
    with autocast(precision):
      z = model(views)
    loss = nt_xent(z[:batch], z[batch:], temperature)
    loss.backward()
    optimizer.step()
    return float(loss.detach())

  step.threads = threads
  return step


def measure_pretrain_step(*, steps, warmup, **step_args):
  """Median images/s (views) of the SimCLR train step in PyTorch.

  Args:
    steps: timed steps.
    warmup: untimed steps first (oneDNN picks kernels on the first calls).
    **step_args: as `make_pretrain_step`.

  Returns:
    dict(images_per_s, step_s, step_times_s, threads, loss).
  """
  step = make_pretrain_step(**step_args)
  losses = []
  times = common.time_calls(lambda: losses.append(step()), steps, warmup)
  step_s = common.median(times)
  return {"images_per_s": 2 * step_args["batch"] / step_s, "step_s": step_s,
          "step_times_s": times, "threads": step.threads, "loss": losses[-1]}


def make_unet_predict(in_channels, widths, num_classes=1, threads=None,
                      seed=0):
  """(model, predict) where predict maps NHWC float32 numpy -> NHWC logits.

  Eval mode, `torch.inference_mode`, channels_last: what a PyTorch user runs
  for inference. The NHWC interface lets medclr's host loop drive it too.
  """
  configure_threads(threads)
  torch.manual_seed(seed)
  model = UNet(in_channels, widths, num_classes)
  model = model.to(memory_format=torch.channels_last).eval()

  def predict(images_nhwc):
    x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)
    with torch.inference_mode():
      logits = model(x.contiguous(memory_format=torch.channels_last))
    return logits.permute(0, 2, 3, 1).numpy()

  return model, predict


def _parse(argv):
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.torch_peer",
      description="PyTorch peer of the canonical SimCLR step; one JSON line.")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--size", type=int, default=128)
  parser.add_argument("--widths", default="32,64,128,256,512")
  parser.add_argument("--precision", default="float32",
                      choices=("float32", "bfloat16"))
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--threads", type=int, default=0,
                      help="0: all cores")
  parser.add_argument("--hidden_dim", type=int, default=512)
  parser.add_argument("--out_dim", type=int, default=128)
  return parser.parse_args(argv)


def main(argv=None):
  import resource  # pylint: disable=g-import-not-at-top
  args = _parse(argv)
  widths = tuple(int(w) for w in args.widths.split(","))
  result = measure_pretrain_step(
      batch=args.batch, size=args.size, widths=widths,
      precision=args.precision, steps=args.steps, warmup=args.warmup,
      threads=args.threads or None, hidden_dim=args.hidden_dim,
      out_dim=args.out_dim)
  result["peak_rss_mb"] = (
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
  result["torch"] = torch.__version__
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
