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
- A server that hangs (stopped, or a partition) is never noticed by libpq:
  TCP keepalives are answered by the kernel, statement_timeout would be
  enforced by the stopped server, and a cancel request goes to it too. A
  call waits in recv for ever. So every use of the database has a deadline
  (Watchdog): past it, unless data arrived on its connection within the
  timeout (TCP_INFO), the socket of its connection is shut down, which
  makes the call return with an error, and the instance is closed, not
  lent again. RelStorage would reconnect within that very call (a poll),
  waiting connect_timeout more: a cut instance refuses to.

The private parts of RelStorage used here: an instance's load cursor
(`_load_connection.cursor`), its connection (`.connection`, to shut its
socket down) and how it opens a new one (`._new_connection`, to refuse),
and the table object_state of a history-preserving schema, to list the
oids of a range of transactions and to fetch many records in one query,
and the table transaction, to ask for the last tid cheaply on a
connection from its adapter (`_adapter.connmanager.open`).
"""

import collections
import contextlib
import logging
import os
import threading
import time

from ZODB.POSException import POSKeyError
from ZODB.utils import p64, u64

from ... import knobs, locks
from . import pqbinary
from .base import (POLLING, TOLD, Database, RecordTooLarge, is_disconnect, oneline, shut_down,
                   silent_for)
from .listen import SAFETY_NET, TRIGGER, Ears, Listener, Lost

log = logging.getLogger('wcfs.zstorage')

POLL_INTERVAL = 0.01        # seconds between two polls for commits
CONNECTIONS = 8             # instances (database connections) loads may use

_CHANGED_OIDS = 'SELECT DISTINCT zoid FROM object_state WHERE tid > %s AND tid <= %s'
# the record of each oid as of a tid when it is at most %s bytes long (a
# longer one is not read), and the tid of its next revision
_RECORDS_AS_OF = '''
    SELECT s.zoid, s.tid, CASE WHEN octet_length(s.state) <= %s THEN s.state END,
           (SELECT min(n.tid) FROM object_state n WHERE n.zoid = s.zoid AND n.tid > s.tid)
    FROM (SELECT DISTINCT ON (zoid) zoid, tid, state FROM object_state
          WHERE zoid = ANY(%s::bigint[]) AND tid <= %s ORDER BY zoid, tid DESC) s'''
_RECORDS_KINDS = (pqbinary.INT8, pqbinary.INT8, pqbinary.BYTEA, pqbinary.INT8)
# the record of one oid as of a tid when it is at most %s bytes long, its
# length (octet_length reads it from the header: a longer one is not read),
# and the tid of its next revision
_RECORD_AS_OF_BOUNDED = '''
    SELECT s.tid, CASE WHEN octet_length(s.state) <= %s THEN s.state END,
           octet_length(s.state),
           (SELECT min(n.tid) FROM object_state n WHERE n.zoid = s.zoid AND n.tid > s.tid)
    FROM (SELECT zoid, tid, state FROM object_state
          WHERE zoid = %s AND tid <= %s ORDER BY tid DESC LIMIT 1) s'''
_RECORD_KINDS = (pqbinary.INT8, pqbinary.BYTEA, pqbinary.INT4, pqbinary.INT8)
_LAST_TID = 'SELECT tid FROM transaction ORDER BY tid DESC LIMIT 1'
# the oids of each transaction in a range, at most %s records
_COMMITS = 'SELECT tid, zoid FROM object_state WHERE tid > %s AND tid <= %s ORDER BY tid LIMIT %s'
PREFETCH_BYTES = 16 << 20   # records fetched ahead and not loaded yet, at most
PREFETCH_RECORD = 1 << 20   # longer records are left to the load (bounded) that asks
SPLIT_RECORDS = 100000      # a poll listed commit by commit up to this many records; past it, folded


def is_mvcc(storage):
    return callable(getattr(storage, 'new_instance', None)) and \
        callable(getattr(storage, 'poll_invalidations', None))


def _binary(storage):
    """Can wcfs's record queries go through libpq in binary (pqbinary.py)?
    Said once, at start, when they cannot."""
    try:
        pqbinary.check(storage._adapter.driver)
    except pqbinary.Unavailable as e:
        log.warning('records are read as text, at half the speed: %s', e)
        return False
    return True


class SnapshotBehind(ConnectionError):
    """The database does not show a transaction yet that it told of (a
    replica behind its primary): retried as if it were away."""


class GaveUp(TimeoutError):
    """A use of the database outlasted the database timeout: its connection
    was cut (Watchdog)."""


def lost(exc):
    """Does `exc` say that a connection is gone or unusable (not that the
    database is behind, nor that the request is bad)?"""
    return is_disconnect(exc) and not isinstance(exc, SnapshotBehind)


def _refuse_to_connect(*args, **kwargs):
    raise GaveUp('this storage instance was cut off after the database timeout')


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

    def cut(self):
        """Make a call blocked on its connection return, and any later one
        fail (the instance is closed after the call): never blocks."""
        load = self.storage._load_connection
        load._new_connection = _refuse_to_connect
        shut_down(load.connection)

    def silent_for(self):
        return silent_for(self.storage._load_connection.connection)

    def close(self, cut=False):
        """Release the instance; cut it first where its connection may
        lead to a server that hangs (a rollback would wait for it)."""
        if cut:
            self.cut()
        try:
            self.storage.release()
        except Exception as e:
            log.debug('releasing a storage instance: %s', oneline(e))


class PoolBusy(ConnectionError):
    """Every connection stayed busy for the whole database timeout (the
    database hangs): retried as if it were away, then EIO."""


class Pool:
    """At most `size` instances, each lent to one thread at a time."""

    def __init__(self, make, size):
        self._make = make
        self._size = size
        self._idle = []
        self._made = 0
        self._closed = False    # an instance given back then is closed, not kept
        self._waits = 0         # takes that found every instance lent out
        self._waited = 0.0      # seconds they waited, in all
        self._cond = locks.condition('Pool._cond')  # guards _idle, _made, _closed, _waits, _waited

    def take(self, timeout):
        """-> an instance; PoolBusy when none is free within `timeout` seconds."""
        with self._cond:
            if not self._wait_free(timeout):
                raise PoolBusy('all %d database connections busy for %.3g s'
                               % (self._size, timeout))
            if self._idle:
                return self._idle.pop()
            self._made += 1
        try:
            return Instance(self._make())
        except BaseException:
            self.forget()
            raise

    def _wait_free(self, timeout):
        """With _cond: wait until an instance is idle or may be made; ->
        False after `timeout`. A wait is counted (.wcfs/metrics): a pool
        too small for the readers shows as waits, not as a slow database."""
        def free():
            return self._idle or self._made < self._size
        if free():
            return True
        start = time.monotonic()
        got = self._cond.wait_for(free, timeout)
        self._waits += 1
        self._waited += time.monotonic() - start
        return got

    def waits(self):
        """-> (waits, seconds) so far."""
        with self._cond:
            return self._waits, self._waited

    def give_back(self, inst):
        with self._cond:
            closed = self._closed
            if not closed:
                self._idle.append(inst)
                self._cond.notify()
        if closed:
            inst.close()

    def forget(self):
        """An instance taken will not come back (its caller closes it)."""
        with self._cond:
            self._made -= 1
            self._cond.notify()

    def close(self):
        """Close the idle instances now, those lent out when given back (one
        instance is used by one thread at a time: not closed under it)."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
        for inst in idle:
            inst.close()


class _Use:
    """One use of the database that a Watchdog watches."""

    __slots__ = ('due', 'what', 'targets', 'cut')

    def __init__(self, due, what, targets):
        self.due = due
        self.what = what
        self.targets = targets      # what to cut(): Instance, LastTid
        self.cut = False

    def left(self):
        return max(0.0, self.due - time.monotonic())


class Watchdog:
    """Cuts the connections of a use of the database that outlasts `timeout`
    seconds while none of them received anything for as long (see the
    module doc): one thread, asleep until the first use is due. A use is a
    few round trips: this bounds a request's wait for a server that hangs,
    whatever the server does, and spares a long answer that is arriving
    (a 64 MiB block over a slow link)."""

    def __init__(self, timeout):
        self.timeout = timeout
        self._uses = {}                     # id -> _Use
        self._stopped = False
        self._cond = locks.condition('Watchdog._cond')  # guards _uses, _stopped, each use's due, targets, cut
        self._thread = threading.Thread(target=self._run, name='db-watchdog', daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def watching(self, what, *targets):
        """Run the block within the timeout: past it, `targets` and those
        attached later are cut, and the error that makes the block fail
        becomes GaveUp. -> the use."""
        use = _Use(time.monotonic() + self.timeout, what, list(targets))
        with self._cond:
            self._uses[id(use)] = use      # due after every other: no need to wake the thread
        try:
            yield use
        except Exception:
            if use.cut:
                raise GaveUp('%s: no answer from the database within %g s'
                             % (what, self.timeout)) from None
            raise
        finally:
            with self._cond:
                del self._uses[id(use)]

    def attach(self, use, target):
        """Cut `target` too when `use` is due; at once if it is past due."""
        with self._cond:
            use.targets.append(target)
            if use.cut:
                target.cut()

    def stop(self):
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def _run(self):
        # nothing logged here: GaveUp says it, where the request fails
        with self._cond:
            while True:
                late = self._wait_late()
                if late is None:
                    return
                for use in late:
                    use.cut = True
                    for target in use.targets:
                        target.cut()

    def _wait_late(self):
        """Wait until some use is due and silent; -> those, None once
        stopped. With _cond. Without a use to time, it waits `timeout`: a
        use that begins meanwhile is due later."""
        while not self._stopped:
            now = time.monotonic()
            late, first = [], now + self.timeout
            for use in self._uses.values():
                if use.cut:
                    continue
                if use.due <= now:
                    heard = self._heard(use)
                    if heard is None:
                        late.append(use)
                        continue
                    use.due = now + self.timeout - heard    # data arrives: wait on
                first = min(first, use.due)
            if late:
                return late
            self._cond.wait(first - now)
        return None

    def _heard(self, use):
        """-> how many seconds ago the connections of `use` last received
        data, if less than the timeout; else None."""
        ages = [a for a in (t.silent_for() for t in use.targets) if a is not None]
        if ages and min(ages) < self.timeout:
            return min(ages)
        return None


UNCHANGED = object()        # a poll that found no new transaction


class LastTid:
    """The database's last tid in one round trip, on a connection of its own
    (autocommit, read committed). Polling an instance costs several times as
    much (a rollback, a new snapshot, RelStorage's bookkeeping): 7 % of a
    core at 100 polls a second. It is done only when this moves."""

    def __init__(self, storage):
        self._adapter = storage._adapter
        self._conn = self._cursor = None

    def _open(self):
        manager = self._adapter.connmanager
        conn, cursor = manager.open(isolation=manager.isolation_read_committed, read_only=True)
        conn.rollback()
        conn.autocommit = True
        self._conn, self._cursor = conn, cursor

    def __call__(self):
        rows = self.ask(_LAST_TID)
        return rows[0][0] if rows else 0

    def ask(self, query, args=None):
        """-> the rows of one query on this connection (Ears looks for its
        trigger here: no connection of its own while there is none)."""
        if self._cursor is None:
            self._open()
        try:
            self._cursor.execute(query, args)
            return self._cursor.fetchall()
        except Exception:
            self.close()            # a new connection at the next call
            raise

    def cut(self):
        """Make a call blocked on the connection return (Watchdog)."""
        shut_down(self._conn)

    def silent_for(self):
        return silent_for(self._conn)

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
        self._lock = locks.lock('Prefetched._lock')       # guards _records, _bytes

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
        self.pool = Pool(storage.new_instance, connections)
        self.watchdog = Watchdog(timeout)
        self.poll_interval = poll_interval
        self._ahead = Prefetched(PREFETCH_BYTES)
        self.binary = _binary(storage)    # records in binary through libpq, or as text
        self._connected = True
        self._heard = 0             # the last tid a poll found; written by the poller only
        self._stop = threading.Event()
        self._wake = None           # a pipe: written to stop the poller
        self._poller = None
        self._ears = None           # the poller's: told or polling

    def load(self, oid, before, fresh, cache):
        # fresh: a new snapshot, which shows what a pack removed since
        if not fresh:
            r = self._ahead.take(oid, before)
            if r is not None:
                return r
        with self._instance('load') as inst:
            if fresh:
                inst.poll()
            inst.at_least(u64(before) - 1)
            return inst.storage.loadBefore(oid, before)

    def load_bounded(self, oid, before, fresh, cache, max_size):
        """One query that sends the record only if it is at most max_size
        long: RelStorage would ship a 100 MiB one in seconds. fresh: as in
        load(), and a record with no next revision is then current as of
        a snapshot taken now, not of the one a pooled connection kept
        (a block is shared over the span of its records, zformat.Span)."""
        if not fresh:
            r = self._ahead.take(oid, before)
            if r is not None:
                return r
        at = u64(before) - 1
        with self._instance('load') as inst:
            if fresh:
                inst.poll()
            inst.at_least(at)
            rows = self._records(inst, _RECORD_AS_OF_BOUNDED, (max_size, u64(oid), at),
                                 _RECORD_KINDS)
        if not rows or rows[0][2] is None:
            raise POSKeyError(oid)              # no record then, or the object deleted
        tid, state, size, end = rows[0]
        if state is None:
            raise RecordTooLarge(size)
        return state, p64(tid), None if end is None else p64(end)

    def last_tid(self):
        with self._instance('last transaction') as inst:
            inst.poll()
            return inst.tid

    def listed_oids(self, a, b, upto):
        """One query for all of (a, b]: the oids of their records."""
        with self._instance('changed objects') as inst:
            inst.at_least(b)
            cursor = inst.storage._load_connection.cursor
            cursor.execute(_CHANGED_OIDS, (a, b))
            return {zoid for zoid, in cursor.fetchall()}

    def prefetch(self, oids, at):
        """Fetch the records of `oids` as of `at` in one query; load() takes
        them. A record missing then is left to load(), which says so."""
        with self._instance('prefetch') as inst:
            inst.at_least(at)
            rows = self._records(inst, _RECORDS_AS_OF, (PREFETCH_RECORD, list(oids), at),
                                 _RECORDS_KINDS, max_bytes=PREFETCH_BYTES)
        before = p64(at + 1)
        for zoid, tid, state, end in rows:
            if state is not None:
                self._ahead.put(p64(zoid), before,
                                (state, p64(tid), None if end is None else p64(end)))

    def _records(self, inst, query, params, kinds, max_bytes=None):
        """-> the rows of one of wcfs's record queries on the snapshot of
        `inst`: in binary, each record a view of its row's own buffer
        (pqbinary.py; past `max_bytes` of records, the rows are dropped as
        they come), or where libpq cannot be had, through psycopg2 (as
        text, each record copied out, every row held at once)."""
        conn = inst.storage._load_connection.connection
        cursor = inst.storage._load_connection.cursor
        if not self.binary:
            cursor.execute(query, params)
            return [[bytes(v) if isinstance(v, memoryview) else v for v in row]
                    for row in cursor.fetchall()]
        if pqbinary.transaction_status(conn) != pqbinary.IN_TRANSACTION:
            cursor.execute('SELECT 1')      # psycopg2 begins it, as for RelStorage's own queries
        try:
            return pqbinary.query(conn, query, params, kinds, max_bytes)
        except pqbinary.QueryFailed:
            inst.tid = -1       # its transaction is aborted: polled (a new one) before any use
            raise

    @contextlib.contextmanager
    def _instance(self, what):
        """An instance of the pool for one use, waited for and used within
        the database timeout (Watchdog); one whose connection was cut or
        lost is closed instead of lent again. Notes whether the database
        answered."""
        inst, broken = None, False
        try:
            with self.watchdog.watching(what) as use:
                inst = self.pool.take(use.left())
                self.watchdog.attach(use, inst)
                try:
                    yield inst
                except BaseException as e:
                    broken = lost(e)
                    raise
        except Exception as e:
            if lost(e):
                self._connected = False
            raise
        finally:
            # the use is over: use.cut says for good whether it was cut
            if inst is not None and (broken or use.cut):
                self.pool.forget()
                inst.close(cut=True)
            elif inst is not None:
                self.pool.give_back(inst)
        self._connected = True

    def connected(self):
        return self._connected

    def following(self):
        ears = self._ears
        return TOLD if ears is not None and ears.listening else POLLING

    def heard_last_tid(self):
        return self._heard

    def pool_waits(self):
        return self.pool.waits()

    # following

    def follow(self, on_commit, on_resync, on_pack):
        self._wake = os.pipe()
        self._poller = threading.Thread(target=self._poll, name='poller', daemon=True,
                                        args=(on_commit, on_resync, on_pack))
        self._poller.start()

    def _poll(self, on_commit, on_resync, on_pack):
        """Poll a private instance when the database's last tid moved (asked
        every poll_interval), or, told (listen.py), when a notification came
        (or, none for SAFETY_NET seconds, the last tid moved), and tell
        each commit it found (`_commits`). The first poll may be past what
        the watcher started from, and one after an outage may not cover
        it: both are a resync."""
        inst = Instance(self.storage.new_instance())
        probe = LastTid(self.storage)
        ears = self._ears = Ears(self._asker(probe), self._listener, self.watchdog.watching,
                                 self._wake[0], self._stop.is_set)
        resync, away = True, False
        next_pack_check = time.monotonic() + knobs.PACK_CHECK_INTERVAL
        try:
            while True:
                always = self._next(ears, away)
                if always is None:
                    return
                prev = inst.tid
                oids = self._poll_once(inst, probe, resync or always, quiet=away)
                away = oids is False
                if away:
                    resync = True
                    ears.fall_back(None, retry=0)   # once the database answers again
                    inst.close(cut=True)    # it may be cut, or lead to a server that hangs
                    inst = Instance(self.storage.new_instance())
                    self._stop.wait(min(1.0, 10 * self.poll_interval))
                    continue
                if ears.listening:
                    self._check_told(ears, inst.tid)
                if oids is UNCHANGED:
                    pass
                elif resync or oids is None:
                    resync = False
                    on_resync(inst.tid)
                elif inst.tid > prev:
                    for tid, changed, folded in self._commits(inst, prev, oids):
                        on_commit(tid, changed, folded)
                if time.monotonic() >= next_pack_check:
                    next_pack_check = time.monotonic() + knobs.PACK_CHECK_INTERVAL
                    on_pack()
        finally:
            ears.close()
            probe.close()
            inst.close()

    def _listener(self):
        return Listener(self.storage._adapter.connmanager)

    def _asker(self, probe):
        """-> ask(query, args): one query on the probe's connection, within
        the database timeout."""
        def ask(query, args):
            with self.watchdog.watching('looking for the trigger', probe):
                return probe.ask(query, args)
        return ask

    @staticmethod
    def _check_told(ears, tid):
        """A poll found the database at `tid`, told: poll from now on if
        no notification announced it (the safety net), or if the listening
        connection dropped meanwhile (the next poll starts from `tid`)."""
        try:
            if ears.polled(tid):
                return
            why = ('the database is at %016x, and no notification told of it: the trigger '
                   '%s was dropped or disabled?' % (tid, TRIGGER))
        except Lost as e:
            why = '%s; polled from now on' % e
        ears.fall_back(why)

    def _next(self, ears, away):
        """Wait for the next poll: -> True to poll whatever the last tid says
        (a notification came, or listening just began: what committed
        before it was not told), False to poll if it moved, None once
        stopped. Looks for the trigger when due, not while the database is
        away: the poll after an outage comes first."""
        if not away and ears.try_due():
            try:
                if ears.listen():
                    return True
            except Exception as e:
                (log.debug if is_disconnect(e) else log.warning)(
                    'looking for the trigger %s to LISTEN: %s', TRIGGER, oneline(e))
        if not ears.listening:
            # away: tried again within a second, whatever the interval (told, it may be long)
            pause = min(self.poll_interval, 1.0) if away else self.poll_interval
            return None if self._stop.wait(pause) else False
        try:
            told = ears.wait(SAFETY_NET)
        except Lost as e:
            ears.fall_back('%s; polled from now on' % e)
            return True
        return None if self._stop.is_set() else told

    def _commits(self, inst, prev, oids):
        """The commits a poll of `inst` from `prev` found, one by one:
        [(tid, oids, folded)]. A poll folds every commit since the last one
        into the union of their oids, and a state in between is then lost
        to the watcher (a block changed and changed back: no δ, though a
        client may ask for that state), so they are listed in one query;
        past SPLIT_RECORDS records, or where that fails, the poll stays one
        step, said to be folded."""
        try:
            with self.watchdog.watching('listing commits', inst):
                cursor = inst.storage._load_connection.cursor
                cursor.execute(_COMMITS, (prev, inst.tid, SPLIT_RECORDS + 1))
                rows = cursor.fetchall()
        except Exception as e:
            log.warning('listing the commits in (%016x, %016x]: %s; taking them as one',
                        prev, inst.tid, oneline(e))
            rows = None
        if rows is None or not rows or len(rows) > SPLIT_RECORDS:
            return [(inst.tid, frozenset(oids), True)]
        commits = {}
        for tid, zoid in rows:
            commits.setdefault(tid, set()).add(zoid)
        listed = [(tid, frozenset(changed), False) for tid, changed in sorted(commits.items())]
        if listed[-1][0] != inst.tid:       # the last one changed no object: it still moves zhead
            listed.append((inst.tid, frozenset(), False))
        return listed

    def _poll_once(self, inst, probe, always, quiet):
        """-> what inst.poll() gives; UNCHANGED when the database's last tid
        is the one inst has (and not `always`); False when it failed (said
        once per outage: not when `quiet`)."""
        try:
            with self.watchdog.watching('poll', probe, inst):
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
        self._heard = max(self._heard, inst.tid)
        return oids

    def close(self):
        self._stop.set()
        if self._poller is not None:
            os.write(self._wake[1], b'.')       # out of a wait for notifications
            self._poller.join(timeout=10)
            for fd in self._wake:
                os.close(fd)
        self.watchdog.stop()
        self.pool.close()
        self.storage.close()
