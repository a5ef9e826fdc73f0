"""What every kind of database offers wcfs, and what they share."""

import contextlib
import os
import socket
import struct

from ZODB.utils import p64, u64

from .walks import Cancelled

_TCPI_LAST_DATA_RECV = 52   # offset of tcpi_last_data_recv (ms, u32) in Linux's struct tcp_info

# How commits reach wcfs (Database.following; .wcfs/metrics wcfs_following)
TOLD = 'told'           # the server pushes each commit
POLLING = 'polling'     # wcfs asks the server every --db-poll-interval
FOLLOWING_MODES = (TOLD, POLLING)


class DatabaseUnavailable(Exception):
    """The database did not answer within the database timeout."""


class RecordTooLarge(Exception):
    """A record longer than the bound it was asked for with: not loaded."""

    def __init__(self, size):
        super().__init__('record of %d bytes' % size)
        self.size = size


def is_disconnect(exc):
    """Does `exc` mean the database is away for now (not that the request is bad)?"""
    cls = type(exc)
    if cls.__name__ in ('ClientDisconnected', 'ConnectionRefusedError'):
        return True
    if cls.__module__.split('.')[0] == 'psycopg2' and \
            cls.__name__ in ('OperationalError', 'InterfaceError'):
        return True     # PostgreSQL went away, or its connection was closed
    return isinstance(exc, (ConnectionError, TimeoutError))


def silence(sock):
    """Seconds since the TCP socket `sock` last received data (a server that
    hangs sends none; one sending a long answer does); None where the
    kernel does not tell (not TCP)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return None
    if len(info) < _TCPI_LAST_DATA_RECV + 4:
        return None
    return struct.unpack_from('I', info, _TCPI_LAST_DATA_RECV)[0] / 1000


@contextlib.contextmanager
def _socket_of(conn):
    """A socket object over a duplicate of the descriptor of the psycopg2
    connection `conn`, or None (no connection, closed, not a socket). Used
    while the connection is in use: should libpq close it at that very
    moment and another connection of ours get its number, that one is seen
    instead; cut, its user sees a lost connection."""
    try:
        fd = os.dup(conn.fileno())
    except Exception:           # None, or closed already
        yield None
        return
    try:
        sock = socket.socket(fileno=fd)
    except OSError:             # not a socket (any more)
        os.close(fd)
        yield None
        return
    with sock:
        yield sock


def shut_down(conn):
    """Shut the socket of the psycopg2 connection `conn` (or None) down: a
    call blocked on it returns with an error. The descriptor stays libpq's
    to close."""
    with _socket_of(conn) as sock:
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:     # not connected any more
                pass


def silent_for(conn):
    """Seconds since the socket of the psycopg2 connection `conn` last
    received data; None where it cannot tell (no connection, a Unix socket)."""
    with _socket_of(conn) as sock:
        return None if sock is None else silence(sock)


def oneline(exc):
    text = str(exc).strip().splitlines()
    return '%s: %s' % (type(exc).__name__, text[0]) if text else type(exc).__name__


class Database:
    """One opened database. Subclasses give load, last_tid and follow; the
    rest has a default that suits a storage which can do no better."""

    serial = False      # the server answers one request at a time, for all its clients

    def __init__(self, storage):
        self.storage = storage

    def load(self, oid, before, fresh, cache):
        """storage.loadBefore(oid, before) (8-byte oid and tid); fresh: as
        the server has it now, whatever a cache says; cache=False: not kept
        in a client cache. Raises POSKeyError, or a disconnect (is_disconnect)."""
        raise NotImplementedError

    def load_bounded(self, oid, before, fresh, cache, max_size):
        """load() of a record that no cache holds (a block's, or one a
        transaction just wrote), where the database can tell its size
        before it sends it: RecordTooLarge for one over max_size. This
        default cannot, and loads it."""
        return self.load(oid, before, fresh, cache)

    def last_tid(self):
        """The database's last transaction (an int), asked of the server."""
        raise NotImplementedError

    def follow(self, on_commit, on_resync, on_pack):
        """Start telling on_commit(tid, oids, folded) of each commit (oids: a
        frozenset of ints; `folded`: this item may stand for several commits
        since the last one told, under the last tid, with the union of their
        oids), on_resync(tid) when commits up to tid may have been missed
        (tid: the last transaction, where the caller just learned it, so that
        nobody asks again; else on_resync()), on_pack() when
        objects may have been packed away. They may be called on any thread
        and must only record and wake."""

    def listed_oids(self, a, b, upto):
        """-> the oids the transactions in (a, b] modified, where the
        database lists them in one round trip (with `upto` >= b, those of
        (b, upto] may be there too); else None: they are walked (`walk`)."""
        return None

    def walk(self, a, b, keep_going):
        """-> {tid: oids} of every transaction in (a, b], or None where the
        database cannot list them; Cancelled once keep_going() is false.
        Called by walks.Walks only, one walk at a time."""
        iterator = getattr(self.storage, 'iterator', None)
        if iterator is None:
            return None
        return transactions_from_iterator(iterator, a, b, keep_going)

    def prefetch(self, oids, at):
        """Start loading the records of `oids` as of `at`, if the database can."""

    def connected(self):
        return True

    def following(self):
        """How commits reach wcfs now: one of FOLLOWING_MODES. A database
        that can change how (a notification channel that drops and is
        replaced by polling) says the current one."""
        return TOLD

    def heard_last_tid(self):
        """The database's last transaction as wcfs last heard of it, with
        no round trip: any user may read .wcfs/metrics in a loop. This
        default is the storage's own idea (ZEO's client cache learns it
        from the invalidations the server pushes)."""
        return u64(self.storage.lastTransaction())

    def pool_waits(self):
        """-> (waits, seconds): how often a request waited for a pooled
        connection so far, and how long in all; none where there is no pool."""
        return 0, 0.0

    def close(self):
        self.storage.close()


def transactions_from_iterator(iterator, a, b, keep_going):
    """{tid: oids} of every transaction in (a, b], through the storage's
    iterator (a round trip per transaction and per record on ZEO);
    Cancelled once keep_going() is false."""
    txns = {}
    it = iterator(p64(a + 1), p64(b))
    try:
        for txn in it:
            if not keep_going():
                raise Cancelled('walk of (%016x, %016x]: nobody waits for it' % (a, b))
            txns[u64(txn.tid)] = {u64(rec.oid) for rec in txn}
    finally:
        close = getattr(it, 'close', None)
        if close is not None:
            close()
    return txns
