"""Config keys, config arguments and config files that were renamed.

The one place that knows the old names (CHANGELOG.md lists the same
renames). An old name is refused with an error that gives the new one;
there are no silent aliases, so a command or config written for the old
name fails instead of running something else. Kept low (imports only
errors) so configs, trainers and launchers can all use it.
"""
import os

from medclr import errors

# Old dotted config key -> new; a key under an old block is renamed with it
# (crop.mode -> contrastive_crop.mode). Issue 26: three unrelated keys
# were named after crops, and pretrain_step also named a train step.
RENAMED_KEYS = {
    "data.crops": "data.crop_site",
    "crop": "contrastive_crop",
    "crops": "multicrop",
    "init.pretrain_step": "init.pretrain_checkpoint_step",
}
# Old argument after a config file's colon -> new.
RENAMED_ARGS = {"crops": "multicrop"}
# Old config file name -> (new file name, argument that selects the old
# file's settings).
RENAMED_FILES = {
    "pretrain_chaitanya.py": ("pretrain_volume_supcon.py", "chaitanya"),
    "pretrain_pcl.py": ("pretrain_volume_supcon.py", "pcl"),
}
SEE = "(see CHANGELOG.md)"


def current_key(path):
  """The current name of dotted config key `path` (itself if not renamed)."""
  for old, new in RENAMED_KEYS.items():
    if path == old or path.startswith(old + "."):
      return new + path[len(old):]
  return path


def renamed_key_message(path, what="config key"):
  """'<what> <path> was renamed to <new> ...' for an old key, else None."""
  new = current_key(path)
  if new == path:
    return None
  return f"{what} {path} was renamed to {new} {SEE}"


def check_no_renamed_keys(config):
  """Refuses a config that holds a key under its old name.

  Raises:
    errors.ConfigError naming the old key and its new name.
  """
  for path in _key_paths(config):
    message = renamed_key_message(path)
    if message:
      raise errors.ConfigError(message)


def _key_paths(node, prefix=""):
  for key, value in node.items():
    yield prefix + key
    if hasattr(value, "items"):
      yield from _key_paths(value, f"{prefix}{key}.")


def renamed_arg_message(key, arg, known):
  """The error for config argument `key` of `arg` if it was renamed to one
  of `known`, else None."""
  new = RENAMED_ARGS.get(key)
  if new is None or new not in known:
    return None
  return f"config argument {key!r} in {arg!r} was renamed to {new!r} {SEE}"


def renamed_file_message(path, arg=None):
  """The error for config file `path` (argument `arg`) if it was renamed,
  naming the new file and argument, else None."""
  renamed = RENAMED_FILES.get(os.path.basename(path))
  if renamed is None:
    return None
  new_name, variant = renamed
  new = os.path.join(os.path.dirname(path), new_name)
  new_arg = ",".join(a for a in (variant, arg) if a)
  return f"config file {path} was renamed to {new}:{new_arg} {SEE}"
