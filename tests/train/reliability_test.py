"""The guarantees of docs/reliability.md, each proven on real runs.

Real launcher processes, real Orbax checkpoints on disk, real multi-device
CPU meshes and two jax.distributed processes on 127.0.0.1; no mocks. A
SIGTERM saves and exits cleanly (one process and two); a damaged latest
checkpoint is named and set aside, never deleted; checkpoints move between
process and device counts; workdirs are epath paths; a divergence names the
last good checkpoint.
"""
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import (REPO_ROOT, assert_trees_equal, resume_after_kill,
                      saved_state, smoke_config)
from medclr import checkpointing
from medclr import errors
from medclr import methods
from medclr import optim
from medclr import sharding
from medclr.train import finetune
from medclr.train import loop
from medclr.train import pretrain
from multihost_test import _free_port

# Long enough that a SIGTERM sent once step 1 is logged lands mid-run.
STEPS = 40
# No interval saves: the only checkpoint of an interrupted run is the one
# the SIGTERM made.
RUN_FLAGS = (f"--config.num_steps={STEPS}", "--config.checkpoint_every=1000")
ENV = dict(os.environ, JAX_PLATFORMS="cpu")
# 4 CPU devices a process for the two-process runs (conftest's flags stay).
ENV_4 = dict(ENV, XLA_FLAGS=" ".join(
    [os.environ.get("XLA_FLAGS", ""),
     "--xla_force_host_platform_device_count=4"]).strip())
PREEMPTED = re.compile(r"preempted \(SIGTERM\): stopped after step (\d+) of "
                       rf"{STEPS}; saved (\S+)\. Run the same command again")


def _command(workdir, data_dir, *flags):
  return [sys.executable, "-m", "launch.pretrain",
          "--config=configs/pretrain_simclr.py:smoke", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", *RUN_FLAGS, *flags]


def _start(workdir, data_dir, log, *flags, env=ENV):
  with open(log, "w") as f:  # the child keeps its own descriptor
    return subprocess.Popen(_command(workdir, data_dir, *flags), cwd=REPO_ROOT,
                            env=env, stdout=f, stderr=subprocess.STDOUT)


def _wait(procs, logs, timeout=600):
  for proc in procs:
    try:
      proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      raise
  return [pathlib.Path(log).read_text() for log in logs]


def _finish(workdir, data_dir, log):
  proc = _start(workdir, data_dir, log)
  out, = _wait([proc], [log])
  assert proc.returncode == 0, out[-3000:]
  return out


def _wait_for_a_logged_step(workdir, procs, logs):
  """Returns once the run logged a step (so it is inside its loop)."""
  rows = pathlib.Path(workdir) / "metrics.jsonl"
  deadline = time.time() + 600
  while not (rows.exists() and rows.read_text().strip()):
    ended = [p for p in procs if p.poll() is not None]
    assert not ended, pathlib.Path(logs[procs.index(ended[0])]).read_text()
    assert time.time() < deadline, "no step logged in 600 s"
    time.sleep(0.01)


def _saved_steps(workdir):
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints"
                                      ).iterdir() if p.name.isdigit())


def _positions(workdir, step):
  """{file name: saved data position} of the iterator item at `step`."""
  _, texts = saved_state(workdir, step)
  return {name: json.loads(text) for name, text in texts.items()}


def _sigterm_mid_run(workdir, data_dir, tmp, processes):
  """Starts a run of `processes` processes (1 device, or 4 each), sends
  SIGTERM to the last one once step 1 is logged, and returns (the stopped
  step, each process's exit status and output)."""
  if processes == 1:
    logs = [tmp / "preempted.log"]
    procs = [_start(workdir, data_dir, logs[0])]
  else:
    port = _free_port()
    logs = [tmp / f"preempted_{i}.log" for i in range(processes)]
    procs = [_start(workdir, data_dir, logs[i],
                    f"--coordinator_address=127.0.0.1:{port}",
                    f"--num_processes={processes}", f"--process_id={i}",
                    env=ENV_4) for i in range(processes)]
  _wait_for_a_logged_step(workdir, procs, logs)
  procs[-1].send_signal(signal.SIGTERM)
  outputs = _wait(procs, logs)
  match = PREEMPTED.search(outputs[0])
  assert match, outputs[0][-3000:]
  stopped = int(match.group(1))
  assert match.group(2) == f"{pathlib.Path(workdir).absolute()}/checkpoints/" \
                           f"{stopped}"
  return stopped, [p.returncode for p in procs], outputs


@pytest.fixture(scope="module")
def one_process_runs(tmp_path_factory, phantom_data_dir):
  """An uninterrupted 1-process run and one stopped by SIGTERM (untouched:
  tests copy it)."""
  tmp = tmp_path_factory.mktemp("one_process")
  reference = tmp / "reference"
  _finish(reference, phantom_data_dir, tmp / "reference.log")
  preempted = tmp / "preempted"
  stopped, status, outputs = _sigterm_mid_run(preempted, phantom_data_dir,
                                              tmp, 1)
  return reference, preempted, stopped, status[0], outputs[0]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, phantom_data_dir):
  """A run of 2 processes x 4 CPU devices stopped by a SIGTERM to process 1
  (untouched: tests copy it)."""
  tmp = tmp_path_factory.mktemp("two_processes")
  workdir = tmp / "preempted"
  stopped, status, outputs = _sigterm_mid_run(workdir, phantom_data_dir, tmp,
                                              2)
  return workdir, stopped, status, outputs


# -- 1. SIGTERM --------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_saves_the_step_exits_0_and_resumes_bit_for_bit(
    one_process_runs, phantom_data_dir, tmp_path):
  reference, preempted, stopped, status, output = one_process_runs
  assert status == 0, output[-3000:]
  assert 1 <= stopped < STEPS
  # An unfinished run does not claim to be done.
  assert "pretraining done" not in output, output[-3000:]
  # The one checkpoint is the SIGTERM's, at the step the run stopped.
  assert _saved_steps(preempted) == [stopped]
  state, _ = saved_state(preempted, stopped)
  assert int(state["step"]) == stopped
  assert _positions(preempted, stopped) == {
      "process_0-of-1.json": {"next_index": stopped}}

  resumed = tmp_path / "resumed"
  shutil.copytree(preempted, resumed)
  out = _finish(resumed, phantom_data_dir, tmp_path / "resumed.log")
  assert f"resuming from step {stopped}" in out, out[-3000:]
  got, got_iter = saved_state(resumed, STEPS)
  want, want_iter = saved_state(reference, STEPS)
  assert_trees_equal(got, want)
  assert got_iter == want_iter


@pytest.mark.slow
def test_sigterm_stops_two_processes_at_one_step(two_process_run):
  workdir, stopped, status, outputs = two_process_run
  assert status == [0, 0], "\n".join(o[-2000:] for o in outputs)
  assert 1 <= stopped < STEPS
  assert _saved_steps(workdir) == [stopped]
  # Each process saved its own data position, at the same step.
  assert _positions(workdir, stopped) == {
      f"process_{i}-of-2.json": {"next_index": stopped} for i in range(2)}


# -- 2. Unreadable checkpoints -----------------------------------------------

DAMAGED_STEPS = 4


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, phantom_data_dir):
  """A 4-step smoke pretraining run that kept every checkpoint."""
  workdir = tmp_path_factory.mktemp("full") / "run"
  pretrain.train_and_evaluate(_damage_config(phantom_data_dir), str(workdir))
  return workdir


def _damage_config(data_dir):
  return smoke_config("pretrain_simclr", data_dir, num_steps=DAMAGED_STEPS,
                      checkpoint_every=1, keep_checkpoints=10,
                      async_checkpoints=False)


def _truncate_arrays(step_dir):
  """Cuts every array data file of the step to half (a copy cut short)."""
  files = list((step_dir / "state").glob("**/d/*"))
  assert files
  for f in files:
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])
  return "OUT_OF_RANGE"


def _remove_iterator(step_dir):
  shutil.rmtree(step_dir / "data_iter")
  return 'Item "data_iter" was not found'


def _contents(directory):
  return {str(p.relative_to(directory)): p.read_bytes()
          for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("damage, item", [(_truncate_arrays, "state"),
                                          (_remove_iterator, "data_iter")])
def test_unreadable_latest_checkpoint_is_named_kept_and_skipped(
    full_run, phantom_data_dir, tmp_path, caplog, capsys, damage, item):
  killed_after = DAMAGED_STEPS - 1
  kept = {}

  def damage_then_resume(workdir):
    bad = pathlib.Path(workdir) / "checkpoints" / str(killed_after)
    kept["reason"] = damage(bad)
    kept["files"] = _contents(bad)
    with caplog.at_level(logging.WARNING):
      pretrain.train_and_evaluate(_damage_config(phantom_data_dir), workdir)

  # Resumes from the step before the bad one and still ends bit for bit
  # where the uninterrupted run did.
  resumed = tmp_path / "resumed"
  resume_after_kill(full_run, resumed, killed_after, damage_then_resume)
  assert f"resuming from step {killed_after - 1}" in capsys.readouterr().out
  bad = resumed / "checkpoints" / str(killed_after)
  warned = [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and str(bad / item) in
            r.getMessage()]
  assert any(kept["reason"] in w and f"{bad}.unreadable" in w
             for w in warned), warned
  # Set aside with every byte it had; the step was saved anew beside it.
  assert _contents(pathlib.Path(f"{bad}.unreadable")) == kept["files"]
  assert _saved_steps(resumed) == list(range(1, DAMAGED_STEPS + 1))


def test_no_readable_checkpoint_stops_and_moves_nothing(
    full_run, phantom_data_dir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(full_run, workdir)
  for step in range(2, DAMAGED_STEPS + 1):
    shutil.rmtree(workdir / "checkpoints" / str(step))
  _truncate_arrays(workdir / "checkpoints" / "1")
  before = _contents(workdir / "checkpoints")
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"(?s)no checkpoint in .* could be read:.*" +
                     re.escape(f"{workdir}/checkpoints/1/state") +
                     ".*OUT_OF_RANGE.*Nothing was renamed or deleted"):
    pretrain.train_and_evaluate(_damage_config(phantom_data_dir),
                                str(workdir))
  assert _contents(workdir / "checkpoints") == before


def test_unreadable_pretrained_checkpoint_is_named_not_replaced(
    full_run, phantom_data_dir, tmp_path):
  # Fine-tuning reads another run's checkpoint: an older encoder would be
  # another experiment, so it is named with the older steps, never swapped.
  pretrained = tmp_path / "pretrained"
  shutil.copytree(full_run, pretrained)
  _truncate_arrays(pretrained / "checkpoints" / str(DAMAGED_STEPS))
  before = _contents(pretrained)
  config = smoke_config("finetune_unet", phantom_data_dir,
                        **{"init.pretrain_dir": str(pretrained)})
  with pytest.raises(
      checkpointing.CheckpointError,
      match=re.escape(f"{pretrained}/checkpoints/{DAMAGED_STEPS}/state") +
      r" could not be read: .*older checkpoints there: steps "
      r"3, 2, 1 \(choose one with config.init.pretrain_checkpoint_step"):
    finetune.train_and_evaluate(config, str(tmp_path / "tuned"))
  assert _contents(pretrained) == before
  # The named way out works.
  config.init.pretrain_checkpoint_step = DAMAGED_STEPS - 1
  finetune.train_and_evaluate(config, str(tmp_path / "tuned"))


# -- 3. Topologies -----------------------------------------------------------


def resumed_state(workdir, data_dir):
  """What medclr's resume path (pretrain.train_and_evaluate up to its first
  step) restores from `workdir` in this process's topology: (host copy of
  the state, data position, step, devices the state is replicated on)."""
  config = smoke_config("pretrain_simclr", data_dir)
  mesh = sharding.make_mesh(config.mesh.data)
  local_batch = sharding.check_batch_size(config.batch_size, mesh)
  method = methods.get_method(config)
  dataset, _ = pretrain.make_dataset(config, local_batch, method)
  data_iter = iter(dataset)
  tx, _ = optim.make_optimizer(config.optim, STEPS, config.batch_size)
  with jax.set_mesh(mesh):
    _, abstract, init_fn = loop.init_state(method.make_model, tx, mesh,
                                           config.seed, method.init_aux)
    checkpointer = checkpointing.Checkpointer(workdir, save_every=1000,
                                              keep=2)
    try:
      state, step = loop.restore_or_init(checkpointer, abstract, init_fn,
                                         data_iter)
    finally:
      checkpointer.close()
  devices = {len(x.sharding.device_set) for x in jax.tree.leaves(state)}
  host = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state)
  return host, data_iter.get_state(), step, devices


# Runs `resumed_state` in a fresh process: argv = workdir, data_dir, out
# (.npz), local devices, then optionally coordinator, processes, process id.
_RESTORE = """
import json, sys
sys.path[:0] = ["tests/train", "tests", "."]
import jax
import numpy as np
import reliability_test  # conftest asks for 8 devices: overridden below
from medclr import sharding
workdir, data_dir, out, devices, *dist = sys.argv[1:]
jax.config.update("jax_num_cpu_devices", int(devices))
if dist:
  sharding.maybe_initialize_distributed(dist[0], int(dist[1]), int(dist[2]))
state, position, step, used = reliability_test.resumed_state(workdir, data_dir)
np.savez(out, **reliability_test.flat(state))
with open(out + ".json", "w") as f:
  json.dump({"position": position, "step": step, "devices": sorted(used),
             "processes": jax.process_count()}, f)
"""


def _restore_elsewhere(workdir, data_dir, tmp, devices, processes=1):
  """`resumed_state` in `processes` fresh processes of `devices` devices
  each; returns per process (flat state, info)."""
  port = _free_port()
  outs = [str(tmp / f"restored_{devices}x{processes}_{i}.npz")
          for i in range(processes)]
  dist = lambda i: ([f"127.0.0.1:{port}", str(processes), str(i)]
                    if processes > 1 else [])
  procs = [subprocess.Popen(
      [sys.executable, "-c", _RESTORE, str(workdir), data_dir, outs[i],
       str(devices), *dist(i)], cwd=REPO_ROOT, env=ENV,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(processes)]
  results = []
  for proc, out in zip(procs, outs):
    try:
      log = proc.communicate(timeout=600)[0]
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      raise
    assert proc.returncode == 0, log[-3000:]
    with np.load(out) as flat, open(out + ".json") as f:
      results.append(({k: flat[k] for k in flat.files}, json.load(f)))
  return results


def flat(state):
  """{"a/b/c": leaf}, keyed as Orbax saves them (optax's named tuples by
  field name), so a restored state compares with a saved one."""
  return {"/".join(map(str, k)): np.asarray(v)
          for k, v in ocp.tree.to_flat_dict(state).items()}


def _assert_same_state(got, saved):
  """Every saved leaf restored with the same dtype and bits."""
  want = flat(saved)
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    assert got[key].dtype == value.dtype, key
    np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.slow
def test_two_process_checkpoint_resumes_in_one_process_on_8_and_2_devices(
    two_process_run, phantom_data_dir, tmp_path):
  written, stopped, _, _ = two_process_run
  saved, _ = saved_state(written, stopped)
  workdir = tmp_path / "run"
  shutil.copytree(written, workdir)

  # This process: 1 process, 8 devices.
  state, position, step, devices = resumed_state(str(workdir),
                                                 phantom_data_dir)
  assert (step, position, devices) == (stopped, {"next_index": stopped}, {8})
  _assert_same_state(flat(state), saved)
  # ... and the run goes on from there.
  pretrain.train_and_evaluate(smoke_config(
      "pretrain_simclr", phantom_data_dir, num_steps=stopped + 1,
      checkpoint_every=1000), str(workdir))
  assert _saved_steps(workdir) == [stopped, stopped + 1]
  assert _positions(workdir, stopped + 1)["process_0-of-1.json"] == {
      "next_index": stopped + 1}

  # 1 process, 2 devices.
  (got, info), = _restore_elsewhere(written, phantom_data_dir, tmp_path, 2)
  assert info == {"position": {"next_index": stopped}, "step": stopped,
                  "devices": [2], "processes": 1}
  _assert_same_state(got, saved)


@pytest.mark.slow
def test_one_process_checkpoint_resumes_in_two_processes(
    one_process_runs, phantom_data_dir, tmp_path):
  _, written, stopped, _, _ = one_process_runs
  saved, _ = saved_state(written, stopped)
  for got, info in _restore_elsewhere(written, phantom_data_dir, tmp_path,
                                      4, processes=2):
    assert info == {"position": {"next_index": stopped}, "step": stopped,
                    "devices": [8], "processes": 2}
    _assert_same_state(got, saved)


# -- 4. Workdir paths --------------------------------------------------------


def test_a_uri_workdir_is_not_glued_to_the_working_directory():
  # Only the path arithmetic; no gs:// I/O is attempted here.
  path = checkpointing._ckpt_dir("gs://bucket/runs/a")  # pylint: disable=protected-access
  assert isinstance(path, epath.Path)
  assert str(path) == "gs://bucket/runs/a/checkpoints"
  assert str(checkpointing._ckpt_dir("runs/a")) == str(  # pylint: disable=protected-access
      pathlib.Path("runs/a").absolute() / "checkpoints")


def test_workdir_may_be_an_epath_a_string_or_relative(
    full_run, phantom_data_dir, tmp_path, monkeypatch):
  # The same checkpointing calls through every spelling of one local path.
  monkeypatch.chdir(tmp_path)
  shutil.copytree(full_run, tmp_path / "run")
  spellings = (epath.Path(tmp_path / "run"), str(tmp_path / "run"), "run",
               pathlib.Path("run"))
  want = checkpointing.read_config(full_run)
  for workdir in spellings:
    assert checkpointing.read_config(workdir) == want
    checkpointing.check_same_run(workdir, want)
    assert checkpointing.saved_tree_shapes(workdir)[1] == DAMAGED_STEPS
  # A whole run into an epath.Path workdir (resuming the copy).
  config = _damage_config(phantom_data_dir)
  config.num_steps = DAMAGED_STEPS + 1
  pretrain.train_and_evaluate(config, spellings[0])
  assert _saved_steps(tmp_path / "run")[-1] == DAMAGED_STEPS + 1
  checkpointing.write_config(spellings[0], want)
  assert checkpointing.read_config("run") == want
  assert not list((tmp_path / "run").glob("*.tmp"))


# -- 5. Divergence -----------------------------------------------------------


@pytest.mark.parametrize("log_every, cause", [
    (1, "non-finite embedding_std=nan at step 2"),
    # Step 2 is not logged: the parameters stop it before they are saved.
    (3, "non-finite parameters after step 2")])
def test_divergence_names_step_last_good_checkpoint_and_cause(
    phantom_data_dir, tmp_path, log_every, cause):
  # Learning rate 1e20: the first update is finite, the second is not.
  workdir = tmp_path / "run"
  config = smoke_config("pretrain_simclr", phantom_data_dir, num_steps=6,
                        log_every=log_every, async_checkpoints=False,
                        **{"optim.learning_rate": 1e20})
  with pytest.raises(errors.Diverged) as error:
    pretrain.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  assert cause in message
  assert "lower the learning rate, or check the inputs" in message
  assert (f"the last good checkpoint, step 1 ({workdir}/checkpoints/1), is "
          "kept") in message
  assert _saved_steps(workdir) == [1]
  kept, _ = saved_state(workdir, 1)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(kept["params"]))
