"""A ZEO ClientStorage: the server pushes every commit.

ZEO calls the invalidation hooks on its I/O thread: the follower only
records and wakes there (loading from that thread deadlocks).

wcfs uses these privates of ZEO's client, checked when the database is
opened so that an upgrade that drops one fails at start, loudly, instead
of serving wrong data later:

- `ClientStorage._call`: a load from the server, not the client cache,
  which does not learn of packs; and `getInvalidations`, the oids of the
  server's recent transactions in one round trip.
- `ClientStorage._server.prefetch`: the prefetch whose future we keep
  (ClientStorage.prefetch drops it, which its own comment says a garbage
  collection may then end half-way).
- `ClientStorage._server.client.info`: the `info` broadcast, the only sign
  of a pack a read-only client gets; bound when the I/O object was made,
  so it is hooked there.
- `ClientStorage._server.io_call` and `_server.client.protocol.call_sync`:
  many calls sent at once, their answers awaited together (zeo_burst.py;
  the protocol exists only while connected, so only io_call is checked
  here, and zeo_burst gives way to the iterator without it).
- `ZEO.asyncio.base.SizedMessageProtocol`: replaced, before any connection,
  by a receive linear in the message's size (zeo_receive.py).
- `ClientStorage._server.loop`, `_server.client.closed` and
  `_server.client.protocol.sm_protocol.transport`: the connection, aborted
  when the server hangs (Prober; the classes' attributes are checked).

A server that hangs (stopped, or a partition) keeps its connection open,
and ZEO waits for an answer for ever once connected (its timeout is for
connecting). So a ping goes to the server every second or so; one left
unanswered for the database timeout, while nothing else arrives either
(TCP_INFO), aborts the connection: every call waiting on it fails
(ClientDisconnected: EIO after the timeout), the database counts as
unreachable, and ZEO connects anew, which verifies its cache: what was
committed meanwhile comes as invalidations or a resync.
"""

import collections
import logging
import threading
import time

import ZEO.ClientStorage
import ZEO.Exceptions
import ZEO.asyncio.base
import ZEO.asyncio.smp
from ZODB.utils import p64, u64

from . import zeo_burst
from .base import Database, silence, transactions_from_iterator
from .plain import Invalidations

log = logging.getLogger('wcfs.zstorage')

PING_INTERVAL = 1.0     # seconds between pings, at most (a third of the timeout, if less)
LAST_TID_PAUSE = 0.002  # seconds between pings while a commit's invalidation is on its way


class MissingPrivate(Exception):
    """This version of ZEO lacks a private that wcfs relies on."""


def _privates(storage):
    """-> (call, prefetch, client) of `storage`; MissingPrivate naming the
    first that is gone."""
    for path in ('_call', '_server.prefetch', '_server.client.info', '_server.io_call',
                 '_server.loop'):
        obj = storage
        for name in path.split('.'):
            obj = getattr(obj, name, None)
        if obj is None:
            raise MissingPrivate('ZEO %s: ClientStorage.%s is gone; wcfs needs it (see '
                                 'wcfs_lib/zodb/zstorage/zeo.py)' % (_version(), path))
    if not hasattr(ZEO.asyncio.base.ZEOBaseProtocol, 'sm_protocol') or \
            not hasattr(ZEO.asyncio.smp.SizedMessageProtocol, 'transport'):
        raise MissingPrivate('ZEO %s: a protocol\'s sm_protocol.transport is gone; wcfs needs '
                             'it (see wcfs_lib/zodb/zstorage/zeo.py)' % _version())
    return storage._call, storage._server.prefetch, storage._server.client


def _version():
    try:
        from importlib.metadata import version
        return version('ZEO')
    except Exception:
        return getattr(ZEO, '__version__', '?')


class ZEODatabase(Database):
    serial = True       # the server runs every client's requests on one thread

    def __init__(self, storage, timeout=30):
        super().__init__(storage)
        self._call, self._prefetch, self._client = _privates(storage)
        self._prefetching = collections.deque(maxlen=64)   # prefetches kept alive
        self._timeout = timeout
        self._prober = None

    def load(self, oid, before, fresh, cache):
        if fresh or not cache:
            return self._call('loadBefore', oid, before)
        return self.storage.loadBefore(oid, before)

    def last_tid(self):
        """The server's last transaction, once this client has its
        invalidations (loads from the client cache as of it are then exact).

        A ping alone is not enough: the server tells other clients of a
        commit on their connections' own threads, after the committer got
        its answer, so a ping can overtake an invalidation of a commit that
        another process has already seen (a reader then got ENOENT for
        `mkdir @<tid>` of a tid in the writer's log, 3 runs in 60 of the
        isolation stress on a loaded machine). So the server's own last
        tid is asked (a round trip, like a ping: the invalidations sent
        before its answer are in), and pinged for until its invalidation
        is in too."""
        server = u64(self._call('lastTransaction'))
        deadline = time.monotonic() + self._timeout
        while u64(self.storage.lastTransaction()) < server:
            if time.monotonic() > deadline:
                raise ZEO.Exceptions.ClientDisconnected(
                    'the invalidation of %016x did not arrive within %gs' % (server, self._timeout))
            time.sleep(LAST_TID_PAUSE)
            self.storage.ping()
        return u64(self.storage.lastTransaction())

    def follow(self, on_commit, on_resync, on_pack):
        self.storage.registerDB(Invalidations(on_commit, on_resync))
        info = self._client.info

        def on_info(msg):
            # A read-only client gets `info` only when the server packed:
            # packs send no invalidations, and objects may be gone.
            info(msg)
            on_pack()

        self._client.info = on_info
        self._prober = Prober(self.storage, self._call, self._client, self._timeout)

    def listed_oids(self, a, b, upto):
        """ZEO keeps the oids of its last transactions (invalidation-queue-size,
        or all those younger than invalidation-age): one round trip when
        (a, b] is among them."""
        if upto is None:
            return None
        r = self._call('getInvalidations', p64(a))
        if r is not None and r[0] is not None and b <= u64(r[0]) <= upto:
            return {u64(oid) for oid in r[1]}
        return None

    def walk(self, a, b, keep_going):
        """The iterator's calls sent in bursts (zeo_burst), where the server
        can list the transactions; else the storage's iterator, a round trip
        per transaction and per record.

        Two walks at once on one ClientStorage are safe (issue 15): the
        server keeps each iterator under an id of its own and runs one
        connection's calls whole, one after another, in the order sent
        (StorageServer.iterator_*, asyncio/server.py message_received); the
        client sends every call from its one I/O thread and gives each
        answer to the call of its message id (asyncio/client.py
        Protocol.futures); the slow way's client-side iterator objects
        (ClientStorage._iterators) are swept only by commits and
        disconnections. tests/test_old_cat_walks.py walks two at once, one
        thread each, beside loads: exact, and every load answered. (An
        earlier version that walked several iterators of one request from
        threads at once was seen to leave a load of another thread
        unanswered for good.) wcfs walks one at a time all the same
        (walks.Walks): two walks would only queue behind each other on the
        one connection, with every load behind both."""
        txns = zeo_burst.walk(self.storage, a, b, keep_going)
        if txns is not None:
            return txns
        return transactions_from_iterator(self.storage.iterator, a, b, keep_going)

    def prefetch(self, oids, at):
        future = self._prefetch([p64(oid) for oid in oids], p64(at + 1))
        self._prefetching.append(future)

    def connected(self):
        return self.storage.is_connected() and not (self._prober and self._prober.hung())

    def close(self):
        if self._prober is not None:
            self._prober.stop()
        self.storage.close()


class Prober:
    """Pings the server; aborts the connection when a ping stays unanswered
    for `timeout` seconds (see the module doc)."""

    def __init__(self, storage, call, client, timeout):
        self._storage = storage
        self._call = call
        self._client = client
        self._loop = storage._server.loop
        self._timeout = timeout
        self._interval = min(PING_INTERVAL, timeout / 3)
        self._stop = threading.Event()
        self._hung = None   # the protocol (connection) aborted last
        self._thread = threading.Thread(target=self._run, name='zeo-prober', daemon=True)
        self._thread.start()

    def hung(self):
        """Is the connection one that hangs, not aborted yet?"""
        return self._hung is not None and self._client.protocol is self._hung

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self):
        ping = None         # (future, sent at, the protocol it went on)
        while not self._stop.wait(self._interval) and not self._client.closed:
            if ping is not None:
                future, sent, protocol = ping
                if not future.done():
                    if time.monotonic() - sent >= self._timeout and not self._hears(protocol):
                        future.add_done_callback(_retrieve)     # ClientDisconnected, later
                        self._cut(protocol)
                        ping = None
                    continue
                future.exception()      # a disconnect: ZEO connects anew by itself
            protocol = self._client.protocol
            if protocol is None or not self._storage.is_connected():
                ping = None         # connecting or verifying: ZEO's own timeout applies
                continue
            try:
                ping = (self._call('ping', wait=False), time.monotonic(), protocol)
            except Exception:       # disconnected meanwhile, or closed
                ping = None

    def _hears(self, protocol):
        """Did the connection receive data within the timeout? A ping waits
        behind a long answer that is arriving (a big record, a slow link)."""
        transport = getattr(protocol.sm_protocol, 'transport', None)
        sock = transport and transport.get_extra_info('socket')
        quiet = None if sock is None else silence(sock)
        return quiet is not None and quiet < self._timeout

    def _cut(self, protocol):
        self._hung = protocol
        log.warning('database: no answer to a ping within %g s: aborting the connection',
                    self._timeout)

        def abort():
            # only the connection that hangs: ZEO may have made another
            if self._client.protocol is protocol and protocol.sm_protocol is not None:
                protocol.sm_protocol.transport.abort()

        self._loop.call_soon_threadsafe(abort)


def _retrieve(future):
    future.exception()


def is_zeo(storage):
    return isinstance(storage, ZEO.ClientStorage.ClientStorage)

