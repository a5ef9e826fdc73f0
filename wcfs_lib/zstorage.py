"""The storage: opening it, loading records from it, following it.

Every use of a storage kind's API, public or private, is here; the format
module (zformat) decodes what `Records` loads and does no I/O itself.

Opening: `zeo://` gives a ZEO ClientStorage (read-only, waiting at most the
database timeout for the server); `file://` a FileStorage opened read-only,
also one written by Python 2 (magic FS21: same layout, Python 2 pickles
inside), which ZODB on Python 3 refuses by itself.

Loading: `Records.record(oid, at)` is `loadBefore(oid, at+1)`, retried while
the storage is disconnected, `DatabaseUnavailable` after the database
timeout (and at once for later requests, until the storage reconnects).

Following: `follow(storage, sink)` registers `sink` for ZEO's invalidations
and hooks ZEO's `info` broadcast, the only sign of a pack a read-only client
gets. Both arrive on ZEO's I/O thread: the sink only records and wakes.
"""

import collections
import functools
import importlib
import logging
import math
import re
import threading
import time

import zodburi
from ZODB.POSException import POSKeyError
from ZODB.utils import p64, u64

log = logging.getLogger('wcfs.zstorage')

RETRY_PAUSE = 0.5   # seconds between tries of work that waits for the database



class UsageError(Exception):
    """The ZURL cannot be parsed or names an unknown scheme; exit 2."""


class OpenError(Exception):
    """The ZURL is valid but its database cannot be opened; exit 1."""


# the module, not the class of the same name that ZODB.FileStorage exports
fsmodule = importlib.import_module('ZODB.FileStorage.FileStorage')
_fs_magic_lock = threading.Lock()   # guards fsmodule.packed_version while opening


_USERINFO_PASSWORD = re.compile(r'\A([A-Za-z][A-Za-z0-9+.-]*://[^:@/?#]*:)[^@/?#]*@')
_QUERY_PASSWORD = re.compile(r'([?&](?:password|passwd)=)[^&#]*', re.IGNORECASE)


def masked(zurl):
    """`zurl` with any password in it shown as *** (`.wcfs/zurl` and the log
    are read by every user of the mount)."""
    zurl = _USERINFO_PASSWORD.sub(r'\1***@', zurl)
    return _QUERY_PASSWORD.sub(r'\1***', zurl)


def open_storage(zurl, db_timeout):
    """-> the storage of `zurl`, opened read-only."""
    factory = resolve(zurl, db_timeout)
    try:
        if zurl.startswith('file://'):
            return _open_filestorage(factory, zurl)
        return factory()
    except Exception as e:
        raise OpenError('%s: cannot open database: %s' % (masked(zurl), _oneline(e))) from None


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
        raise UsageError('%s: invalid ZURL: %s' % (masked(zurl), _oneline(e))) from None
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


class DatabaseUnavailable(Exception):
    """The storage did not answer within the database timeout."""


class Records:
    """Raw records of one storage as of any revision; thread-safe."""

    def __init__(self, storage, db_timeout=30.0):
        self.storage = storage
        self.db_timeout = db_timeout
        self._unreachable = False   # a request gave up on the database
        self.requests = 0           # round trips asked of the storage (.wcfs/stats db_requests)
        self._prefetching = collections.deque(maxlen=64)   # prefetches kept alive

    def record(self, oid, at, fresh=False):
        """-> (data, serial, end) of `oid` as of `at`; None when the object
        does not exist then (or was packed away). `end` is the tid of the
        next revision of the object, or None.

        fresh: ask the server, not the client cache (which does not learn
        of packs).
        """
        load = self.storage.loadBefore
        call = getattr(self.storage, '_call', None)         # ZEO: bypass the client cache
        if fresh and call is not None:
            load = functools.partial(call, 'loadBefore')
        if self._unreachable and not self.connected():
            raise DatabaseUnavailable('oid %016x @%016x: database unreachable' % (oid, at))
        deadline = time.monotonic() + self.db_timeout
        while True:
            self.requests += 1
            try:
                r = load(p64(oid), p64(at + 1))
                break
            except POSKeyError:
                r = None
                break
            except Exception as e:
                if not is_disconnect(e):
                    raise
                if time.monotonic() >= deadline:
                    self._unreachable = True
                    raise DatabaseUnavailable(
                        'oid %016x @%016x: database unreachable: %s' % (oid, at, e)) from None
                time.sleep(0.1)
        self._unreachable = False
        if r is None or r[0] is None:
            return None
        data, serial, end = r
        return data, u64(serial), (None if end is None else u64(end))

    def changed_oids(self, a, b, upto=None):
        """-> the oids that the transactions in (a, b] modified, or None where
        the storage cannot list them. With `upto` (>= b), the oids of the
        transactions in (b, upto] may be there too: the caller knows they
        changed nothing it looks at.

        ZEO keeps the oids of its last transactions (invalidation-queue-size,
        or all those younger than invalidation-age): one round trip when
        (a, b] is among them. Else the storage's iterator, whose cost follows
        the transactions (ZEO: a round trip per transaction and per record).
        One iterator at a time: ZEO's client, walking several at once from
        threads, was seen to leave a load of another thread unanswered for
        good (the isolation stress test, about one run in three)."""
        if upto is not None:
            oids = self._recent_invalidations(a, b, upto)
            if oids is not None:
                return oids
        if getattr(self.storage, 'iterator', None) is None:
            return None
        return self._changed_in(a, b)

    def _recent_invalidations(self, a, b, upto):
        call = getattr(self.storage, '_call', None)
        if call is None:
            return None
        self.requests += 1
        try:
            r = call('getInvalidations', p64(a))
        except Exception as e:
            if not is_disconnect(e):
                raise
            raise DatabaseUnavailable('invalidations since %016x: database unreachable: %s'
                                      % (a, e)) from None
        if r is None or r[0] is None or not b <= u64(r[0]) <= upto:
            return None
        return {u64(oid) for oid in r[1]}

    def _changed_in(self, a, b):
        oids = set()
        try:
            it = self.storage.iterator(p64(a + 1), p64(b))
            try:
                for txn in it:
                    self.requests += 1
                    oids.update(u64(rec.oid) for rec in txn)
            finally:
                close = getattr(it, 'close', None)
                if close is not None:
                    close()
        except Exception as e:
            if not is_disconnect(e):
                raise
            raise DatabaseUnavailable('transactions (%016x, %016x]: database unreachable: %s'
                                      % (a, b, e)) from None
        return oids

    def prefetch(self, oids, at):
        """Have the records of `oids` as of `at` loaded in the background
        (ZEO: into its client cache, one message for all); nothing where the
        storage cannot, or while it is away: the loads that follow ask."""
        # ZEO's ClientStorage.prefetch drops the future of the work it starts,
        # which its own comment says a garbage collection may then end
        # half-way: call its runner and keep the future until it is done.
        runner = getattr(self.storage, '_server', None)
        prefetch = getattr(runner, 'prefetch', None)
        if prefetch is None or len(oids) < 2:
            return
        try:
            future = prefetch([p64(oid) for oid in oids], p64(at + 1))
        except Exception as e:
            if not is_disconnect(e):
                raise
            return
        self._prefetching.append(future)

    def last_tid(self):
        """The last transaction the database has committed, asking the server
        first where there is one, so that a tid a client saw is never 'future'."""
        self.requests += 1
        ping = getattr(self.storage, 'ping', None)  # ZEO: a round trip after which the
        if ping is not None:                        # invalidations sent before are in
            try:
                ping()
            except Exception as e:
                raise DatabaseUnavailable('%s: %s' % (type(e).__name__, e)) from None
        return u64(self.storage.lastTransaction())

    def connected(self):
        is_connected = getattr(self.storage, 'is_connected', None)
        return is_connected is None or is_connected()


def is_disconnect(exc):
    """Does `exc` mean the storage is away for now (not that the request is bad)?"""
    name = type(exc).__name__
    return name in ('ClientDisconnected', 'ConnectionRefusedError') or \
        isinstance(exc, (ConnectionError, TimeoutError))


def follow(storage, sink, on_pack):
    """Send the storage's invalidations to `sink` (sink.invalidate(tid, oids),
    sink.invalidateCache()), and call on_pack() when the server packed."""
    storage.registerDB(sink)
    # ZEO's I/O object bound storage.info when it was made: hook there.
    zio = getattr(getattr(storage, '_server', None), 'client', None)
    info = getattr(zio, 'info', None)
    if info is None:
        return

    def on_info(msg):
        # A read-only client gets `info` only when the server packed: packs
        # send no invalidations, and objects may be gone.
        info(msg)
        on_pack()

    zio.info = on_info


def _oneline(exc):
    text = str(exc).strip().splitlines()
    return '%s: %s' % (type(exc).__name__, text[0]) if text else type(exc).__name__
