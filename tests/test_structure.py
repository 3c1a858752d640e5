"""The shape of the package (issue: one module per objective).

1. No module of t5x_lite/ outside objectives/ spells an objective's name in
   its code (comments and docstrings aside): the core looks objectives up.
   tasks/builtin.py and tasks/tfds_tasks.py name the built-in tasks they
   register, so they may.
2. No import circle in t5x_lite/, function-level (lazy) imports included.
3. No function in t5x_lite/ is over 120 lines.
"""
import ast
import io
import os
import re
import tokenize

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, 't5x_lite')
MAY_NAME_OBJECTIVES = ('t5x_lite/tasks/builtin.py', 't5x_lite/tasks/tfds_tasks.py')
MAX_FUNCTION_LINES = 120


def _modules():
  """{dotted name: path} of every module of t5x_lite."""
  out = {}
  for d, dirs, files in os.walk(PKG):
    dirs[:] = [x for x in dirs if x != '__pycache__']
    for f in files:
      if f.endswith('.py'):
        path = os.path.join(d, f)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        out[rel[:-len('.__init__')] if rel.endswith('.__init__') else rel] = (
            path)
  return out


def _docstring_lines(tree):
  """Line numbers covered by module/class/function docstrings."""
  lines = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                         ast.AsyncFunctionDef)):
      body = node.body
      if (body and isinstance(body[0], ast.Expr) and
          isinstance(body[0].value, ast.Constant) and
          isinstance(body[0].value.value, str)):
        lines.update(range(body[0].lineno, body[0].end_lineno + 1))
  return lines


def _code_tokens(path):
  """(line, text) of every NAME and STRING token outside docstrings
  (comments are their own tokens and are skipped)."""
  with open(path) as f:
    source = f.read()
  doc = _docstring_lines(ast.parse(source))
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type in (tokenize.NAME, tokenize.STRING) and tok.start[0] not in doc:
      yield tok.start[0], tok.string
    # f-strings tokenize in pieces on Python >= 3.12.
    elif tok.type == getattr(tokenize, 'FSTRING_MIDDLE', -1):
      yield tok.start[0], tok.string


def _objective_names():
  from t5x_lite import objectives  # pylint: disable=g-import-not-at-top
  return objectives.names()


def test_the_registry_holds_the_built_in_objectives():
  assert set(_objective_names()) >= {
      'span_corruption', 'prefix_lm', 'causal_lm', 'mlm', 'electra', 'glm',
      'text_to_text', 'classification'}


def test_no_objective_named_outside_objectives():
  names = _objective_names()
  # A name is spelled when it is a whole word of an identifier or string:
  # `'mlm'`, `electra.x`, f'{...}glm'. Longer identifiers that merely
  # contain it (`register_text_to_text`, `mlm_dense`) are other words.
  pattern = re.compile(r'\b(' + '|'.join(map(re.escape, names)) + r')\b')
  found = []
  for name, path in _modules().items():
    rel = os.path.relpath(path, ROOT).replace(os.sep, '/')
    if name.startswith('t5x_lite.objectives') or rel in MAY_NAME_OBJECTIVES:
      continue
    for line, text in _code_tokens(path):
      for m in pattern.finditer(text):
        found.append(f'{rel}:{line}: {m.group(1)!r} in {text[:60]}')
  assert not found, ('objective names outside t5x_lite/objectives/ (look the '
                     'objective up instead):\n' + '\n'.join(found))


def _imports(tree, module, modules):
  """t5x_lite modules `module` imports anywhere in its file (lazy ones too)."""
  package = module if module + '.__init__' in modules else module.rsplit(
      '.', 1)[0]
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')
        parts = parts[:len(parts) - node.level + 1]
        base = '.'.join(parts + ([base] if base else []))
      targets = []
      for a in node.names:
        full = f'{base}.{a.name}'
        targets.append(full if full in modules else base)
    else:
      continue
    out.update(t for t in targets if t in modules and t != module)
  return out


def _import_graph():
  modules = _modules()
  keys = set(modules) | {m + '.__init__' for m, p in modules.items()
                         if p.endswith('__init__.py')}
  graph = {}
  for name, path in modules.items():
    with open(path) as f:
      graph[name] = _imports(ast.parse(f.read()), name, keys)
  return graph


def _cycles(graph):
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_cycle_finder_finds_a_known_cycle():
  assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [
      ['a', 'b', 'c']]
  assert _cycles({'a': {'b'}, 'b': set()}) == []


def test_import_walker_sees_lazy_and_relative_imports():
  tree = ast.parse('def f():\n  from t5x_lite import models\n'
                   'import t5x_lite.losses\nfrom . import layers\n')
  mods = {'t5x_lite.models', 't5x_lite.losses', 't5x_lite.layers',
          't5x_lite.network'}
  assert _imports(tree, 't5x_lite.network', mods) == {
      't5x_lite.models', 't5x_lite.losses', 't5x_lite.layers'}


def test_no_import_cycles():
  cycles = _cycles(_import_graph())
  assert not cycles, f'import cycles in t5x_lite/: {cycles}'


def test_no_function_over_120_lines():
  long = []
  for _, path in _modules().items():
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > MAX_FUNCTION_LINES:
          long.append(f'{os.path.relpath(path, ROOT)}:{node.lineno} '
                      f'{node.name}: {n} lines')
  assert not long, ('functions over 120 lines (split them into named '
                    'pieces):\n' + '\n'.join(long))


@pytest.mark.parametrize('text, names, spelled', [
    ("x = 'mlm'", ('mlm',), True),
    ('self.mlm_dense = 1', ('mlm',), False),
    ('register_text_to_text(a)', ('text_to_text',), False),
    ('from t5x_lite import electra', ('electra',), True),
])
def test_spelling_rule(tmp_path, text, names, spelled):
  path = tmp_path / 'm.py'
  path.write_text('"""Docstring mentions mlm and electra."""\n' + text + '\n')
  pattern = re.compile(r'\b(' + '|'.join(names) + r')\b')
  hits = [t for _, t in _code_tokens(str(path)) if pattern.search(t)]
  assert bool(hits) == spelled, hits
