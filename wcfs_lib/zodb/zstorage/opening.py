"""Opening a database from its ZURL (zodburi), read-only.

`zeo://` gives a ZEO ClientStorage (waiting at most the database timeout
for the server); `file://` a FileStorage, also one written by Python 2
(magic FS21: same layout, Python 2 pickles inside), which ZODB on Python 3
refuses by itself; `postgres://` RelStorage, opened here read-only and
without DDL (postgres.py), and `zconfig://` any storage, RelStorage too; a
SQL server is tried until the database timeout.
The kind of the storage opened, not the scheme, decides how it is followed
(a `zconfig://` file may describe any storage).
"""

import importlib
import math
import time

import zodburi

from ... import locks
from ...zurl import masked
from . import postgres, zeo_receive
from .base import is_disconnect, oneline
from .mvcc import MVCCDatabase, is_mvcc
from .plain import PlainDatabase
from .zeo import MissingPrivate, ZEODatabase, is_zeo


class UsageError(Exception):
    """The ZURL cannot be parsed or names an unknown scheme; exit 2."""


class OpenError(Exception):
    """The ZURL is valid but its database cannot be opened; exit 1."""


# the module, not the class of the same name that ZODB.FileStorage exports
fsmodule = importlib.import_module('ZODB.FileStorage.FileStorage')
_fs_magic_lock = locks.lock('opening._fs_magic_lock')   # guards fsmodule.packed_version while opening

def open_database(zurl, db_timeout, connections=None, poll_interval=None):
    """-> the Database of `zurl`, opened read-only. OpenError when it cannot
    be opened, or cannot serve wcfs (a history-free RelStorage)."""
    try:
        zeo_receive.install()       # before any ZEO connection: zconfig:// may make one too
    except MissingPrivate as e:
        raise OpenError('%s: %s' % (masked(zurl), e)) from None
    factory = resolve(zurl, db_timeout)
    storage = _open(factory, zurl, db_timeout)
    try:
        return database_of(storage, connections, poll_interval, db_timeout)
    except (MissingPrivate, HistoryFree) as e:
        storage.close()
        raise OpenError('%s: %s' % (masked(zurl), e)) from None


def _open(factory, zurl, db_timeout):
    deadline = time.monotonic() + db_timeout
    while True:
        try:
            if zurl.startswith('file://'):
                return _open_filestorage(factory, zurl)
            return factory()
        except ImportError as e:
            raise OpenError('%s: cannot open database: %s (RelStorage needs the Python packages '
                            'relstorage and psycopg2)' % (masked(zurl), oneline(e))) from None
        except Exception as e:
            # ZEO waits by itself (wait_timeout); a SQL server is tried again
            if not is_disconnect(e) or _refused(e) or time.monotonic() >= deadline:
                raise OpenError('%s: cannot open database: %s' % (masked(zurl), _why(e))) \
                    from None
        time.sleep(0.5)


def _refused(exc):
    """Did the server answer no (a wrong password, no such database or
    role), which trying again does not change? PostgreSQL says it with the
    same exception as a server that is away."""
    text = str(exc)
    return any(sign in text for sign in ('authentication', 'password', 'does not exist',
                                         'permission denied', 'no pg_hba.conf entry'))


def _why(exc):
    if 'history-free' in str(exc):     # RelStorage: "Schema mismatch ..."
        return HISTORY_FREE
    return oneline(exc)


HISTORY_FREE = ('a history-free database (keep-history false): wcfs needs the history of '
                'every object; use a history-preserving one')


class HistoryFree(Exception):
    """wcfs serves older revisions: a database that keeps none cannot do."""


def database_of(storage, connections=None, poll_interval=None, db_timeout=30):
    """-> the Database that serves `storage`, by its kind."""
    if is_zeo(storage):
        return ZEODatabase(storage, db_timeout)
    if is_mvcc(storage):
        if getattr(storage, 'keep_history', True) is False:
            raise HistoryFree(HISTORY_FREE)
        kw = {'timeout': db_timeout}
        if connections is not None:
            kw['connections'] = connections
        if poll_interval is not None:
            kw['poll_interval'] = poll_interval
        return MVCCDatabase(storage, **kw)
    return PlainDatabase(storage)


def resolve(zurl, db_timeout=30):
    """-> a factory of the storage; UsageError for a ZURL zodburi cannot take."""
    scheme = zurl.split('://', 1)[0] if '://' in zurl else ''
    sep = '&' if '?' in zurl else '?'
    if scheme == 'postgres':
        try:
            return postgres.factory(zurl, db_timeout)
        except postgres.BadZURL as e:
            raise UsageError('%s: invalid ZURL: %s' % (masked(zurl), e)) from None
    if scheme == 'zeo':
        zurl_ro = '%s%sread_only=1&wait_timeout=%d' % (zurl, sep, max(1, math.ceil(db_timeout)))
    elif scheme == 'file':
        zurl_ro = zurl + sep + 'read_only=1'
    else:
        zurl_ro = zurl
    try:
        factory, _dbkw = zodburi.resolve_uri(zurl_ro)
    except Exception as e:
        raise UsageError('%s: invalid ZURL: %s' % (masked(zurl), oneline(e))) from None
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
