"""The layers of DESIGN "Modules", checked on the code: imports go down only,
and only the layers that are about ZODB import it.

Read from the source (ast), so a lazy import inside a function counts too.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / 'wcfs_lib'

# the server's layers, top first: each may import those below it
SERVER = ['service', 'kernel', 'files', 'follow', 'zodb']
LEAVES = {'protocol', 'ranges', 'zurl', 'procfs', 'locks', 'knobs'}
# the library for programs: never the server's packages
CLIENT_SIDE = {'client': {'zbig'}, 'zbig': set()}
ZODB_PACKAGES = {'ZODB', 'ZEO', 'relstorage', 'BTrees', 'persistent', 'transaction',
                 'zodbpickle', 'zodburi', 'ZConfig', 'psycopg2', 'psycopg'}
MAY_IMPORT_ZODB = {'zodb', 'client', 'zbig'}


def modules():
    """-> {dotted name: path} of every module of wcfs_lib."""
    out = {}
    for path in sorted(LIB.rglob('*.py')):
        parts = list(path.relative_to(ROOT).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts.pop()
        out['.'.join(parts)] = path
    return out


def imports(name, path):
    """-> [(line, imported dotted name)] of a module, relative ones resolved."""
    package = name if path.name == '__init__.py' else name.rsplit('.', 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                up = package.split('.')[:len(package.split('.')) - node.level + 1]
                base = '.'.join(up + ([base] if base else []))
            out += [(node.lineno, base + '.' + a.name) for a in node.names]
            out.append((node.lineno, base))
    return out


def part_of(name):
    """The layer or leaf a dotted name of wcfs_lib belongs to."""
    parts = name.split('.')
    return parts[1] if len(parts) > 1 else None


def may_import(importer, imported):
    if importer == imported or imported is None or imported in LEAVES:
        return True
    if importer in LEAVES:
        return False
    if importer in CLIENT_SIDE or imported in CLIENT_SIDE:
        return imported in CLIENT_SIDE.get(importer, ())
    if importer not in SERVER or imported not in SERVER:
        return False        # a module of wcfs_lib that is neither layer nor leaf
    return SERVER.index(importer) <= SERVER.index(imported)


def violations(mods):
    out = []
    for name, path in mods.items():
        importer = part_of(name)
        for line, imported in imports(name, path):
            where = '%s:%d' % (path.relative_to(ROOT), line)
            if imported.split('.')[0] == 'wcfs_lib':
                target = part_of(imported)
                if target is not None and target not in LEAVES and target not in SERVER \
                        and target not in CLIENT_SIDE and imported not in mods:
                    continue    # a name imported from the package wcfs_lib itself
                if not may_import(importer, target):
                    out.append('%s: %s imports %s' % (where, importer, imported))
            elif imported.split('.')[0] in ZODB_PACKAGES and importer not in MAY_IMPORT_ZODB:
                out.append('%s: %s imports %s (only %s may)'
                           % (where, importer, imported, ', '.join(sorted(MAY_IMPORT_ZODB))))
    return out


def test_every_module_is_in_a_layer_or_a_leaf():
    loose = [name for name in modules() if part_of(name) is not None
             and part_of(name) not in SERVER + sorted(LEAVES) + sorted(CLIENT_SIDE)]
    assert loose == []


def test_imports_go_down_only():
    assert violations(modules()) == []


def test_the_command_line_imports_the_service_only():
    found = {imported for _, imported in imports('wcfs', ROOT / 'wcfs.py')
             if imported.startswith('wcfs_lib.')}
    assert found and all(part_of(name) == 'service' for name in found), found


@pytest.mark.parametrize('importer, imported, allowed', [
    ('service', 'kernel', True), ('kernel', 'files', True), ('files', 'zodb', True),
    ('zodb', 'files', False), ('follow', 'files', False), ('files', 'kernel', False),
    ('protocol', 'zodb', False), ('zodb', 'protocol', True),
    ('client', 'zbig', True), ('client', 'files', False), ('zbig', 'client', False),
    ('service', 'client', False),
])
def test_the_rule_itself(importer, imported, allowed):
    assert may_import(importer, imported) is allowed
