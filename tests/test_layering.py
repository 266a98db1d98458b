"""Imports only go down: every project import, read with `ast`, follows LAYERS; no import cycles.

LAYERS is the one statement of the order (lowest first). A module may import modules of its own
layer or of a layer listed before it. Project modules are imported at the top of a file; an import
inside a function is only for a heavy optional third-party dependency (torch, transformers' vision
models), never for a project module.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = ('jax_vlm', 'data', 'configs', 'train', 'eval')

# Lowest first. Each entry is a module prefix (a package covers its submodules).
LAYERS = (
    'data',  # dataset builders and the action world: numpy only, nothing from jax_vlm
    'jax_vlm.core',  # errors, the plug-in registry, config sections
    'jax_vlm.models',  # layer 1: pure Linen modules
    'jax_vlm.weights',  # checkpoint formats of the models (transformers, Chameleon's VQGAN)
    'jax_vlm.tokens',  # vocabulary, sequence layout, image pre/post-processing
    'jax_vlm.input',  # record sets -> training batches
    'jax_vlm.inference',  # layer 2: sampler, verifier, rollouts
    'jax_vlm.training',  # layer 2-3: train step, optimiser, sharding, checkpoints, trainer
    'jax_vlm.method',  # IDP bootstrapping, selection, the preference probe
    'jax_vlm.evaluation',  # benchmarks, metrics, judge, reports
    'jax_vlm.pipeline',  # layer 3: stage runner, world stages, FDP variants, reproduction
    'jax_vlm.tools',  # layer 4: aot, convert, export, prepare
    'configs',  # presets: built from the library's defaults
    'jax_vlm',  # layer 4: the package's public names and `python -m jax_vlm.<tool>`
    'train', 'eval',  # the two entry points
)


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[:-len('.py')].replace(os.sep, '.')
  return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def _modules() -> dict[str, str]:
  """Project module name -> file path."""
  out = {}
  for top in ('jax_vlm', 'data', 'configs'):
    for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
      for f in files:
        if f.endswith('.py'):
          path = os.path.join(dirpath, f)
          out[_module_name(path)] = path
  for f in ('train.py', 'eval.py'):
    out[f[:-3]] = os.path.join(ROOT, f)
  return out


MODULES = _modules()


def layer(module: str) -> int:
  """Index in LAYERS of the longest prefix that covers `module`."""
  best = None
  for i, prefix in enumerate(LAYERS):
    if module == prefix or module.startswith(prefix + '.'):
      if best is None or len(prefix) > len(LAYERS[best]):
        best = i
  assert best is not None, f'{module} is in no layer; add it to LAYERS'
  return best


def _resolve(module: str, node: ast.ImportFrom) -> str:
  if not node.level:
    return node.module or ''
  is_package = MODULES[module].endswith('__init__.py')
  parts = module.split('.')[:len(module.split('.')) - node.level + (1 if is_package else 0)]
  return '.'.join(parts + ([node.module] if node.module else []))


def imports(module: str) -> list[tuple[str, int, bool]]:
  """(imported project module, line, inside a function) for each project import of `module`."""
  with open(MODULES[module]) as f:
    tree = ast.parse(f.read(), MODULES[module])
  found = []

  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
      if isinstance(child, ast.Import):
        for alias in child.names:
          if alias.name.split('.')[0] in PROJECT:
            found.append((alias.name, child.lineno, inside))
      elif isinstance(child, ast.ImportFrom):
        base = _resolve(module, child)
        if base.split('.')[0] in PROJECT:
          for alias in child.names:
            target = f'{base}.{alias.name}'
            found.append((target if target in MODULES else base, child.lineno, inside))
      visit(child, inside)

  visit(tree, False)
  return found


def test_every_module_has_a_layer():
  for module in MODULES:
    layer(module)


def test_imports_only_go_down():
  wrong = []
  for module in sorted(MODULES):
    for target, line, _ in imports(module):
      if layer(target) > layer(module):
        wrong.append(f'{MODULES[module]}:{line}: {module} ({LAYERS[layer(module)]}) imports '
                     f'{target} ({LAYERS[layer(target)]})')
  assert not wrong, 'imports against the layer order:\n' + '\n'.join(wrong)


def test_data_imports_nothing_from_jax_vlm():
  wrong = [f'{MODULES[m]}:{line}: {t}' for m in MODULES if layer(m) == 0
           for t, line, _ in imports(m) if not t.startswith('data')]
  assert not wrong, 'data/ is a leaf:\n' + '\n'.join(wrong)


def test_project_imports_are_at_the_top():
  inside = [f'{MODULES[m]}:{line}: {t}' for m in sorted(MODULES)
            for t, line, in_function in imports(m) if in_function]
  assert not inside, 'project imports inside functions:\n' + '\n'.join(inside)


def test_no_import_cycles():
  graph = {m: sorted({t for t, _, _ in imports(m) if t in MODULES and t != m}) for m in MODULES}
  # Tarjan's strongly connected components.
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def strongconnect(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        strongconnect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      strongconnect(v)
  assert not cycles, f'import cycles: {cycles}'


@pytest.mark.parametrize('module, target, expected', [
    ('jax_vlm.models.transformer', 'jax_vlm.training.trainer', True),
    ('data.records', 'jax_vlm.core.errors', True),
    ('jax_vlm.training.trainer', 'jax_vlm.models.transformer', False),
])
def test_the_check_itself(module, target, expected):
  assert (layer(target) > layer(module)) == expected
