"""One quiet console: medclr's lines on the terminal, library logs in a file.

A launcher's console shows what medclr itself says: its progress rows and
result lines (printed), its INFO log lines (stdout) and its warnings
(stderr, as `warning: ...`). What the libraries log (Orbax, TFDS, absl,
JAX, Grain, Python warnings) and what TFDS prints while writing records goes
to `<dir>/log.txt` instead, in absl's format, INFO and up. A record is
medclr's when the code that logged it lives in this project (medclr/,
launch/, configs/), whichever logger it went through: medclr and Orbax both
log through absl's logger.

`hold()` installs this before flags are parsed (records wait in memory);
`to_file(directory)` names the directory once it is known. The file is
opened only when that directory exists: a run refused before it created its
workdir writes nothing, and what it logged is dropped. `library_level`
(launchers pass absl's --verbosity when given) also shows library records
of that level and up on stderr.

Outside a launcher (tests, notebooks) nothing here is installed and logging
is left as the caller configured it, until it calls `to_file` (as
notebooks/evaluate_checkpoint.ipynb does).
"""
import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import time

from absl import logging as absl_logging
from etils import epath

LOG_NAME = "log.txt"
# Records held while the log's directory does not exist yet; a run that logs
# more before creating it keeps the newest.
_MAX_PENDING = 10_000
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN_DIRS = tuple(os.path.join(_ROOT, d) + os.sep
                  for d in ("medclr", "launch", "configs"))
# Lines a library printed to stdout are logged under this logger name (the
# record's pathname would be this file, which is medclr's).
_PRINTED = "library.stdout"
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SHARD = re.compile(r"-\d{5}-of-(\d{5})$")

_state = {"file": None}


def is_own(record):
  """True when the code that logged `record` is medclr's."""
  if record.name.startswith(_PRINTED):
    return False
  return os.path.abspath(record.pathname).startswith(_OWN_DIRS)


class _Own(logging.Handler):
  """medclr's records: INFO as plain lines on stdout, warnings on stderr."""

  def __init__(self):
    super().__init__(logging.INFO)
    self.addFilter(is_own)

  def emit(self, record):
    try:
      text = record.getMessage()
      if record.exc_info:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
      if record.levelno < logging.WARNING:
        print(text, file=sys.stdout, flush=True)
      else:
        kind = "warning" if record.levelno < logging.ERROR else "error"
        print(f"{kind}: {text}", file=sys.stderr, flush=True)
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)


class _LogFile(logging.Handler):
  """Appends formatted records to `path` once its directory exists."""

  def __init__(self):
    super().__init__(logging.NOTSET)
    self.setFormatter(absl_logging.PythonFormatter())
    self.path = None
    self._pending = []
    self._file = None
    self._closed = False

  def set_path(self, path):
    with self.lock:
      self.path = path
      self._try_open()

  def _try_open(self):
    if (self._file is None and self.path
        and os.path.isdir(os.path.dirname(self.path))):
      self._file = open(self.path, "a", encoding="utf-8")
      stamp = time.strftime("%Y-%m-%d %H:%M:%S")
      command = " ".join(getattr(sys, "orig_argv", sys.argv))
      self._file.write(f"==== {stamp} {command}\n")
      self._file.writelines(line + "\n" for line in self._pending)
      self._file.flush()
      self._pending = []

  def flush(self):
    with self.lock:
      if not self._closed:
        self._try_open()
        if self._file:
          self._file.flush()

  def emit(self, record):
    if self._closed:  # a thread logging while the process exits
      return
    try:
      line = self.format(record)
      if self._file is None:
        self._pending.append(line)
        del self._pending[:-_MAX_PENDING]
        self._try_open()
      else:
        self._file.write(line + "\n")
        self._file.flush()
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)

  def close(self):
    with self.lock:
      if not self._closed:
        self._try_open()
        if self._file:
          self._file.close()
        self._closed = True
    super().close()


def hold():
  """Routes logging through this module; records wait for `to_file`.

  Call before anything logs (a library logging through absl while no
  handler exists gets Python's default one, printing 'WARNING:absl:...' to
  stderr), and again once `app.run` has added absl's handler, which would
  print every record, medclr's included, a second time.
  """
  root = logging.getLogger()
  if _state["file"] is None:
    _state["file"] = _LogFile()
    root.addHandler(_state["file"])
    root.addHandler(_Own())
  root.removeHandler(absl_logging.get_absl_handler())
  # absl calls logging.basicConfig() when a library logs before any handler
  # exists, and outside app.run (a notebook) nothing removes that stderr
  # handler again, as app.run does: it would print every library record.
  for handler in list(root.handlers):
    if type(handler) is logging.StreamHandler and handler.stream == sys.stderr:
      root.removeHandler(handler)
  root.setLevel(min(root.level, logging.INFO) or logging.INFO)
  logging.captureWarnings(True)


def to_file(directory, *, process_id=None, library_level=None):
  """Names the log's directory; returns the log file's path (or None).

  Args:
    directory: the run's workdir or data folder (may not exist yet), or
      None for no log file (library records then reach the console at
      WARNING and up, as without this module).
    process_id: a multi-process run's index: processes other than 0 write
      `log.<i>.txt`, since a shared workdir would interleave them.
    library_level: a Python logging level: library records of that level and
      up are also shown on stderr, in absl's format.
  """
  hold()
  root = logging.getLogger()
  # Levels are the handlers' business: the file takes INFO and up.
  logging.getLogger("absl").setLevel(logging.NOTSET)
  root.setLevel(min(library_level or logging.INFO, logging.INFO))
  if directory is None:
    root.removeHandler(_state["file"])
    library_level = library_level or logging.WARNING
  if library_level is not None:
    library = logging.StreamHandler(sys.stderr)
    library.setFormatter(absl_logging.PythonFormatter())
    library.setLevel(library_level)
    library.addFilter(lambda record: not is_own(record))
    root.addHandler(library)
  if directory is None:
    return None
  name = LOG_NAME if not process_id else f"log.{int(process_id)}.txt"
  path = os.path.join(_local(os.fspath(directory)), name)
  _state["file"].set_path(path)
  return path


def _local(directory):
  """`directory`, or for an object-store URI (gs://...), which cannot be
  appended to, a local folder named after it in the temp directory."""
  if not _URI.match(directory):
    return os.path.abspath(os.path.expanduser(directory))
  safe = re.sub(r"[^A-Za-z0-9._-]+", "_", directory)
  local = os.path.join(tempfile.gettempdir(), "medclr_logs", safe)
  os.makedirs(local, exist_ok=True)
  return local


def log_path():
  """The log file's path once `to_file` named a directory, else None."""
  handler = _state["file"]
  return handler.path if handler else None


@contextlib.contextmanager
def library_output():
  """Sends what a library prints to stdout to the log (when `hold` ran).

  TFDS prints 'Downloading and preparing dataset ...' while writing records.
  """
  if _state["file"] is None:
    yield
    return
  stream = _LineLogger(logging.getLogger(_PRINTED))
  with contextlib.redirect_stdout(stream):
    yield
  stream.flush()


class _LineLogger(io.TextIOBase):
  """A text stream logging each complete line at INFO."""

  def __init__(self, logger):
    super().__init__()
    self._logger = logger
    self._partial = ""

  def write(self, text):
    lines = (self._partial + text).split("\n")
    self._partial = lines.pop()
    for line in lines:
      self._log(line)
    return len(text)

  def flush(self):
    self._log(self._partial)
    self._partial = ""

  def _log(self, line):
    if line.strip() and self._logger.isEnabledFor(logging.INFO):
      # Named 'stdout' in the log: the code that printed is not known.
      self._logger.handle(self._logger.makeRecord(
          self._logger.name, logging.INFO, "stdout", 0, line, None, None))


def flush():
  """Writes held records now if the log's directory exists."""
  if _state["file"] is not None:
    _state["file"].flush()


def outputs_line(tag, outputs):
  """'[tag] outputs ...; library logs: ...': every output of a run, by path.

  Args:
    tag: the launcher's name.
    outputs: a directory (its entries are named, the log file aside) or a
      list of paths.
  """
  flush()
  log = log_path()
  if isinstance(outputs, (list, tuple)):
    line = f"[{tag}] outputs: {', '.join(os.fspath(p) for p in outputs)}"
  else:
    directory = epath.Path(outputs)
    names = _entries(directory, skip=os.path.basename(log or ""))
    line = f"[{tag}] outputs in {directory}: {', '.join(names) or 'none'}"
  if log and os.path.isfile(log):
    line += f"; library logs: {log}"
  return line


def _entries(directory, skip):
  """Sorted names of `directory`'s entries, with what each holds."""
  names = []
  for path in sorted(directory.iterdir(), key=lambda p: p.name):
    if path.name == skip or path.name.startswith("."):
      continue
    if not path.is_dir():
      name = _SHARD.sub(r"-*-of-\1", path.name)
      names += [] if name in names else [name]
    elif path.name == "tb":
      names.append(f"tb/ (tensorboard --logdir {path})")
    else:
      children = [c.name for c in path.iterdir()]
      steps = sorted(int(c) for c in children if c.isdigit())
      held = (f"step{'s' * (len(steps) > 1)} {', '.join(map(str, steps))}"
              if steps else f"{len(children)} files")
      names.append(f"{path.name}/ ({held})")
  return names
