"""An IMVCCStorage (RelStorage on PostgreSQL): polled, loaded through a pool.

What this is built on (measured with relstorage 4.3, PostgreSQL 15):

- No push. An instance (`new_instance()`) learns of commits by
  `poll_invalidations()`: the oids of every transaction since its last
  poll, folded; None when it cannot tell (resync). Its snapshot then moves
  to the database's last transaction.
- An instance answers `loadBefore` from its snapshot: asked for a revision
  past it, it gives the old state and no error. So a load goes through an
  instance whose snapshot is at or past the revision asked, and one that is
  behind is polled first: never a silent stale answer.
- One instance is not thread-safe: the pool lends each to one thread at a
  time, and makes at most `size` of them (a database connection each).
- Packs send nothing: on_pack is called on a timer.
- A load is a round trip (0.3 ms on loopback): prefetch fetches the records
  of many oids in one query, kept until they are loaded.
- A lost connection raises psycopg2.OperationalError; the instance opens a
  new one at its next use, once the server is back.

The private parts of RelStorage used here: an instance's load cursor
(`_load_connection.cursor`), and the table object_state of a
history-preserving schema, to list the oids of a range of transactions and
to fetch many records in one query, and the table transaction, to ask for
the last tid cheaply on a connection from its adapter
(`_adapter.connmanager.open`).
"""

import collections
import contextlib
import logging
import os
import threading
import time

from ZODB.utils import p64, u64

from .base import Database, is_disconnect, oneline

log = logging.getLogger('wcfs.zstorage')

POLL_INTERVAL = 0.01        # seconds between two polls for commits
CONNECTIONS = 8             # instances (database connections) loads may use
# seconds between two checks for packed-away files (the environment: for tests)
PACK_CHECK_INTERVAL = float(os.environ.get('WCFS_PACK_CHECK_INTERVAL', 60))

_CHANGED_OIDS = 'SELECT DISTINCT zoid FROM object_state WHERE tid > %s AND tid <= %s'
# the record of each oid as of a tid, and the tid of its next revision
_RECORDS_AS_OF = '''
    SELECT s.zoid, s.tid, s.state,
           (SELECT min(n.tid) FROM object_state n WHERE n.zoid = s.zoid AND n.tid > s.tid)
    FROM (SELECT DISTINCT ON (zoid) zoid, tid, state FROM object_state
          WHERE zoid = ANY(%s) AND tid <= %s ORDER BY zoid, tid DESC) s'''
_LAST_TID = 'SELECT tid FROM transaction ORDER BY tid DESC LIMIT 1'
PREFETCH_BYTES = 16 << 20   # records fetched ahead and not loaded yet, at most


def is_mvcc(storage):
    return callable(getattr(storage, 'new_instance', None)) and \
        callable(getattr(storage, 'poll_invalidations', None))


class SnapshotBehind(ConnectionError):
    """The database does not show a transaction yet that it told of (a
    replica behind its primary): retried as if it were away."""


class Instance:
    """One storage instance, and the revision its snapshot shows."""

    __slots__ = ('storage', 'tid')

    def __init__(self, storage):
        self.storage = storage
        self.tid = -1       # not polled yet: its snapshot is unknown

    def poll(self):
        """Move the snapshot to the database's last transaction; -> the oids
        changed since the last poll (a set of ints), or None: unknown."""
        oids = self.storage.poll_invalidations()
        self.tid = u64(self.storage.lastTransaction())
        return None if oids is None else {u64(oid) for oid in oids}

    def at_least(self, tid):
        """Bring the snapshot to `tid` or later."""
        if self.tid < tid:
            self.poll()
        if self.tid < tid:
            # the server told somebody of `tid`: this connection must see it
            raise SnapshotBehind('the database is at %016x, behind the %016x asked'
                                 % (self.tid, tid))

    def close(self):
        try:
            self.storage.release()
        except Exception as e:
            log.debug('releasing a storage instance: %s', oneline(e))


class PoolBusy(ConnectionError):
    """Every connection stayed busy for the whole database timeout (the
    database hangs): retried as if it were away, then EIO."""


class Pool:
    """At most `size` instances, each lent to one thread at a time; a
    thread waits at most `timeout` seconds for one."""

    def __init__(self, make, size, timeout):
        self._make = make
        self._size = size
        self._timeout = timeout
        self._idle = []
        self._made = 0
        self._cond = threading.Condition()  # guards _idle, _made

    @contextlib.contextmanager
    def instance(self):
        inst = self._take()
        try:
            yield inst
        finally:
            with self._cond:
                self._idle.append(inst)
                self._cond.notify()

    def _take(self):
        with self._cond:
            if not self._cond.wait_for(lambda: self._idle or self._made < self._size,
                                       self._timeout):
                raise PoolBusy('all %d database connections busy for %g s'
                               % (self._size, self._timeout))
            if self._idle:
                return self._idle.pop()
            self._made += 1
        try:
            return Instance(self._make())
        except BaseException:
            with self._cond:
                self._made -= 1
                self._cond.notify()
            raise

    def close(self):
        with self._cond:
            idle, self._idle = self._idle, []
        for inst in idle:
            inst.close()


UNCHANGED = object()        # a poll that found no new transaction


class LastTid:
    """The database's last tid in one round trip, on a connection of its own
    (autocommit, read committed). Polling an instance costs several times as
    much (a rollback, a new snapshot, RelStorage's bookkeeping): 7 % of a
    core at 100 polls a second. It is done only when this moves."""

    def __init__(self, storage):
        self._adapter = storage._adapter
        self._conn = self._cursor = None

    def __call__(self):
        if self._cursor is None:
            manager = self._adapter.connmanager
            conn, cursor = manager.open(isolation=manager.isolation_read_committed,
                                        read_only=True)
            conn.rollback()
            conn.autocommit = True
            self._conn, self._cursor = conn, cursor
        try:
            self._cursor.execute(_LAST_TID)
            row = self._cursor.fetchone()
            return row[0] if row else 0
        except Exception:
            self.close()            # a new connection at the next call
            raise

    def close(self):
        conn, self._conn, self._cursor = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception as e:
                log.debug('closing the probe connection: %s', oneline(e))


class Prefetched:
    """Records fetched ahead, each taken once; the oldest dropped past
    `max_bytes`."""

    def __init__(self, max_bytes):
        self._max = max_bytes
        self._records = collections.OrderedDict()   # (oid, before) -> (data, serial, end)
        self._bytes = 0
        self._lock = threading.Lock()               # guards _records, _bytes

    def put(self, oid, before, record):
        with self._lock:
            old = self._records.pop((oid, before), None)
            if old is not None:
                self._bytes -= len(old[0])
            self._records[(oid, before)] = record
            self._bytes += len(record[0])
            while self._bytes > self._max:
                _, dropped = self._records.popitem(last=False)
                self._bytes -= len(dropped[0])

    def take(self, oid, before):
        with self._lock:
            record = self._records.pop((oid, before), None)
            if record is not None:
                self._bytes -= len(record[0])
            return record


class MVCCDatabase(Database):
    def __init__(self, storage, connections=CONNECTIONS, poll_interval=POLL_INTERVAL,
                 timeout=30):
        super().__init__(storage)
        self.pool = Pool(storage.new_instance, connections, timeout)
        self.poll_interval = poll_interval
        self._ahead = Prefetched(PREFETCH_BYTES)
        self._connected = True
        self._stop = threading.Event()
        self._poller = None

    def load(self, oid, before, fresh, cache):
        # fresh: a new snapshot, which shows what a pack removed since
        if not fresh:
            r = self._ahead.take(oid, before)
            if r is not None:
                return r
        with self.pool.instance() as inst:
            if fresh:
                self._noting(inst.poll)
            inst.at_least(u64(before) - 1)
            return self._noting(inst.storage.loadBefore, oid, before)

    def last_tid(self):
        with self.pool.instance() as inst:
            self._noting(inst.poll)
            return inst.tid

    def listed_oids(self, a, b, upto):
        """One query for all of (a, b]: the oids of their records."""
        with self.pool.instance() as inst:
            inst.at_least(b)
            cursor = inst.storage._load_connection.cursor
            self._noting(cursor.execute, _CHANGED_OIDS, (a, b))
            return {zoid for zoid, in cursor.fetchall()}

    def prefetch(self, oids, at):
        """Fetch the records of `oids` as of `at` in one query; load() takes
        them. A record missing then is left to load(), which says so."""
        with self.pool.instance() as inst:
            inst.at_least(at)
            cursor = inst.storage._load_connection.cursor
            self._noting(cursor.execute, _RECORDS_AS_OF, (list(oids), at))
            rows = cursor.fetchall()
        before = p64(at + 1)
        for zoid, tid, state, end in rows:
            if state is not None:
                self._ahead.put(p64(zoid), before,
                                (bytes(state), p64(tid), None if end is None else p64(end)))

    def _noting(self, call, *args):
        """call(*args), noting whether the database answered."""
        try:
            r = call(*args)
        except Exception as e:
            if is_disconnect(e):
                self._connected = False
            raise
        self._connected = True
        return r

    def connected(self):
        return self._connected

    # following

    def follow(self, on_commit, on_resync, on_pack):
        self._poller = threading.Thread(target=self._poll, name='poller', daemon=True,
                                        args=(on_commit, on_resync, on_pack))
        self._poller.start()

    def _poll(self, on_commit, on_resync, on_pack):
        """Poll a private instance when the database's last tid moved (asked
        every poll_interval): each poll's oids are one folded step under the
        last tid. The first poll may be past what the watcher started from,
        and one after an outage may not cover it: both are a resync."""
        inst = Instance(self.storage.new_instance())
        probe = LastTid(self.storage)
        resync, away = True, False
        next_pack_check = time.monotonic() + PACK_CHECK_INTERVAL
        try:
            while not self._stop.wait(self.poll_interval):
                prev = inst.tid
                oids = self._poll_once(inst, probe, resync, quiet=away)
                away = oids is False
                if away:
                    resync = True
                    self._stop.wait(min(1.0, 10 * self.poll_interval))
                    continue
                if oids is UNCHANGED:
                    pass
                elif resync or oids is None:
                    resync = False
                    on_resync()
                elif inst.tid > prev:
                    on_commit(inst.tid, frozenset(oids))
                if time.monotonic() >= next_pack_check:
                    next_pack_check = time.monotonic() + PACK_CHECK_INTERVAL
                    on_pack()
        finally:
            probe.close()
            inst.close()

    def _poll_once(self, inst, probe, always, quiet):
        """-> what inst.poll() gives; UNCHANGED when the database's last tid
        is the one inst has (and not `always`); False when it failed (said
        once per outage: not when `quiet`)."""
        try:
            if not always and probe() <= inst.tid:
                oids = UNCHANGED
            else:
                oids = inst.poll()
        except Exception as e:
            self._connected = False
            if not quiet:
                if is_disconnect(e):
                    log.warning('polling the database: %s', oneline(e))
                else:
                    log.exception('polling the database')
            return False
        self._connected = True
        return oids

    def close(self):
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
        self.pool.close()
        self.storage.close()
