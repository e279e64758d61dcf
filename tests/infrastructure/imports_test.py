"""The import graph of medclr/, launch/ and configs/ runs one way.

Every module is parsed with `ast` (module-level and function-level imports
alike, via ast.walk) into the graph of its imports of other modules of the
project. The graph must have no cycle, and each module may import only
modules of its own layer or a lower one (LAYERS, by package). A new
package must be added to LAYERS before this test passes. Imports by string
(`importlib.import_module`, as medclr.methods.method_class does) are not
seen.
"""
import ast
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("medclr", "launch", "configs")

# Low to high, by package (the longest matching prefix wins). A module may
# import modules of its own or a lower layer. Each subpackage's docstring
# says the same in words.
INFRASTRUCTURE, BUILDING_BLOCKS, METHODS, TRAINING, STUDIES, LAUNCHERS = (
    range(6))
LAYERS = {
    # Infrastructure: medclr's top-level modules (errors, console, sharding,
    # checkpointing, optim, metric_writer, xla_defaults).
    "medclr": INFRASTRUCTURE,
    # Host data, device augmentation and the shared networks.
    "medclr.data": BUILDING_BLOCKS,
    "medclr.augment": BUILDING_BLOCKS,
    "medclr.models": BUILDING_BLOCKS,
    # Pretraining methods and scoring.
    "medclr.methods": METHODS,
    "medclr.evaluate": METHODS,
    # The trainers, and the configs that drive them.
    "medclr.train": TRAINING,
    "configs": TRAINING,
    "medclr.study": STUDIES,
    "launch": LAUNCHERS,
}
# The top-level modules allowed beside the subpackages.
INFRASTRUCTURE_MODULES = {
    "medclr.checkpointing", "medclr.console", "medclr.errors",
    "medclr.metric_writer", "medclr.optim", "medclr.sharding",
    "medclr.xla_defaults"}


def layer(module):
  """The layer of `module`: that of its longest prefix in LAYERS."""
  parts = module.split(".")
  for end in range(len(parts), 0, -1):
    prefix = ".".join(parts[:end])
    if prefix in LAYERS:
      return LAYERS[prefix]
  return None


def _module_files():
  """{module name: path} of every module of PACKAGES."""
  files = {}
  for package in PACKAGES:
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
      parts = path.relative_to(REPO_ROOT).with_suffix("").parts
      if parts[-1] == "__init__":
        parts = parts[:-1]
      files[".".join(parts)] = path
  return files


def _imports(module, is_package, tree, modules):
  """(project module, line) of every import in `tree`, nested ones too.

  `import a.b` names a.b; `from a import b` names a.b when that is a
  module, else a (b is a name defined in a). Relative imports are resolved
  against `module`.
  """
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, node.lineno
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        package = module.split(".")[:None if is_package else -1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
      for alias in node.names:
        name = f"{base}.{alias.name}"
        yield (name if name in modules else base), node.lineno


def import_graph():
  """({module: {imported project module: first line}}, {module: path})."""
  files = _module_files()
  graph = {}
  for module, path in files.items():
    tree = ast.parse(path.read_text(), filename=str(path))
    edges = {}
    for target, line in _imports(module, path.name == "__init__.py", tree,
                                 files):
      if target in files and target != module:
        edges[target] = min(line, edges.get(target, line))
    graph[module] = edges
  return graph, files


def _cycle(graph):
  """One import cycle as a list of modules, or None."""
  state = {}  # module -> 1 while on the stack, 2 when done
  stack = []

  def visit(module):
    state[module] = 1
    stack.append(module)
    for target in sorted(graph.get(module, ())):
      if state.get(target) == 1:
        return stack[stack.index(target):] + [target]
      if target not in state:
        found = visit(target)
        if found:
          return found
    stack.pop()
    state[module] = 2
    return None

  for module in sorted(graph):
    if module not in state:
      found = visit(module)
      if found:
        return found
  return None


def test_every_module_has_a_layer():
  _, files = import_graph()
  unclassified = sorted(m for m in files if layer(m) is None)
  assert not unclassified, (
      f"modules without a layer: {unclassified}; add their package to "
      "tests/infrastructure/imports_test.py LAYERS")
  stale = sorted(set(LAYERS) - set(files))
  assert not stale, f"LAYERS names packages that no longer exist: {stale}"


def test_medclr_top_level_holds_only_infrastructure():
  _, files = import_graph()
  top = {m for m, path in files.items()
         if m.count(".") == 1 and m.startswith("medclr.")
         and path.name != "__init__.py"}
  assert top == INFRASTRUCTURE_MODULES, (
      f"top-level medclr modules {sorted(top - INFRASTRUCTURE_MODULES)} "
      "belong in a subpackage (data, augment, models, methods, evaluate, "
      "train, study)")


def test_no_import_cycle():
  graph, _ = import_graph()
  cycle = _cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_never_go_up_a_layer():
  graph, files = import_graph()
  upward = []
  for module, edges in sorted(graph.items()):
    for target, line in sorted(edges.items()):
      if layer(module) is None or layer(target) is None:
        continue  # test_every_module_has_a_layer reports these
      if layer(target) > layer(module):
        path = files[module].relative_to(REPO_ROOT)
        upward.append(f"{module} (layer {layer(module)}) imports {target} "
                      f"(layer {layer(target)}) at {path}:{line}")
  assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_graph_sees_function_level_imports():
  # medclr.models imports its submodules only inside functions.
  graph, _ = import_graph()
  assert "medclr.models.unet" in graph["medclr.models"]
  assert "medclr.train.trainer" in graph["medclr.train.pretrain"]


def test_functions_are_short_and_launchers_tiny():
  """No function over 60 lines in medclr/ or configs/; launchers (modules
  of launch/ run as `python -m`) under 60 lines."""
  long_functions = []
  for package in ("medclr", "configs"):
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
      for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
          length = node.end_lineno - node.lineno + 1
          if length > 60:
            long_functions.append(f"{path.relative_to(REPO_ROOT)}:"
                                  f"{node.name} ({length} lines)")
  assert not long_functions, long_functions
  long_launchers = [
      f"{path.name} ({len(path.read_text().splitlines())} lines)"
      for path in sorted((REPO_ROOT / "launch").glob("*.py"))
      if "__main__" in path.read_text()
      and len(path.read_text().splitlines()) >= 60]
  assert not long_launchers, long_launchers
