"""The pod launch scripts, run in dry-run mode: commands printed, bad input refused.

launch/tpu_pod.sh and launch/slurm_gpu.sbatch only print what they would run
here (--dry-run / DRY_RUN=1); no gcloud, srun or JAX process is started.
"""
import os
import pathlib
import re
import shlex
import stat
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TPU_POD = REPO / "launch" / "tpu_pod.sh"
SBATCH = REPO / "launch" / "slurm_gpu.sbatch"
SLICE = ["--name=medclr-pod", "--zone=us-central2-b"]
PRETRAIN = ["--config=configs/pretrain_simclr.py",
            "--workdir=gs://medclr-bucket/runs/simclr"]


def tpu_pod(*args, env=None):
  return subprocess.run(["bash", str(TPU_POD), *args], cwd=REPO,
                        capture_output=True, text=True, check=False,
                        env={**os.environ, **(env or {})}, timeout=60)


def commands(done):
  """The printed commands (lines starting '+ '), each split into words."""
  assert done.returncode == 0, done.stderr
  return [shlex.split(line[2:]) for line in done.stdout.splitlines()
          if line.startswith("+ ")]


def remote_command(words):
  (command,) = [w[len("--command="):] for w in words
                if w.startswith("--command=")]
  return command


def test_create_prints_gcloud_create_with_spot():
  (words,) = commands(tpu_pod(
      "--dry-run", "create", *SLICE, "--accelerator-type=v5litepod-16",
      "--version=v2-alpha-tpuv5-lite", "--spot"))
  assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create",
                       "medclr-pod"]
  assert {"--zone=us-central2-b", "--accelerator-type=v5litepod-16",
          "--version=v2-alpha-tpuv5-lite", "--spot"} <= set(words)


def test_pretrain_runs_on_all_workers_with_gs_workdir():
  # Overrides reach the launcher intact through two shells (a quote here).
  (words,) = commands(tpu_pod("--dry-run", "pretrain", *SLICE, *PRETRAIN,
                              "--", "--config.batch_size=256",
                              "--config.data.sources=drive:train,it's:train"))
  assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh",
                       "medclr-pod"]
  assert "--worker=all" in words
  remote = shlex.split(remote_command(words))
  # Every worker joins one jax.distributed job (medclr/sharding.py).
  assert remote[remote.index("-m") - 2] == "MEDCLR_DISTRIBUTED=auto"
  launcher = remote[remote.index("-m"):]
  assert launcher == ["-m", "launch.pretrain",
                      "--config=configs/pretrain_simclr.py",
                      "--workdir=gs://medclr-bucket/runs/simclr",
                      "--config.batch_size=256",
                      "--config.data.sources=drive:train,it's:train"]


def test_resume_is_the_pretrain_command_and_dry_run_env_works():
  pretrain = commands(tpu_pod("--dry-run", "pretrain", *SLICE, *PRETRAIN))
  resume = commands(tpu_pod("resume", *SLICE, *PRETRAIN,
                            env={"DRY_RUN": "1"}))
  assert resume == pretrain


def test_install_clones_and_pip_installs_tpu_extra_on_all_workers():
  (words,) = commands(tpu_pod("--dry-run", "install", *SLICE,
                              "--repo=https://example.org/medclr.git",
                              "--ref=v1"))
  assert "--worker=all" in words
  remote = remote_command(words)
  assert "git clone -q https://example.org/medclr.git" in remote
  assert "checkout -q v1" in remote
  assert "pip install -q -e '.[tpu]'" in remote


def test_delete_is_quiet_and_passes_project():
  (words,) = commands(tpu_pod("--dry-run", "delete", *SLICE,
                              "--project=my-project"))
  assert words[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "delete"]
  assert {"--project=my-project", "--quiet"} <= set(words)


@pytest.mark.parametrize("args, named", [
    ([], "SUBCOMMAND"),
    (["launch"], "launch"),
    (["pretrain", "--zone=us-central2-b", *PRETRAIN], "--name"),
    (["pretrain", "--name=medclr-pod", *PRETRAIN], "--zone"),
    (["pretrain", *SLICE, "--workdir=gs://b/x"], "--config"),
    (["pretrain", *SLICE, "--config=configs/pretrain_simclr.py"],
     "--workdir"),
    (["pretrain", *SLICE, "--config=configs/pretrain_simclr.py",
      "--workdir=/home/me/run"], "--workdir=/home/me/run"),
    (["pretrain", *SLICE, "--config=configs/nope.py", "--workdir=gs://b/x"],
     "--config=configs/nope.py"),
    (["create", *SLICE, "--version=v2-alpha-tpuv5-lite"],
     "--accelerator-type"),
    (["create", *SLICE, "--accelerator-type=big", "--version=v"],
     "--accelerator-type=big"),
    (["create", *SLICE, "--accelerator-type=v4-8", "--version=v", "--spot",
      "--preemptible"], "--preemptible"),
    (["delete", *SLICE, "--colour=red"], "--colour"),
    (["delete", "--name=Bad_Name", "--zone=us-central2-b"], "--name"),
    (["delete", *SLICE, *PRETRAIN], "--config"),
    (["install", *SLICE, "--repo=/no/such/checkout"], "--repo"),
])
def test_usage_errors_name_the_argument(args, named):
  done = tpu_pod("--dry-run", *args)
  assert done.returncode == 2
  first = done.stderr.splitlines()[0]
  assert first.startswith("launch/tpu_pod.sh: error:") and named in first
  assert "usage:" in done.stderr and not done.stdout


def test_scripts_are_strict_bash():
  for script in (TPU_POD, SBATCH):
    assert "set -euo pipefail" in script.read_text()
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_sbatch_srun_runs_a_medclr_launcher_with_an_existing_config():
  text = SBATCH.read_text()
  (config,) = re.findall(r'CONFIG="\$\{CONFIG:-([^}]+)\}"', text)
  assert (REPO / config).is_file()
  # The srun command line (a bash array, possibly over several lines).
  srun = re.search(r"^launch=\(srun .*?\)$", text, re.M | re.S).group(0)
  (module,) = re.findall(r"-m (launch\.\w+)", srun)
  assert (REPO / (module.replace(".", "/") + ".py")).is_file()
  assert '--config="$CONFIG"' in srun and '--workdir="$WORKDIR"' in srun
  assert re.search(r"^#SBATCH --gpus-per-node=\d+$", text, re.M)


@pytest.fixture(name="fake_slurm")
def fixture_fake_slurm(tmp_path):
  """A PATH with a fake `scontrol` and the variables sbatch would set."""
  scontrol = tmp_path / "scontrol"
  scontrol.write_text('#!/bin/sh\nprintf "gpu001\\ngpu002\\n"\n')
  scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
  return {"PATH": f"{tmp_path}:{os.environ['PATH']}", "DRY_RUN": "1",
          "SLURM_JOB_ID": "4097", "SLURM_JOB_NODELIST": "gpu[001-002]",
          "SLURM_NTASKS": "16", "SLURM_NTASKS_PER_NODE": "8",
          "SLURM_SUBMIT_DIR": str(REPO), "WORKDIR": "/shared/runs/simclr"}


def test_sbatch_dry_run_sets_the_coordinator_for_every_task(fake_slurm):
  done = subprocess.run(["bash", str(SBATCH), "--config.batch_size=512"],
                        capture_output=True, text=True, check=False,
                        env={**os.environ, **fake_slurm}, timeout=60)
  (line,) = [l for l in done.stdout.splitlines() if l.startswith("+ ")]
  words = shlex.split(line[2:])
  # Process 0 on the first node; port from the job id; one process per task.
  assert words[:2] == ["MEDCLR_COORDINATOR=gpu001:61441",
                       "MEDCLR_NUM_PROCESSES=16"]
  assert words[2] == "srun" and 'MEDCLR_PROCESS_ID="$SLURM_PROCID"' in line
  assert words[-5:] == ["-m", "launch.pretrain",
                        "--config=configs/pretrain_simclr.py",
                        "--workdir=/shared/runs/simclr",
                        "--config.batch_size=512"]


def test_sbatch_refuses_to_run_without_workdir(fake_slurm):
  env = {**os.environ, **fake_slurm}
  del env["WORKDIR"]
  done = subprocess.run(["bash", str(SBATCH)], capture_output=True,
                        text=True, check=False, env=env, timeout=60)
  assert done.returncode != 0 and "WORKDIR" in done.stderr
