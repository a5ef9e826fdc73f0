"""Who imports whom across the tree's dev side: the test modules import
fixtures through conftest and helpers from helper modules (never conftest
itself, never another test module), and wcfs_lib, which ships, never imports
devtools, which does not."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported(path):
    """The top-level names of the modules path imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split('.')[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split('.')[0])
    return names


def test_no_test_module_imports_a_test_module_or_conftest():
    wrong = {}
    for path in sorted((ROOT / 'tests').rglob('test_*.py')):
        names = {n for n in imported(path) if n == 'conftest' or n.startswith('test_')}
        if names:
            wrong[str(path.relative_to(ROOT))] = sorted(names)
    assert not wrong, 'move what these import to a helper module or conftest: %s' % wrong


def test_wcfs_lib_never_imports_devtools():
    wrong = [str(p.relative_to(ROOT)) for p in sorted((ROOT / 'wcfs_lib').rglob('*.py'))
             if 'devtools' in imported(p)]
    assert not wrong, 'these ship in the package and import devtools: %s' % wrong
