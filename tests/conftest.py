"""Test setup: eight fake CPU devices, created before JAX touches a backend."""
import os
import pathlib

import jax

# Must run before any device use: every test sees an 8-device mesh on CPU.
jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(
    os.environ.get("MEDCLR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data():
  """Path of ../shared/data, or skip with a clear reason when it is absent."""
  if not (SHARED_DATA / "drive").is_dir():
    pytest.skip(f"real data not found at {SHARED_DATA} (set MEDCLR_SHARED_DATA "
                "or place DRIVE/HRF/ISBI there); skipping real-data test")
  return SHARED_DATA
