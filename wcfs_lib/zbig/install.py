"""install(): the classes of wendelin.core's names, for ZODB to write and load.

ZODB's pickler imports a class's module to write an object of it (and checks
that the module's attribute of that name is the class), and ZODB's default
class factory imports it to load one. So install() makes the modules
wendelin.bigfile.file_zodb and wendelin.bigarray.array_zodb importable: the
real ones where a wendelin package is importable, else modules of this
process holding zbig's classes (and the packages above them).
"""

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections import namedtuple

from . import blocks
from .array import ARRAY_MODULE, ZBigArray
from .file import ZBigFile

Installed = namedtuple('Installed', 'ZBigFile ZBigArray ZBlk0 ZBlk1 ZData ZBlk real')
Installed.__doc__ = """The classes in effect after install(); real: whether they are wendelin.core's."""

OURS = Installed(ZBigFile, ZBigArray, blocks.ZBlk0, blocks.ZBlk1, blocks.ZData, blocks.ZBlk,
                 real=False)
_MARK = '_zbig_module'          # set on the modules install() makes

_lock = threading.Lock()
_installed = None


def install():
    """Make wendelin.core's classes loadable and writable in this process; -> Installed.

    Where a wendelin package is importable (and is not ours), its modules are
    imported and their classes returned: nothing is replaced. Otherwise
    zbig's classes are put in sys.modules under wendelin.core's module names.
    Idempotent: later calls return the same Installed. ZODB itself is never
    changed.
    """
    global _installed
    with _lock:
        if _installed is None:
            _installed = _real() if _real_importable() else _ours()
        return _installed


def _real_importable():
    top = sys.modules.get('wendelin')
    if top is not None:
        return not getattr(top, _MARK, False)
    return importlib.util.find_spec('wendelin') is not None


def _real():
    try:
        zfile = importlib.import_module(blocks.FILE_MODULE)
        zarray = importlib.import_module(ARRAY_MODULE)
    except ImportError as e:
        raise ImportError('zbig.install(): a wendelin package is importable here but %s: '
                          'zbig will not shadow it' % e) from e
    return Installed(zfile.ZBigFile, zarray.ZBigArray, zfile.ZBlk0, zfile.ZBlk1, zfile.ZData,
                     zfile.ZBlk, real=True)


def _ours():
    _module(blocks.FILE_MODULE, [ZBigFile] + list(blocks.CLASSES))
    _module(ARRAY_MODULE, [ZBigArray])
    return OURS


def _module(name, classes):
    """Put module name holding classes, and the packages above it, in sys.modules."""
    parts = name.split('.')
    parent = None
    for i in range(1, len(parts) + 1):
        dotted = '.'.join(parts[:i])
        mod = sys.modules.get(dotted)
        if mod is None:
            mod = types.ModuleType(dotted, 'wendelin.core\'s names for wcfs_lib.zbig\'s classes.')
            mod.__spec__ = importlib.machinery.ModuleSpec(dotted, None, is_package=i < len(parts))
            if i < len(parts):
                mod.__path__ = []
            setattr(mod, _MARK, True)
            sys.modules[dotted] = mod
        if parent is not None:
            setattr(parent, parts[i - 1], mod)
        parent = mod
    for cls in classes:
        setattr(parent, cls.__name__, cls)
