"""Command-line mistakes as one line: what was wrong and what was meant.

absl parses flags inside `app.run`, before a launcher's main: a mistyped
flag, a missing config file, an unknown `--config.a.b` key or a value of the
wrong type would end there in a usage dump or a traceback from
ml_collections. `parse(argv)` is the flags parser `launch.cli.run` hands
to `app.run`: it parses as absl would and turns each of those mistakes into
`error: <one line>` on stderr and exit status 1, before anything is written.

The diagnosis replays the config flags itself (load the file, call
`get_config`, look up each overridden key) rather than reading the
libraries' messages, which name the key only inside a traceback. A config
file or key given by a name it no longer has is refused with its new name
(medclr.train.renames).
"""
import difflib
import importlib.util
import os
import re
import sys
import traceback

from absl import flags
from ml_collections import config_dict
from ml_collections.config_flags import config_flags
from ml_collections.config_flags import config_path

from medclr import errors
from medclr.train import renames

FLAGS = flags.FLAGS


def fail(message):
  """Prints 'error: <message>' (one line) and exits 1."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(1)


def parse(argv):
  """absl's FLAGS(argv), with every user mistake as one line (exit 1)."""
  try:
    remaining = FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    message = describe(argv, e)
    if message is None:
      raise
    fail(message)
  for name in _config_flag_names():
    # A config file that failed to load surfaces only when read (later).
    if FLAGS[name].present and _unreadable(FLAGS[name].value):
      fail(describe(argv, None) or f"--{name}: the config did not load")
  if len(remaining) > 1:
    fail(f"unexpected arguments {' '.join(remaining[1:])} (flags are "
         "written --name=value)")
  return remaining


def describe(argv, error):
  """The one-line message for `error` raised while parsing `argv`, or None
  when it is not a command-line mistake (a bug, to be raised)."""
  if isinstance(error, flags.UnrecognizedFlagError):
    return _unknown_flag(error)
  try:
    argv = FLAGS.read_flags_from_files(argv, force_gnu=False)
  except flags.Error as e:  # an unreadable --flagfile
    return _flag_error(e)
  for name in _config_flag_names():
    message = _check_config(name, argv, error)
    if message:
      return message
  if isinstance(error, flags.Error):
    return _flag_error(error)
  return None


def _unknown_flag(error):
  known = sorted({f"--{name}" for name in FLAGS})
  wanted = f"--{error.flagname}"
  close = difflib.get_close_matches(wanted, known, n=1)
  hint = f" (did you mean {close[0]}?)" if close else " (see --helpshort)"
  return f"unknown flag {wanted}{hint}"


def _flag_error(error):
  """absl's own message for a bad flag value, as one line."""
  text = re.sub(r"^ERROR:+\s*", "", str(error).strip().splitlines()[0])
  required = re.match(r"flag --(\S+)=None: Flag --\S+ must have a value other "
                      "than None", text)
  if required:
    return f"--{required.group(1)} is required"
  text = text[len("flag "):] if text.startswith("flag --") else text
  return text + _enum_hint(text)


def _enum_hint(text):
  """' (did you mean X?)' for '--flag=VALUE: value should be one of ...'."""
  bad = re.match(r"--([^=\s]+)=(.*?): value should be one of", text)
  if not bad or bad.group(1) not in FLAGS:
    return ""
  choices = getattr(FLAGS[bad.group(1)].parser, "enum_values", None) or []
  close = difflib.get_close_matches(bad.group(2), choices, n=1)
  return f" (did you mean {close[0]}?)" if close else ""


def _config_flag_names():
  return sorted({FLAGS[name].name for name in FLAGS
                 if config_flags.is_config_flag(FLAGS[name])})


def _unreadable(config):
  """True for ml_collections' stand-in for a config that failed to load."""
  try:
    getattr(config, "keys", None)
    return False
  except OSError:
    return True


def _check_config(name, argv, error):
  """The first mistake in config flag `name`'s file, argument, keys or
  values on `argv`, as a message, or None."""
  value = _argument(argv, name)
  if value is None:
    return None
  config, message = _load(name, value)
  if message:
    return message
  overrides = _overrides(argv, name)
  for path, _ in overrides:
    try:
      config_path.get_value(path, config)
    except (AttributeError, KeyError, IndexError, ValueError):
      what = "config key" if name == "config" else f"--{name} key"
      return (renames.renamed_key_message(path, what) or
              _unknown_key(name, path, config))
  if isinstance(error, flags.IllegalFlagValueError):
    return _bad_value(name, overrides, config)
  return None


def _argument(argv, name):
  """The value of the last `--name=VALUE` (or `--name VALUE`) on argv."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    if arg == "--":
      break
    match = re.fullmatch(rf"--?{re.escape(name)}(=(.*))?", arg, re.DOTALL)
    if match:
      value = match.group(2) if match.group(1) else (
          argv[i + 1] if i + 1 < len(argv) else None)
  return value


def _overrides(argv, name):
  """[(key path, value text or None)] of each `--name.a.b[=value]`."""
  found = []
  for arg in argv[1:]:
    match = re.fullmatch(rf"--?(?:no)?{re.escape(name)}\.([^=]+)(?:=(.*))?",
                         arg, re.DOTALL)
    if match:
      found.append((match.group(1), match.group(2)))
  return found


def _load(name, value):
  """(config, None), or (None, message) when `--name=FILE[:ARG]` fails."""
  path, *arg = value.split(":", 1)
  flag = f"--{name}={value}"
  if not os.path.isfile(path):
    renamed = renames.renamed_file_message(path, *arg)
    if renamed:
      return None, f"{flag}: {renamed}"
    return None, f"{flag}: no such config file {path}{_nearest_file(path)}"
  try:
    spec = importlib.util.spec_from_file_location(f"_checked_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*arg), None
  except errors.ConfigError as e:
    return None, f"{flag}: {e}"
  except Exception as e:  # pylint: disable=broad-except
    # A mistake in the config file itself: name the line, not the stack.
    return None, f"{flag}: {type(e).__name__}: {e}{_where(e, path)}"


def _nearest_file(path):
  folder = os.path.dirname(path) or "."
  if not os.path.isdir(folder):
    return ""
  close = difflib.get_close_matches(
      os.path.basename(path),
      [f for f in os.listdir(folder) if f.endswith(".py")], n=1)
  return f" (did you mean {os.path.join(os.path.dirname(path), close[0])}?)" \
      if close else ""


def _where(error, path):
  """' (FILE:LINE)' of the deepest frame of `error` in the config file."""
  if isinstance(error, SyntaxError) and error.lineno:
    return f" ({path}:{error.lineno})"
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if os.path.abspath(f.filename) == os.path.abspath(path)]
  return f" ({path}:{frames[-1].lineno})" if frames else ""


def _key_paths(node, prefix=""):
  """Every dotted key path of a ConfigDict (inner nodes too)."""
  for key, value in node.items():
    yield prefix + key
    if isinstance(value, (config_dict.ConfigDict, dict)):
      yield from _key_paths(value, f"{prefix}{key}.")


def _unknown_key(name, path, config):
  keys = list(_key_paths(config))
  close = difflib.get_close_matches(path, keys, n=1, cutoff=0.75)
  if not close:  # a key given without its block: --config.learning_rate
    leaf = path.rsplit(".", 1)[-1]
    leaves = difflib.get_close_matches(
        leaf, {k.rsplit(".", 1)[-1] for k in keys}, n=1, cutoff=0.85)
    close = [k for k in keys if leaves and k.rsplit(".", 1)[-1] == leaves[0]]
  hint = f" (did you mean {' or '.join(close)}?)" if close else ""
  # Named as typed after `--config.`, so the hint can be pasted back.
  what = "config key" if name == "config" else f"--{name} key"
  return f"unknown {what} {path}{hint}"


def _bad_value(name, overrides, config):
  """'--config.a=TEXT: expected TYPE ...' for the override that does not
  parse as its field's type, or None."""
  for path, text in overrides:
    field = f"{name}.{path}"
    if text is None or field not in FLAGS:
      continue
    try:
      FLAGS[field].parser.parse(text)
    except (TypeError, ValueError):
      current = config_path.get_value(path, config)
      if isinstance(current, config_dict.ConfigDict):
        return (f"--{field}={text}: {field} is a group of fields; set one, "
                f"e.g. --{field}.{next(iter(current.keys()))}=...")
      kind = config_path.get_type(path, config)
      shown = repr(current)
      shown = shown if len(shown) <= 60 else shown[:57] + "..."
      return (f"--{field}={text}: expected {getattr(kind, '__name__', kind)} "
              f"(the config's value is {shown})")
  return None
