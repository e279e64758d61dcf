"""The import graph of medclr/, launch/ and configs/ runs one way.

Every module is parsed with `ast` (module-level and function-level imports
alike, via ast.walk) into the graph of its imports of other modules of the
project. The graph must have no cycle, and each module may import only
modules of its own layer or a lower one (LAYERS). A new module must be
added to LAYERS before this test passes. Imports by string
(`importlib.import_module`, as medclr.methods.REGISTRY does) are not seen.
"""
import ast
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("medclr", "launch", "configs")

# Low to high. A module may import modules of its own or a lower layer.
UTILITIES, BUILDING_BLOCKS, METHODS, LOOPS, LAUNCHERS = range(5)
LAYERS = {
    # Utilities: no project imports above this layer.
    "medclr": UTILITIES,
    "medclr.checkpointing": UTILITIES,
    "medclr.console": UTILITIES,
    "medclr.contrastive_crop": UTILITIES,
    "medclr.crop_presets": UTILITIES,
    "medclr.crops": UTILITIES,
    "medclr.ema": UTILITIES,
    "medclr.errors": UTILITIES,
    "medclr.guard": UTILITIES,
    "medclr.inference": UTILITIES,
    "medclr.losses": UTILITIES,
    "medclr.metric_writer": UTILITIES,
    "medclr.metrics": UTILITIES,
    "medclr.normalize": UTILITIES,
    "medclr.optim": UTILITIES,
    "medclr.pixel_contrast": UTILITIES,
    "medclr.pixel_sampling": UTILITIES,
    "medclr.sharding": UTILITIES,
    "medclr.study.grid": UTILITIES,
    "medclr.study.plots": UTILITIES,
    "medclr.warm_start": UTILITIES,
    "medclr.xla_defaults": UTILITIES,
    # Augmentation, data pipelines and models.
    "medclr.adapt_bn": BUILDING_BLOCKS,
    "medclr.augment": BUILDING_BLOCKS,
    "medclr.device_crops": BUILDING_BLOCKS,
    "medclr.distortions": BUILDING_BLOCKS,
    "medclr.data": BUILDING_BLOCKS,
    "medclr.data.fov": BUILDING_BLOCKS,
    "medclr.data.multicrop": BUILDING_BLOCKS,
    "medclr.data.phantom": BUILDING_BLOCKS,
    "medclr.data.pipeline": BUILDING_BLOCKS,
    "medclr.data.prepare": BUILDING_BLOCKS,
    "medclr.data.preprocess": BUILDING_BLOCKS,
    "medclr.data.readers": BUILDING_BLOCKS,
    "medclr.data.sources": BUILDING_BLOCKS,
    "medclr.data.tfds_builder": BUILDING_BLOCKS,
    "medclr.data.volume_builder": BUILDING_BLOCKS,
    "medclr.data.volume_pipeline": BUILDING_BLOCKS,
    "medclr.data.volumes": BUILDING_BLOCKS,
    "medclr.models": BUILDING_BLOCKS,
    "medclr.models.batch_norm": BUILDING_BLOCKS,
    "medclr.models.dino_head": BUILDING_BLOCKS,
    "medclr.models.dira_head": BUILDING_BLOCKS,
    "medclr.models.encoder": BUILDING_BLOCKS,
    "medclr.models.heads": BUILDING_BLOCKS,
    "medclr.models.local_head": BUILDING_BLOCKS,
    "medclr.models.macl_head": BUILDING_BLOCKS,
    "medclr.models.unet": BUILDING_BLOCKS,
    # Train steps, methods, the online probe and the shared config checks.
    "medclr.config_checks": METHODS,
    "medclr.methods": METHODS,
    "medclr.methods.adco": METHODS,
    "medclr.methods.byol": METHODS,
    "medclr.methods.chaitanya_local": METHODS,
    "medclr.methods.dino": METHODS,
    "medclr.methods.dira": METHODS,
    "medclr.methods.macl": METHODS,
    "medclr.methods.moco": METHODS,
    "medclr.methods.simclr": METHODS,
    "medclr.methods.volume_supcon": METHODS,
    "medclr.probe": METHODS,
    "medclr.semi_steps": METHODS,
    "medclr.steps": METHODS,
    # Training loops, evaluation, studies and the configs.
    "medclr.augment_preview": LOOPS,
    "medclr.evaluate": LOOPS,
    "medclr.finetune": LOOPS,
    "medclr.loop": LOOPS,
    "medclr.pretrain": LOOPS,
    "medclr.study": LOOPS,
    "medclr.study.cells": LOOPS,
    "medclr.study.report": LOOPS,
    "medclr.study.runner": LOOPS,
    "configs": LOOPS,
    "configs.common": LOOPS,
    "configs.finetune_unet": LOOPS,
    "configs.pretrain_adco": LOOPS,
    "configs.pretrain_byol": LOOPS,
    "configs.pretrain_chaitanya": LOOPS,
    "configs.pretrain_chaitanya_local": LOOPS,
    "configs.pretrain_dino": LOOPS,
    "configs.pretrain_dira": LOOPS,
    "configs.pretrain_macl": LOOPS,
    "configs.pretrain_mocov2": LOOPS,
    "configs.pretrain_pcl": LOOPS,
    "configs.pretrain_simclr": LOOPS,
    "configs.study_drive": LOOPS,
    "configs.study_em": LOOPS,
    # Command-line entry points.
    "launch": LAUNCHERS,
    "launch.evaluate": LAUNCHERS,
    "launch.finetune": LAUNCHERS,
    "launch.flag_errors": LAUNCHERS,
    "launch.prepare": LAUNCHERS,
    "launch.prepare_volumes": LAUNCHERS,
    "launch.pretrain": LAUNCHERS,
    "launch.preview_augment": LAUNCHERS,
    "launch.runner": LAUNCHERS,
    "launch.study": LAUNCHERS,
}


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
  unclassified = sorted(set(files) - set(LAYERS))
  assert not unclassified, (
      f"modules without a layer: {unclassified}; classify each in "
      "tests/imports_test.py LAYERS (0 utilities, 1 augment/data/models, "
      "2 steps/methods, 3 loops/configs, 4 launch)")
  stale = sorted(set(LAYERS) - set(files))
  assert not stale, f"LAYERS names modules that no longer exist: {stale}"


def test_no_import_cycle():
  graph, _ = import_graph()
  cycle = _cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_never_go_up_a_layer():
  graph, files = import_graph()
  upward = []
  for module, edges in sorted(graph.items()):
    for target, line in sorted(edges.items()):
      if module not in LAYERS or target not in LAYERS:
        continue  # test_every_module_has_a_layer reports these
      if LAYERS[target] > LAYERS[module]:
        path = files[module].relative_to(REPO_ROOT)
        upward.append(f"{module} (layer {LAYERS[module]}) imports {target} "
                      f"(layer {LAYERS[target]}) at {path}:{line}")
  assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_graph_sees_function_level_imports():
  # medclr.models imports its submodules only inside functions.
  graph, _ = import_graph()
  assert "medclr.models.unet" in graph["medclr.models"]
  assert "medclr.loop" in graph["medclr.pretrain"]


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
