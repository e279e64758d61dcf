"""The README's "Your own data on a CPU" walkthrough, run as it is written.

The test reads the code block after the `<!-- walkthrough` comment in
README.md, writes its three example folders as PNG files from the embedded
phantom (`mydata` with `fov/`, the pool `mypool`, `otherset` with a test
split and no `fov/`), and runs the block's commands in order, each through
bash from the repository root, with `$W` a temporary folder and each
`/path/to/NAME` the phantom folder NAME. What differs from a user's run:

- `:demo` becomes `:smoke` in the pretrain and fine-tune commands (two steps
  of the tiny model instead of minutes); nothing else in them changes;
- `make install` and `source .venv/bin/activate` are not run: the folder of
  the interpreter running the tests (the venv's bin/) leads PATH, as
  activating the venv would make it;
- the `W=...` line is not run: W is set in the environment;
- `tensorboard` is not started; `test_walkthrough_programs_are_installed`
  checks that its program is on that PATH.

Every command must exit 0, no console line of a launcher may come from a
library, and each launcher's last stdout line must name its outputs, every
one of which exists.
"""
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys

import nbformat
import numpy as np
from PIL import Image

from conftest import LIBRARY_LINE
from conftest import named_outputs
from conftest import REPO_ROOT
from medclr.data import phantom

MARKER = "<!-- walkthrough"
NOT_RUN = ("make", "source", "tensorboard")
SIZE = 64  # phantom side in pixels: two smoke crops across
LEGEND = "legend: true positive, false positive, false negative"


def walkthrough_commands():
  """The marked block's commands: continuations joined, comments dropped."""
  text = (REPO_ROOT / "README.md").read_text()
  assert text.count(MARKER) == 1, f"README.md needs one {MARKER} comment"
  after = text.split(MARKER, 1)[1].split("\n", 1)[1]
  assert after.startswith("```bash\n"), "the block must follow the comment"
  block = after[len("```bash\n"):].split("\n```", 1)[0]
  commands = []
  for line in block.replace("\\\n", " ").splitlines():
    line = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
    if line:
      commands.append(line)
  return commands


def program(command):
  """The program a command runs (its first word that is not VAR=value), or
  None for a line of assignments only."""
  words = [w for w in shlex.split(command) if not re.match(r"^\w+=", w)]
  return words[0] if words else None


def _save(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _write_labelled(root, counts, seed, with_fov):
  """<root>/<split>/{images,masks[,fov]}/<stem>.png, masks and FOV 0/255."""
  for offset, (split, count) in enumerate(counts.items()):
    for example in phantom.generate(count, SIZE, seed + offset):
      parts = {"images": example["image"], "masks": example["mask"] * 255}
      if with_fov:
        parts["fov"] = example["fov"] * 255
      for folder, array in parts.items():
        _save(root / split / folder / f"{example['stem']}.png", array)


def _example_folders(tmp_path):
  """{README placeholder: phantom folder} for the walkthrough's sets."""
  folders = {name: tmp_path / name for name in ("mydata", "mypool",
                                                "otherset")}
  _write_labelled(folders["mydata"], {"train": 4, "test": 2}, 10, True)
  # 16 images: the pool size the README asks for (one demo batch).
  for example in phantom.generate(16, SIZE, 20):
    _save(folders["mypool"] / "images" / f"{example['stem']}.png",
          example["image"])
  _write_labelled(folders["otherset"], {"test": 3}, 30, False)
  return {f"/path/to/{name}": str(path) for name, path in folders.items()}


def _environment(work):
  """The shell a user has after `source .venv/bin/activate` and `W=...`."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("MEDCLR_NOTEBOOK_")}
  env.update(W=str(work), JAX_PLATFORMS="cpu", PATH=os.pathsep.join(
      [os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
  return env


def _as_run(command, folders):
  """The command with the example folders, and `:smoke` for `:demo`."""
  for placeholder, folder in folders.items():
    command = command.replace(placeholder, folder)
  if re.search(r"-m launch\.(pretrain|finetune) ", command):
    assert command.count(":demo ") == 1, command
    command = command.replace(":demo ", ":smoke ")
  return command


def _check_launcher(command, result):
  """No library line on its console; its last line names what exists."""
  console = (result.stdout + result.stderr).splitlines()
  library = [line for line in console if LIBRARY_LINE.search(line)]
  assert not library, (command, library)
  tag = re.search(r"-m launch\.(\w+)", command).group(1)
  last = result.stdout.strip().splitlines()[-1]
  assert last.startswith(f"[{tag}] outputs"), (command, last)
  paths, log = named_outputs(last)
  missing = [p for p in paths + [log] if not glob.glob(p)]
  assert not missing, (command, last, missing)


def _check_notebook(work):
  """The headless run saved the notebook with no library line in it; it
  reused launch.evaluate's evaluation and drew the overlays' legend."""
  notebook = nbformat.read(work / "evaluate_checkpoint.ipynb", as_version=4)
  outputs = [out for cell in notebook.cells if cell.cell_type == "code"
             for out in cell.get("outputs", [])]
  assert not [out for out in outputs if out.output_type == "error"]
  text = "".join(out.get("text", "") for out in outputs)
  assert not [line for line in text.splitlines() if LIBRARY_LINE.search(line)]
  assert f"using {work}/finetune/eval/metrics.json" in text, text
  assert "evaluating" not in text
  assert LEGEND in text
  assert (work / "finetune" / "eval" / "overlays.png").exists()


def test_readme_walkthrough_runs_as_written(tmp_path):
  commands = walkthrough_commands()
  assert [program(c) for c in commands[:2]] == ["make", "source"], commands
  assert [c for c in commands if program(c) is None] == [commands[2]]
  assert commands[2].startswith("W="), commands[2]
  folders = _example_folders(tmp_path)
  for placeholder in folders:
    assert sum(placeholder in c for c in commands) == 1, placeholder
  work = tmp_path / "work"
  env = _environment(work)
  ran = []
  for command in commands[3:]:
    if program(command) in NOT_RUN:
      continue
    command = _as_run(command, folders)
    result = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (command, result.stdout[-2000:],
                                    result.stderr[-3000:])
    if program(command) == "python":
      _check_launcher(command, result)
    ran.append(program(command))
  assert ran == ["python"] * 7 + ["jupyter"], ran
  _check_notebook(work)


def test_walkthrough_programs_are_installed():
  # What the test does not run must still be there after `make install`.
  path = _environment("")["PATH"]
  for command in walkthrough_commands()[3:]:
    name = program(command)
    assert shutil.which(name, path=path), (
        f"{name!r} (README walkthrough: {command!r}) is not installed in "
        f"{os.path.dirname(sys.executable)}; `make install` installs it")
