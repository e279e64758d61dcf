r"""The canonical SimCLR step: medclr vs PyTorch vs the peak.

The step is docs/protocol.md section 2.

  python -m benchmarks.pretrain_step                       # float32, 1 device
  python -m benchmarks.pretrain_step --precision=bfloat16

medclr's step is built exactly as `medclr.train.pretrain` builds it: the model
from `models.make_contrastive` (`unet2d-32`, canonical head), the state from
`loop.init_state` on a mesh, `steps.make_pretrain_step` jitted with
the state donated. The input is a synthetic batch of B images x 2 views
already on device, so only the step is timed.

Two medclr steps are measured:
  * `medclr_images_per_s`: augmentation preset 'none' (the device
    augmentation is then only a clip), the pure model step, which is what the
    PyTorch peer (`benchmarks/torch_peer.py`, no augmentation) does, so
    `ratio_vs_torch` compares like with like;
  * `medclr_images_per_s_with_aug`: the real training step with dm-pix
    augmentation (`--preset`, default simclr_strong) inside.

Images/s count views (2 per image). FLOPs are analytic: 3x the encoder's
forward convolution FLOPs per view (`encoder_forward_flops`); MFU divides the
achieved rate by a dense matmul's rate measured in the same run and precision.
The last stdout line is one JSON object, also appended to
benchmarks/results/pretrain_step.jsonl.
"""
import argparse
import json
import subprocess
import sys

from benchmarks import common

NAME = "pretrain_step"
METHODS = ("simclr",)
CANONICAL_WIDTHS = "32,64,128,256,512"
TEMPERATURE = 0.1
LEARNING_RATE = 1e-3


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog=f"python -m benchmarks.{NAME}",
      description="Canonical SimCLR step: medclr vs PyTorch; JSON last line.")
  # Only SimCLR so far: its step is the canonical one, the peer implements
  # it, and the synthetic batch holds its two views. Another method needs its
  # own inputs (e.g. multi-crop) and a peer before it can be added here.
  parser.add_argument("--method", default="simclr", choices=METHODS)
  parser.add_argument("--batch", type=int, default=16,
                      help="images per step (2 views each)")
  parser.add_argument("--size", type=int, default=128, help="view side")
  parser.add_argument("--widths", default=CANONICAL_WIDTHS,
                      help="encoder widths (unet2d-32 by default)")
  parser.add_argument("--hidden_dim", type=int,
                      default=common.CANONICAL_HEAD["hidden_dim"])
  parser.add_argument("--out_dim", type=int,
                      default=common.CANONICAL_HEAD["out_dim"])
  parser.add_argument("--precision", default="float32",
                      choices=common.PRECISIONS)
  parser.add_argument("--preset", default="simclr_strong",
                      help="augmentation preset of the with-aug step")
  parser.add_argument("--steps", type=int, default=10, help="timed steps")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps")
  parser.add_argument("--devices", type=int, default=1,
                      help="mesh size (forced host devices on CPU)")
  common.add_torch_flags(parser)
  parser.add_argument("--torch_subprocess", action="store_true",
                      help="run the PyTorch peer in a child process")
  parser.add_argument("--aug", dest="aug", action="store_true", default=True,
                      help="also measure the step with augmentation")
  parser.add_argument("--noaug", dest="aug", action="store_false")
  parser.add_argument("--matmul_n", type=int, default=2048,
                      help="side of the peak-FLOP/s matmul")
  parser.add_argument("--results", default=None,
                      help="JSONL file to append to (default "
                           "benchmarks/results/pretrain_step.jsonl)")
  args = parser.parse_args(argv)
  args.widths = common.parse_widths(args.widths)
  common.check_size(args.size, args.widths)
  if args.batch < 2:
    raise SystemExit(f"--batch={args.batch}: NT-Xent needs at least 2 images")
  return args


def synthetic_batch(mesh, batch, size, in_channels=3, seed=0):
  """Two views of `batch` random images, batch-sharded over `mesh`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from medclr import sharding  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  shape = (batch, size, size, in_channels)
  return sharding.to_global(
      {"view1": rng.random(shape, np.float32),
       "view2": rng.random(shape, np.float32)}, mesh)


def memory_fields(compiled):
  """XLA's compiled memory analysis as {field: MiB} (empty if unsupported)."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return {}
  return {
      name.replace("_in_bytes", "_mb"): getattr(analysis, name) / 2**20
      for name in sorted(dir(analysis))
      if name.endswith("_in_bytes") and isinstance(getattr(analysis, name),
                                                   int)
  }


def canonical_config(*, method="simclr", batch=16, size=128,
                     widths=(32, 64, 128, 256, 512), precision="float32",
                     hidden_dim=512, out_dim=128, preset="simclr_strong"):
  """The method's run config (`configs/pretrain_<method>.py`) resized.

  Starting from the real run config keeps the benchmark on the code path a
  user runs; only the sizes, the preset and a constant Adam 1e-3 (the
  canonical step has no schedule) are set here. A method without its own
  config file starts from `configs/pretrain_simclr.py`.
  """
  import importlib  # pylint: disable=g-import-not-at-top

  name = f"pretrain_{method}"
  if not (common.REPO / "configs" / f"{name}.py").is_file():
    name = "pretrain_simclr"
  config = importlib.import_module(f"configs.{name}").get_config()
  config.method = method
  config.batch_size = batch
  config.data.image_size = size
  config.model.widths = tuple(widths)
  config.model.dtype = precision
  config.model.preset = ("unet2d-32" if tuple(widths) == (32, 64, 128, 256,
                                                         512) else "custom")
  config.head.hidden_dim = hidden_dim
  config.head.out_dim = out_dim
  config.loss.temperature = TEMPERATURE
  config.augment.preset = preset
  config.augment.strength = 1.0
  config.optim.name = "adam"
  config.optim.learning_rate = LEARNING_RATE
  config.optim.lr_scaling = "none"
  config.optim.schedule = "constant"
  config.optim.warmup_steps = 0
  return config


class Model:
  """The method's model graph, optimiser and initial train state.

  Built once and shared: `loop.init_state`'s jitted initialiser takes
  seconds to compile even for tiny widths, and every step variant (presets,
  device counts) must start from the same parameters anyway.
  """

  def __init__(self, config, mesh):
    import jax  # pylint: disable=g-import-not-at-top

    from medclr import methods  # pylint: disable=g-import-not-at-top
    from medclr import optim  # pylint: disable=g-import-not-at-top
    from medclr.train import loop  # pylint: disable=g-import-not-at-top

    self.config = config
    self.tx, self.lr_fn = optim.make_optimizer(config.optim, 1,
                                               config.batch_size)
    method = methods.get_method(config)
    with jax.set_mesh(mesh):
      self.graphdef, _, init_fn = loop.init_state(
          method.make_model, self.tx, mesh, config.seed, method.init_aux)
      self._state = init_fn()

  def initial_state(self, mesh):
    """A fresh copy of the initial state, replicated over `mesh`.

    A copy, because the jitted step donates (consumes) the state it is given.
    """
    import jax  # pylint: disable=g-import-not-at-top
    from medclr import sharding  # pylint: disable=g-import-not-at-top
    return jax.tree.map(lambda x: x.copy(), jax.device_put(
        self._state, sharding.replicated(mesh)))


class MedclrStep:
  """medclr's pretraining step for one preset, compiled and ready to time."""

  def __init__(self, model, *, mesh, preset):
    import time  # pylint: disable=g-import-not-at-top

    import jax  # pylint: disable=g-import-not-at-top

    from medclr import methods  # pylint: disable=g-import-not-at-top
    from medclr.train import steps  # pylint: disable=g-import-not-at-top

    config = model.config.copy_and_resolve_references()
    config.augment.preset = preset
    method = methods.get_method(config)
    self.mesh = mesh
    with jax.set_mesh(mesh):
      self.state = model.initial_state(mesh)
      self.batch = synthetic_batch(mesh, config.batch_size,
                                   config.data.image_size,
                                   config.data.in_channels, seed=config.seed)
      step = steps.make_pretrain_step(model.graphdef, model.tx, model.lr_fn,
                                      method, config.seed)
      start = time.perf_counter()
      # Donate the state, as medclr.train.pretrain does.
      self.compiled = jax.jit(step, donate_argnums=0).lower(
          self.state, self.batch).compile()
      self.compile_s = time.perf_counter() - start
    self.metrics = None

  def __call__(self):
    """One step, blocking until the new state and metrics exist."""
    import jax  # pylint: disable=g-import-not-at-top
    with jax.set_mesh(self.mesh):
      self.state, self.metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, self.metrics))

  def loss(self):
    return float(self.metrics["loss"])


def measure_medclr(args, model, mesh, preset):
  """(images/s, details) of medclr's step with augmentation `preset`."""
  step = MedclrStep(model, mesh=mesh, preset=preset)
  times = common.time_calls(step, args.steps, args.warmup)
  step_s = common.median(times)
  return {
      "images_per_s": 2 * args.batch / step_s,
      "step_s": step_s,
      "step_times_s": times,
      "compile_s": step.compile_s,
      "xla_memory": memory_fields(step.compiled),
      "loss": step.loss(),
  }


def config_from_args(args):
  return canonical_config(
      method=args.method, batch=args.batch, size=args.size,
      widths=args.widths, precision=args.precision,
      hidden_dim=args.hidden_dim, out_dim=args.out_dim)


def measure_torch(args):
  """The PyTorch peer's result dict, or None with a reason if unavailable."""
  if args.torch_subprocess:
    command = [sys.executable, "-m", "benchmarks.torch_peer",
               f"--batch={args.batch}", f"--size={args.size}",
               "--widths=" + ",".join(map(str, args.widths)),
               f"--precision={args.precision}", f"--steps={args.steps}",
               f"--warmup={args.warmup}", f"--hidden_dim={args.hidden_dim}",
               f"--out_dim={args.out_dim}"]
    done = subprocess.run(command, cwd=common.REPO, capture_output=True,
                          text=True, check=False)
    if done.returncode:
      raise RuntimeError(f"PyTorch peer failed ({' '.join(command)}):\n"
                         f"{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), None
  try:
    from benchmarks import torch_peer  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return None, (f"torch not importable ({e}); install the bench extra: "
                  "pip install torch==2.13.0")
  return torch_peer.measure_pretrain_step(
      batch=args.batch, size=args.size, widths=args.widths,
      precision=args.precision, steps=args.steps, warmup=args.warmup,
      temperature=TEMPERATURE, hidden_dim=args.hidden_dim,
      out_dim=args.out_dim), None


def main(argv=None):
  """Runs the benchmark; returns the record it wrote."""
  args = parse_args(argv)
  common.force_cpu_devices(args.devices)
  import jax  # pylint: disable=g-import-not-at-top
  from medclr import sharding  # pylint: disable=g-import-not-at-top
  from medclr.models import encoder  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh(args.devices)
  if args.batch % args.devices:
    raise SystemExit(f"--batch={args.batch} must be divisible by "
                     f"--devices={args.devices}")
  train_gflop_per_view = 3 * encoder.encoder_forward_flops(
      3, args.widths, args.size, args.size) / 1e9

  model = Model(config_from_args(args), mesh)
  plain = measure_medclr(args, model, mesh, "none")
  augmented = (measure_medclr(args, model, mesh, args.preset) if args.aug
               else None)
  peak_rss = common.peak_rss_mb()
  peak = {"float32": common.peak_matmul_gflops("float32", args.matmul_n)}
  if args.precision != "float32":
    peak[args.precision] = common.peak_matmul_gflops(args.precision,
                                                     args.matmul_n)
  achieved = train_gflop_per_view * plain["images_per_s"]

  result = {
      "method": args.method, "precision": args.precision,
      "batch": args.batch, "views": 2 * args.batch, "size": args.size,
      "widths": list(args.widths), "devices": mesh.devices.size,
      "backend": jax.default_backend(),
      "medclr_images_per_s": plain["images_per_s"],
      "medclr_step_s": plain["step_s"],
      "medclr_step_times_s": plain["step_times_s"],
      "medclr_loss": plain["loss"],
      "compile_s": plain["compile_s"],
      "train_gflop_per_view": train_gflop_per_view,
      "achieved_gflops": achieved,
      "peak_matmul_gflops": peak["float32"],
      "mfu": achieved / peak[args.precision],
      "peak_rss_mb": peak_rss,
      "xla_memory": plain["xla_memory"],
  }
  if args.precision != "float32":
    result[f"peak_matmul_gflops_{args.precision}"] = peak[args.precision]
  if augmented:
    result.update({
        "aug_preset": args.preset,
        "medclr_images_per_s_with_aug": augmented["images_per_s"],
        "medclr_step_s_with_aug": augmented["step_s"],
        "compile_s_with_aug": augmented["compile_s"],
        "xla_memory_with_aug": augmented["xla_memory"],
    })
  if args.torch:
    peer, reason = measure_torch(args)
    if peer is None:
      result["torch_skipped"] = reason
    else:
      result.update({
          "torch_images_per_s": peer["images_per_s"],
          "torch_step_s": peer["step_s"],
          "torch_step_times_s": peer["step_times_s"],
          "torch_threads": peer["threads"],
          "torch_loss": peer["loss"],
          "torch_mode": ("subprocess" if args.torch_subprocess
                         else "in-process, after medclr"),
          "torch_achieved_gflops": train_gflop_per_view * peer["images_per_s"],
          "ratio_vs_torch": plain["images_per_s"] / peer["images_per_s"],
      })
  return common.report(NAME, result, args.results)


if __name__ == "__main__":
  main(sys.argv[1:])
