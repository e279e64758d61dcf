r"""SimCLR A/B: medclr's step against the PyTorch peer on identical views.

  python -m benchmarks.simclr_ab --data_dir=$DATA \
      --presets=simclr_strong,basic_medical --steps=300

Both frameworks start from medclr's initial weights and, every step, train on
the very same normalised views (medclr's host crops + device augmentation,
converted to numpy once) with Adam and medclr's warm-up + cosine schedule.
Appends one row per preset to benchmarks/results/simclr_ab.jsonl (loss /
chance curves of both) and rewrites benchmarks/results/simclr_ab.md.
Settles whether a stalled loss is medclr's bug or the recipe (issue 9).
"""
import argparse
import json
import math
import pathlib
import sys
import time

from flax import nnx
import jax
import numpy as np

from benchmarks import common
from benchmarks import torch_peer
from configs import pretrain_simclr
from medclr import methods
from medclr import models
from medclr import optim
from medclr import sharding
from medclr.study import cells
from medclr.train import steps
import torch

RESULTS = cells.REPO / "benchmarks" / "results" / "simclr_ab.jsonl"
POOL = "fundus_pool:train,drive:train,hrf:train,stare584:train"
LOG_EVERY = 10
TABLE_STEPS = (0, 100, 200, 300)
# loss / chance above this at the end counts as "near chance".
NEAR_CHANCE = 0.85
# logged steps averaged for the end-of-run loss of the verdict.
TAIL = 5


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--presets", default="simclr_strong,basic_medical")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--sources", default=POOL)
  parser.add_argument("--config_arg", default="quick",
                      help="argument of configs/pretrain_simclr.py")
  parser.add_argument("--results", default=str(RESULTS))
  parser.add_argument("--markdown", default=None,
                      help="default: the results path with suffix .md")
  return parser.parse_args(argv)


def make_config(args, preset):
  """configs/pretrain_simclr.py:<config_arg>,preset=<preset> on the pool."""
  config = pretrain_simclr.get_config(f"{args.config_arg},preset={preset}")
  config.data.data_dir = args.data_dir
  config.data.sources = args.sources
  config.num_steps = args.steps
  config.seed = args.seed
  return config


class GivenViews:
  """The SimCLR method, but its views are precomputed ones in the batch."""

  def __init__(self, method):
    self.method = method

  def device_views(self, key, batch):
    del key
    return [batch["v1"], batch["v2"]]

  def __getattr__(self, name):
    return getattr(self.method, name)


def view_stream(config, method, mesh):
  """Yields (v1, v2) numpy views per step, as medclr's pretrain step makes
  them: host crops -> device_views(fold_in(key(seed), step)) -> normalise."""
  base_key = jax.random.key(config.seed)

  @jax.jit
  def make_views(key, batch):
    views = method.device_views(key, batch)
    return steps.normalize_views(views, batch.get("norm"))

  for step, host in enumerate(method.host_dataset(config, config.batch_size)):
    batch = sharding.to_global(
        {k: v for k, v in host.items() if k in ("view1", "view2", "norm")},
        mesh)
    v1, v2 = make_views(jax.random.fold_in(base_key, step), batch)
    yield np.asarray(v1), np.asarray(v2)


def init_jax(config, method, mesh):
  """(jitted step, state, numpy params, numpy batch_stats, lr_fn)."""
  tx, lr_fn = optim.make_optimizer(config.optim, config.num_steps,
                                   config.batch_size)
  graphdef, params, batch_stats = models.split_model(
      method.make_model(nnx.Rngs(config.seed)))
  numpy_copy = jax.tree.map(np.asarray, (params, batch_stats))
  state = steps.init_state(params, batch_stats, tx,
                           method.init_aux(params, batch_stats))
  state = jax.device_put(state, sharding.replicated(mesh))
  step_fn = steps.make_pretrain_step(graphdef, tx, lr_fn, GivenViews(method),
                                     config.seed)
  return jax.jit(step_fn, donate_argnums=0), state, *numpy_copy, lr_fn


def init_torch(config, params, batch_stats):
  """The peer with medclr's initial weights and torch Adam (optax defaults)."""
  model = torch_peer.ContrastiveModel(
      config.model.in_channels, config.model.widths, config.head.hidden_dim,
      config.head.out_dim)
  torch_peer.load_medclr_weights(model, params, batch_stats)
  optimizer = torch.optim.Adam(model.parameters(), lr=0.0,
                               betas=(0.9, 0.999), eps=1e-8)
  return model.train(), optimizer


def embedding_std_ratio(z):
  """medclr's embedding_std (normalised z, unbiased) x sqrt(dim): ~1 spread,
  0 collapsed."""
  normalized = torch.nn.functional.normalize(z.float(), dim=1)
  return float(normalized.std(dim=0).mean()) * math.sqrt(z.shape[1])


def torch_step(model, optimizer, lr, v1, v2, temperature):
  """One peer step on NHWC numpy views; both views in one pass (BN over 2B),
  interleaved as medclr's SimCLR. Returns (loss, embedding std ratio)."""
  b = v1.shape[0]
  stacked = np.stack([v1, v2], axis=1).reshape((2 * b,) + v1.shape[1:])
  x = torch.from_numpy(np.ascontiguousarray(stacked.transpose(0, 3, 1, 2)))
  for group in optimizer.param_groups:
    group["lr"] = lr
  optimizer.zero_grad(set_to_none=True)
  z = model(x).reshape(b, 2, -1)
  loss = torch_peer.nt_xent(z[:, 0], z[:, 1], temperature)
  loss.backward()
  optimizer.step()
  return float(loss.detach()), embedding_std_ratio(z[:, 0].detach())


def run_preset(args, preset):
  """Runs both frameworks for args.steps on the same views; returns a row."""
  config = make_config(args, preset)
  method = methods.get_method(config)
  mesh = sharding.make_mesh(1)
  chance = math.log(2 * config.batch_size - 1)
  curve, seconds = [], {"jax": 0.0, "torch": 0.0}
  with jax.set_mesh(mesh):
    p_step, state, params, stats, lr_fn = init_jax(config, method, mesh)
    model, optimizer = init_torch(config, params, stats)
    views = view_stream(config, method, mesh)
    for step in range(args.steps):
      v1, v2 = next(views)
      t0 = time.perf_counter()
      state, metrics = p_step(state, sharding.to_global({"v1": v1, "v2": v2},
                                                        mesh))
      metrics = jax.device_get(metrics)
      t1 = time.perf_counter()
      loss_torch, std_torch = torch_step(
          model, optimizer, float(lr_fn(step)), v1, v2,
          config.loss.temperature)
      seconds["torch"] += time.perf_counter() - t1
      seconds["jax"] += t1 - t0
      point = log_point(step, metrics, loss_torch, std_torch, chance,
                        config.head.out_dim)
      if step % LOG_EVERY == 0 or step + 1 == args.steps:
        curve.append(point)
        print(json.dumps(point), flush=True)
  return make_row(args, preset, config, curve, seconds)


def log_point(step, metrics, loss_torch, std_torch, chance, out_dim):
  """One logged step: losses and embedding-std ratios of both frameworks."""
  loss_jax = float(metrics["loss"])
  return {"step": step, "loss_jax": loss_jax, "loss_torch": loss_torch,
          "chance": chance,
          "emb_std_ratio_jax": float(metrics["embedding_std"]) *
                               math.sqrt(out_dim),
          "emb_std_ratio_torch": std_torch}


def make_row(args, preset, config, curve, seconds):
  """The JSON row of one preset (no absolute paths of this machine)."""
  first, last = curve[0], curve[-1]
  command = ["python", "-m", "benchmarks.simclr_ab",
             f"--data_dir={args.data_dir}", f"--presets={preset}",
             f"--steps={args.steps}", f"--seed={args.seed}",
             f"--sources={args.sources}", f"--config_arg={args.config_arg}"]
  return {
      "time": cells.now(), "git": cells.git_revision(), "preset": preset,
      "config": f"configs/pretrain_simclr.py:{args.config_arg},preset={preset}",
      "sources": args.sources, "steps": args.steps,
      "batch": config.batch_size, "image_size": config.data.image_size,
      "step0_loss_jax": first["loss_jax"],
      "step0_loss_torch": first["loss_torch"],
      "step0_abs_diff": abs(first["loss_jax"] - first["loss_torch"]),
      "curve": curve,
      "first_over_chance": {f: first[f"loss_{f}"] / first["chance"]
                            for f in ("jax", "torch")},
      "last_over_chance": {f: last[f"loss_{f}"] / last["chance"]
                           for f in ("jax", "torch")},
      "seconds": {k: round(v, 1) for k, v in seconds.items()},
      "torch_threads": torch.get_num_threads(),
      "machine": common.machine_info(),
      "command": " ".join(command).replace(str(args.data_dir), "$DATA"),
  }


def table_steps(total):
  """Logged steps of the table: 0, 100, 200 (those run) and the last."""
  return [s for s in TABLE_STEPS[:-1] if s < total - 1] + [total - 1]


def over_chance(row, step, framework):
  """Loss / chance at a logged step as text, '-' if the row did not log it."""
  for point in row["curve"]:
    if point["step"] == step:
      return f"{point[f'loss_{framework}'] / point['chance']:.3f}"
  return "-"


def tail_mean(row, framework):
  """Mean loss / chance over the last TAIL logged steps (one batch is noisy)."""
  tail = row["curve"][-TAIL:]
  return sum(p[f"loss_{framework}"] / p["chance"] for p in tail) / len(tail)


def verdict(rows, tolerance=0.05):
  """Plain reading of the numbers: do the frameworks end alike per preset?"""
  sentences, differing, near = [], [], []
  for row in rows:
    jax_end, torch_end = tail_mean(row, "jax"), tail_mean(row, "torch")
    gap = abs(jax_end - torch_end)
    alike = "the same way" if gap <= tolerance else "differently"
    sentences.append(
        f"{row['preset']}: medclr ends at {jax_end:.3f} x chance, the "
        f"peer at {torch_end:.3f} (mean of the last {TAIL} logged steps; "
        f"gap {gap:.3f}: they train {alike})")
    differing += [row["preset"]] if gap > tolerance else []
    near += [row["preset"]] if min(jax_end, torch_end) > NEAR_CHANCE else []
  if differing:
    conclusion = (f"The frameworks part ways on {', '.join(differing)}: "
                  "with identical weights and views that points at a "
                  "framework difference (a bug), not the recipe.")
  else:
    conclusion = ("On identical weights and views the PyTorch peer follows "
                  "medclr under every preset" + (
                      f", so {', '.join(near)} staying near chance is the "
                      "recipe, not a medclr bug." if near else "."))
  return "; ".join(sentences) + ". " + conclusion


def markdown(rows):
  """Table of loss / chance at steps 0, 100, 200, last for both frameworks."""
  cols = table_steps(rows[0]["steps"])
  lines = ["# SimCLR A/B: medclr vs the PyTorch peer on identical views", "",
           "Same initial weights, same normalised views every step, Adam with "
           "medclr's schedule. NT-Xent loss / ln(2B-1) at step index N (the "
           "loss after N updates). Rows: benchmarks/results/simclr_ab.jsonl. "
           "Wall seconds are for orientation only: the runs shared a busy "
           "machine (speed: benchmarks/results/pretrain_step.jsonl).",
           "", "| preset | framework | " +
           " | ".join(f"step {s}" for s in cols) + " | wall s |",
           "|---" * (len(cols) + 3) + "|"]
  for row in rows:
    for fw, name in (("jax", "medclr (JAX)"), ("torch", "PyTorch peer")):
      values = " | ".join(over_chance(row, s, fw) for s in cols)
      lines.append(f"| {row['preset']} | {name} | {values} | "
                   f"{row['seconds'][fw]} |")
  lines += ["", "Step-0 |loss_jax - loss_torch|: " + ", ".join(
      f"{r['preset']} {r['step0_abs_diff']:.1e}" for r in rows) + ".", "",
            "Measured: " + verdict(rows), ""]
  return "\n".join(lines)


def main(argv=None):
  args = parse_args(argv)
  torch_peer.configure_threads()
  rows = [run_preset(args, preset) for preset in args.presets.split(",")]
  results = pathlib.Path(args.results)
  results.parent.mkdir(parents=True, exist_ok=True)
  with open(results, "a") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  md = pathlib.Path(args.markdown or results.with_suffix(".md"))
  md.write_text(markdown(latest_rows(results)))
  return rows


def latest_rows(results):
  """The last row of each preset in the results file, in first-seen order."""
  latest = {}
  for line in pathlib.Path(results).read_text().splitlines():
    row = json.loads(line)
    latest[row["preset"]] = row
  return list(latest.values())


if __name__ == "__main__":
  main(sys.argv[1:])
