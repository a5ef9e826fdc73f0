"""Opening the database a ZURL names, read-only.

`zeo://` gives a ZEO ClientStorage (read-only, waiting at most the database
timeout for the server); `file://` a FileStorage opened read-only, also one
written by Python 2 (magic FS21: same layout, Python 2 pickles inside), which
ZODB on Python 3 refuses by itself.
"""

import importlib
import math
import threading

import zodburi
from ZODB.utils import u64

from . import zformat


class UsageError(Exception):
    """The ZURL cannot be parsed or names an unknown scheme; exit 2."""


class OpenError(Exception):
    """The ZURL is valid but its database cannot be opened; exit 1."""


# the module, not the class of the same name that ZODB.FileStorage exports
fsmodule = importlib.import_module('ZODB.FileStorage.FileStorage')
_fs_magic_lock = threading.Lock()   # guards fsmodule.packed_version while opening


def open_storage(zurl, db_timeout):
    """-> the storage of `zurl`, opened read-only."""
    factory = resolve(zurl, db_timeout)
    try:
        if zurl.startswith('file://'):
            return _open_filestorage(factory, zurl)
        return factory()
    except Exception as e:
        raise OpenError('%s: cannot open database: %s' % (zurl, _oneline(e))) from None


def resolve(zurl, db_timeout=30):
    """-> a factory of the storage; UsageError for a ZURL zodburi cannot take."""
    scheme = zurl.split('://', 1)[0] if '://' in zurl else ''
    if scheme == 'zeo':
        sep = '&' if '?' in zurl else '?'
        zurl_ro = '%s%sread_only=1&wait_timeout=%d' % (zurl, sep, max(1, math.ceil(db_timeout)))
    elif scheme == 'file':
        sep = '&' if '?' in zurl else '?'
        zurl_ro = zurl + sep + 'read_only=1'
    else:
        zurl_ro = zurl
    try:
        factory, _dbkw = zodburi.resolve_uri(zurl_ro)
    except Exception as e:
        raise UsageError('%s: invalid ZURL: %s' % (zurl, _oneline(e))) from None
    return factory


def _open_filestorage(factory, zurl):
    path = zurl.split('://', 1)[1].split('?', 1)[0]
    with open(path, 'rb') as f:
        magic = f.read(4)
    if magic != b'FS21':
        return factory()
    with _fs_magic_lock:
        saved = fsmodule.packed_version
        fsmodule.packed_version = b'FS21'
        try:
            return factory()
        finally:
            fsmodule.packed_version = saved


def last_tid(storage):
    """The last transaction the database has committed, asking the server
    first where there is one, so that a tid a client saw is never 'future'."""
    ping = getattr(storage, 'ping', None)     # ZEO: a round trip after which the
    if ping is not None:                        # invalidations sent before are in
        try:
            ping()
        except Exception as e:
            raise zformat.DatabaseUnavailable('%s: %s' % (type(e).__name__, e)) from None
    return u64(storage.lastTransaction())


def _oneline(exc):
    text = str(exc).strip().splitlines()
    return '%s: %s' % (type(exc).__name__, text[0]) if text else type(exc).__name__
