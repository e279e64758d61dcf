"""Every Orbax call of medclr lives here (so an Orbax v1 move is one file).

Layout of a workdir:
  <workdir>/checkpoints/<step>/{state, data_iter, config}   Orbax Composite
  <workdir>/config.json                                      the run's config
Orbax writes each step into a temporary directory and renames it when
complete, so a run killed at any moment leaves the previous checkpoint intact
and `latest_step()` never returns a half-written one. A step that fails to
read anyway (damaged files) is set aside as `<step>.unreadable`, never deleted
(docs/reliability.md). Paths go through `etils.epath`, so a workdir may be a
URI such as gs://bucket/run.
"""
import json
import os

from absl import logging
from etils import epath
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from medclr import errors

CHECKPOINT_SUBDIR = "checkpoints"


CheckpointError = errors.CheckpointError


class UnreadableCheckpoint(CheckpointError):
  """One item of one checkpoint step could not be read; names both."""

  def __init__(self, step, path, reason):
    super().__init__(f"checkpoint {path} could not be read: {reason}")
    self.step, self.path, self.reason = step, path, reason


UNREADABLE_SUFFIX = ".unreadable"


def _abs_path(path):
  # Orbax refuses relative paths ("Checkpoint path should be absolute"). A
  # URI (gs://...) is absolute already: abspath would glue it to the cwd.
  text = str(path)
  if "://" in text:
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def _reason(error):
  """The innermost error's first line: Orbax wraps TensorStore's errors in
  messages that print a whole TensorStore spec; the innermost one names the
  file and what is wrong with it."""
  seen = []
  while error is not None and error not in seen and len(seen) < 20:
    seen.append(error)
    error = error.__cause__ or error.__context__
  for error in reversed(seen):
    text = str(error).strip()
    if text:
      first = text.splitlines()[0]
      return f"{type(error).__name__}: " + (
          first if len(first) <= 400 else first[:400] + "...")
  return type(seen[-1]).__name__


def _all_processes_agree(ok):
  """True when `ok` holds on every process (so all resume the same step)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _ckpt_dir(workdir):
  return _abs_path(workdir) / CHECKPOINT_SUBDIR


def latest_complete_step(workdir):
  """The newest complete checkpoint step of `workdir` (any epath), or None.

  Read from the directory listing alone (no CheckpointManager, so no
  barrier: one process may call it by itself). A step still under its
  temporary name, or set aside as `<step>.unreadable`, does not count.
  """
  steps = ocp.utils.checkpoint_steps(_ckpt_dir(workdir))
  return max(steps) if steps else None


def _split_replicated_saves_across_processes_only():
  """Orbax's replica-parallel saving, only where it spreads writes over hosts.

  By default Orbax cuts every replicated array into one slice per replica so
  that each replica writes a part. Each new slice shape costs a small XLA
  compile (88 in a two-step smoke pretraining, about 5 s on a CPU), and in
  one process every replica writes through the same host anyway. Across
  processes the split spreads the writes over the hosts, so it stays on.
  Orbax's handler table is process-wide: this sets its jax.Array entry.
  """
  default = ocp.type_handlers.get_type_handler(jax.Array)
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(
          use_replica_parallel=jax.process_count() > 1,
          # The default handler's store of per-array metadata, kept as is.
          array_metadata_store=getattr(default, "_array_metadata_store",
                                       None)),
      override=True)


class Checkpointer:
  """Periodic saves, keep-last-N, resume of state + Grain iterator + config."""

  def __init__(self, workdir, *, save_every, keep, async_save=True):
    _split_replicated_saves_across_processes_only()
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(
            max(int(save_every), 1)),
        preservation_policy=ocp.checkpoint_managers.LatestN(max(int(keep), 1)),
        enable_async_checkpointing=async_save,
        create=True)
    self._manager = ocp.CheckpointManager(_ckpt_dir(workdir), options=options)

  @property
  def directory(self):
    """<workdir>/checkpoints, as an epath.Path."""
    return self._manager.directory

  def latest_step(self):
    return self._manager.latest_step()

  def all_steps(self):
    """Every complete step on disk, oldest first."""
    return sorted(self._manager.all_steps())

  def should_save(self, step):
    """Whether the interval policy saves at `step`."""
    return self._manager.should_save(int(step))

  def save(self, step, state, data_iter, config_dict, *, force=False,
           extras=None):
    """Saves when the interval policy (or `force`) says so; returns whether.

    `extras` is an optional JSON-able dict of host-side state (e.g.
    ContrastiveCrop boxes) saved with the step and read by `restore_extras`.
    """
    items = {"state": ocp.args.StandardSave(state),
             "data_iter": grain.checkpoint.CheckpointSave(data_iter),
             "config": ocp.args.JsonSave(config_dict)}
    if extras is not None:
      items["extras"] = ocp.args.JsonSave(extras)
    return self._manager.save(int(step), args=ocp.args.Composite(**items),
                              force=force)

  def restore_extras(self, step):
    """The `extras` dict saved at `step`, or None if it has none."""
    path = self._manager.directory / str(int(step)) / "extras"
    if not path.exists():
      return None
    return self._manager.restore(int(step), args=ocp.args.Composite(
        extras=ocp.args.JsonRestore()))["extras"]

  def reached_preemption(self, step):
    """True on every host once any host got a preemption signal (SIGTERM)."""
    return self._manager.reached_preemption(int(step))

  def restore(self, step, abstract_state, data_iter):
    """Restores the state (onto `abstract_state`'s shardings) and the iterator.

    Args:
      step: checkpoint step.
      abstract_state: pytree of `jax.ShapeDtypeStruct` with shardings.
      data_iter: Grain iterator, set in place to the saved position.

    Returns:
      The restored state.

    Raises:
      UnreadableCheckpoint: an item failed to read (on any process: all
        processes raise, so none resumes a step another could not read).
    """
    step_dir = self.directory / str(int(step))
    # One item at a time, so the error names the one that failed.
    failure, state = None, None
    try:
      state = self._manager.restore(int(step), args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))["state"]
    except Exception as e:  # pylint: disable=broad-except
      failure = UnreadableCheckpoint(step, step_dir / "state", _reason(e))
    if failure is None:
      try:
        self._restore_iterator(step, data_iter)
      except Exception as e:  # pylint: disable=broad-except
        failure = UnreadableCheckpoint(step, step_dir / "data_iter",
                                       _reason(e))
    if not _all_processes_agree(failure is None):
      raise failure or UnreadableCheckpoint(
          step, step_dir, "another process could not read it")
    return state

  def _restore_iterator(self, step, data_iter):
    """Sets `data_iter` to the position saved at `step`.

    A run of P processes saves one file per process; a run with another
    process count finds no file of its own. medclr's pipelines give every
    process the same position (global batches consumed; each process reads
    its share of every global batch: medclr/data/pipeline.py), so when all
    saved files agree that position holds under any process count.
    """
    item_dir = self.directory / str(int(step)) / "data_iter"
    count = jax.process_count()
    if not item_dir.exists() or list(item_dir.glob(f"process_*-of-{count}"
                                                    ".json")):
      # Written by this many processes (or absent: Orbax names the item).
      self._manager.restore(int(step), args=ocp.args.Composite(
          data_iter=grain.checkpoint.CheckpointRestore(data_iter)))
      return
    saved = {f.name: json.loads(f.read_text())
             for f in item_dir.glob("process_*-of-*.json")}
    positions = {json.dumps(state, sort_keys=True) for state in saved.values()}
    if len(positions) != 1:
      raise CheckpointError(
          f"{item_dir} holds no data position file" if not saved else
          f"{item_dir} holds data positions that differ between processes "
          f"({', '.join(sorted(saved))}); they cannot be mapped onto "
          f"{count} processes: resume with the process count that wrote it")
    data_iter.set_state(json.loads(positions.pop()))
    logging.info("%s: the data position written by %d processes restored "
                 "in %d", item_dir, len(saved), count)

  def set_aside(self, step):
    """Renames step directory `step` to `<step>.unreadable` (then .1, .2,
    ... if taken); returns the new path. Nothing is deleted.

    The run saves that step number again later, and Orbax would neither
    overwrite the old directory nor save past it while it is listed.
    """
    source = self.directory / str(int(step))
    target = self.directory / f"{int(step)}{UNREADABLE_SUFFIX}"
    n = 0
    while target.exists():
      n += 1
      target = self.directory / f"{int(step)}{UNREADABLE_SUFFIX}.{n}"
    # Every process has chosen the name before process 0 renames, and
    # re-reads the step list after.
    ocp.multihost.sync_global_processes(f"medclr_set_aside_{int(step)}_0")
    if jax.process_index() == 0:
      source.rename(target)
    ocp.multihost.sync_global_processes(f"medclr_set_aside_{int(step)}_1")
    self._manager.reload()
    return target

  def wait_until_finished(self):
    """Blocks until an asynchronous save in flight is on disk."""
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def write_config(workdir, config_dict):
  """Writes <workdir>/config.json atomically (temp file + rename)."""
  path = _abs_path(workdir) / "config.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(json.dumps(config_dict, indent=2, sort_keys=True))
  tmp.replace(path)


# Fields a resumed run may change: how long and how often, where data lives,
# the device mesh (checkpoints move between topologies), how it is evaluated,
# and what a fresh run would have been initialised from (a workdir's own
# checkpoint wins over `init` on resume).
RESUMABLE_CHANGES = ("num_steps", "log_every", "checkpoint_every",
                     "keep_checkpoints", "async_checkpoints", "data.data_dir",
                     "data.worker_count", "mesh.", "eval.", "init.",
                     "guard.mode")


def _flat_config(tree, prefix=""):
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(_flat_config(value, name + "."))
    else:
      flat[name] = value
  return flat


def check_same_run(workdir, config_dict, rename=None):
  """Refuses to resume `workdir` under a config it was not made with.

  Only checked when the workdir holds checkpoints. Changes to
  RESUMABLE_CHANGES are allowed (e.g. more steps), and so are fields the
  saved config lacks (added by a later medclr; a warning lists them).

  Args:
    workdir: the run's directory.
    config_dict: the config it is to resume under, as a dict.
    rename: saved key -> its current name (medclr.train.renames), so a run
      saved before a key was renamed resumes under the new name.

  Raises:
    CheckpointError: naming every changed field, old and new value.
  """
  path = _abs_path(workdir) / "config.json"
  if not path.exists() or not _ckpt_dir(workdir).exists():
    return
  old = _flat_config(json.loads(path.read_text()))
  if rename is not None:
    old = {rename(key): value for key, value in old.items()}
  new = _flat_config(json.loads(json.dumps(config_dict)))
  # Options added to medclr after the checkpoint was written: their
  # defaults keep the old behaviour, so an upgrade does not strand a run.
  added = sorted(set(new) - set(old))
  if added:
    logging.warning("%s was written before these config fields existed; "
                    "resuming with %s", workdir,
                    ", ".join(f"{key}={new[key]!r}" for key in added))
  changed = [f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
             for key in sorted(set(old) | set(new))
             if key not in added and old.get(key) != new.get(key) and not any(
                 key == allowed or (allowed.endswith(".") and
                                    key.startswith(allowed))
                 for allowed in RESUMABLE_CHANGES)]
  if changed:
    shown = "; ".join(changed[:8]) + ("; ..." if len(changed) > 8 else "")
    raise CheckpointError(
        f"{workdir} holds checkpoints of a run made with another config "
        f"({shown}); resuming would mix the two. Use a new --workdir, or "
        "delete this one to start over.")


def read_config(workdir):
  """The config dict saved by a pretraining or fine-tuning run."""
  path = _abs_path(workdir) / "config.json"
  if not path.exists():
    raise CheckpointError(f"{path} not found: {workdir} is not a medclr workdir "
                          "(run launch.pretrain or launch.finetune into it)")
  return json.loads(path.read_text())


def _latest_state_dir(workdir, step=None):
  ckpt_dir = _ckpt_dir(workdir)
  if not ckpt_dir.exists():
    raise CheckpointError(f"no checkpoints in {workdir}: {ckpt_dir} does not "
                          "exist")
  manager = ocp.CheckpointManager(
      ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step() if step is None else step
  manager.close()
  if step is None:
    raise CheckpointError(f"no complete checkpoint in {ckpt_dir}")
  state_dir = ckpt_dir / str(step) / "state"
  if not state_dir.exists():
    if state_dir.parent.exists():  # the step is there, its state is not
      raise _unreadable(workdir, step, state_dir, FileNotFoundError(
          "the step holds no state item"))
    raise CheckpointError(f"checkpoint step {step} not found in {ckpt_dir}")
  return state_dir, step


def _unreadable(workdir, step, state_dir, error):
  """UnreadableCheckpoint for another run's checkpoint (a pretrained encoder,
  an evaluated model): named, with the older steps, never swapped for one,
  so a result is never silently made with other weights."""
  older = sorted((int(p.name) for p in _ckpt_dir(workdir).iterdir()
                  if p.name.isdigit() and int(p.name) < int(step)),
                 reverse=True)
  hint = (f"; older checkpoints there: steps {', '.join(map(str, older))} "
          "(choose one with config.init.pretrain_checkpoint_step when "
          "starting from it, --step when evaluating)" if older else
          "; it holds no older checkpoint")
  return UnreadableCheckpoint(step, state_dir, _reason(error) + hint)


def saved_tree_shapes(workdir, step=None):
  """{path: shape} tree of the saved train state, read from its metadata."""
  state_dir, step = _latest_state_dir(workdir, step)
  try:
    metadata = ocp.PyTreeCheckpointer().metadata(state_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise _unreadable(workdir, step, state_dir, e) from e
  metadata = getattr(metadata, "item_metadata", metadata)
  tree = getattr(metadata, "tree", metadata)
  if tree is None:  # Orbax logs its own error and returns None
    raise _unreadable(workdir, step, state_dir, ValueError(
        "Orbax could not read its metadata (files damaged or missing)"))
  return jax.tree.map(lambda m: tuple(m.shape), tree), step


def _flatten(tree, prefix=""):
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, dict):
      flat.update(_flatten(value, path))
    else:
      flat[path] = value
  return flat


def check_compatible(saved, wanted, where):
  """Raises CheckpointError naming every path whose shape differs.

  Parameters the checkpoint holds under a wanted part (e.g. params/encoder)
  but the model lacks are problems too: a shallower model would otherwise
  load the first levels of a deeper encoder and silently drop the rest.
  """
  saved_flat, wanted_flat = _flatten(saved), _flatten(wanted)
  problems = []
  for path, abstract in wanted_flat.items():
    if path not in saved_flat:
      problems.append(f"{path}: missing in checkpoint")
    elif tuple(saved_flat[path]) != tuple(abstract.shape):
      problems.append(f"{path}: checkpoint has shape {tuple(saved_flat[path])}, "
                      f"model expects {tuple(abstract.shape)}")
  parts = {"/".join(path.split("/")[:2]) + "/" for path in wanted_flat}
  for path in saved_flat:
    if path not in wanted_flat and any(path.startswith(p) for p in parts):
      problems.append(f"{path}: in checkpoint, not in this model")
  if problems:
    shown = "\n  ".join(problems[:10])
    more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
    raise CheckpointError(f"{where} is incompatible with this model "
                          f"(check config.model.widths / in_channels):\n  "
                          f"{shown}{more}")


def restore_subtrees(workdir, abstract, step=None):
  """Restores part of a saved train state onto `abstract`'s shardings.

  Used to hand the pretrained encoder (and decoder) to the U-Net. Encoder
  parameter paths are identical in both models, so `abstract` is simply
  {'params': {'encoder': ...}, 'batch_stats': {'encoder': ...}} built from the
  U-Net. Shapes are checked against the checkpoint's metadata first, for an
  error that names the offending parameter instead of an Orbax traceback.

  Returns:
    (restored tree shaped like `abstract`, step).
  """
  saved, step = saved_tree_shapes(workdir, step)
  check_compatible(saved, abstract, f"checkpoint {workdir} (step {step})")
  state_dir, _ = _latest_state_dir(workdir, step)
  try:
    restored = ocp.PyTreeCheckpointer().restore(
        state_dir, args=ocp.args.PyTreeRestore(
            item=abstract,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            partial_restore=True))
  except Exception as e:  # pylint: disable=broad-except
    # Shapes and paths were checked above: what is left is the files.
    raise _unreadable(workdir, step, state_dir, e) from e
  return restored, step
