"""Tests for medclr.xla_defaults: which flags are added, and that they act."""
import os
import subprocess
import sys

from medclr import xla_defaults

FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def test_apply_adds_the_default_flag_to_empty_environment():
  environ = {}
  added = xla_defaults.apply(environ)
  assert added == [f"{FLAG}=individual_dot"]
  assert environ["XLA_FLAGS"] == f"{FLAG}=individual_dot"


def test_apply_keeps_other_flags_and_never_overrides_the_users_value():
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  xla_defaults.apply(environ)
  assert environ["XLA_FLAGS"].split() == [
      "--xla_force_host_platform_device_count=2", f"{FLAG}=individual_dot"]
  environ = {"XLA_FLAGS": f"{FLAG}="}
  assert xla_defaults.apply(environ) == []
  assert environ["XLA_FLAGS"] == f"{FLAG}="


def test_opt_out_environment_variable_adds_nothing():
  environ = {xla_defaults.OPT_OUT_ENV: "1"}
  assert xla_defaults.apply(environ) == []
  assert "XLA_FLAGS" not in environ


# 32 channels: jaxlib 0.10 leaves narrower convolutions to Eigen anyway.
_PROBE = """
import medclr, jax, jax.numpy as jnp
conv = lambda x, k: jax.lax.conv_general_dilated(
    x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
text = jax.jit(conv).lower(jnp.ones((2, 32, 32, 32)),
                           jnp.ones((3, 3, 32, 32))).compile().as_text()
# The program is one convolution: any YNNPACK fusion in it is that conv.
print('YNN_CONV' if '__ynn_fusion' in text else 'EIGEN_CONV')
"""


def _conv_library(extra_env):
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", xla_defaults.OPT_OUT_ENV)}
  env.update(extra_env)
  done = subprocess.run([sys.executable, "-c", _PROBE], env=env,
                        capture_output=True, text=True, check=True)
  return done.stdout.strip().splitlines()[-1]


def test_importing_medclr_takes_convolutions_off_ynnpack():
  """The default acts on XLA (and the opt-out restores jaxlib's default).

  If a jaxlib stops routing convolutions to YNNPACK by default, the second
  assertion fails: then the flag is no longer needed (see the module doc).
  """
  assert _conv_library({}) == "EIGEN_CONV"
  assert _conv_library({xla_defaults.OPT_OUT_ENV: "1"}) == "YNN_CONV"
