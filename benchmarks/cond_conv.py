"""Convolutions inside `lax.cond`: how much slower does XLA run them?

DiRA's PatchGAN critic (forward and backward, one image batch) timed as a
plain jitted function and as the taken branch of a `lax.cond` with a traced
predicate, in one run. On XLA's CPU backend the conditional version was ~50x
slower, which is why medclr/methods/dira.py masks the critic instead of
branching on the stage. Rows: benchmarks/results/cond_conv.jsonl.

  python -m benchmarks.cond_conv [--batch=32 --size=96 --repeats=3]
"""
import argparse

from flax import nnx
import jax
import jax.numpy as jnp

from benchmarks import common
from medclr.methods import dira


def _functions(batch, size):
  """(plain, in_cond, params, images) for the critic's value and gradient."""
  critic = dira.PatchCritic(3, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(critic, nnx.Param)
  images = jax.random.normal(jax.random.key(0), (batch, size, size, 3))

  def loss(p, x):
    return jnp.mean(nnx.merge(graphdef, p)(x) ** 2)

  grad = jax.value_and_grad(loss)

  def skipped(p, x):
    del x
    return jnp.zeros(()), jax.tree.map(jnp.zeros_like, p)

  def plain(p, x, flag):
    del flag
    return grad(p, x)

  def in_cond(p, x, flag):
    return jax.lax.cond(flag, grad, skipped, p, x)

  return jax.jit(plain), jax.jit(in_cond), params, images


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--size", type=int, default=96)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  plain, in_cond, params, images = _functions(args.batch, args.size)
  seconds = {}
  for name, fn in (("plain", plain), ("in_cond", in_cond)):
    times = common.time_calls(
        lambda fn=fn: jax.block_until_ready(fn(params, images, True)),
        args.repeats, 1)
    seconds[name] = common.median(times)
  common.report("cond_conv", {
      "batch": args.batch, "size": args.size, "repeats": args.repeats,
      "seconds_plain": seconds["plain"], "seconds_in_cond": seconds["in_cond"],
      "slowdown": seconds["in_cond"] / seconds["plain"],
      "backend": jax.default_backend()})


if __name__ == "__main__":
  main()
