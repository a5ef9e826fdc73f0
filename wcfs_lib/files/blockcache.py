"""Decoded blocks: the few kept, the loads in flight, and whose turn it is.

The kernel asks for a 2 MiB block in 128 KiB .. 1 MiB pieces; keeping the
last decoded blocks loads each block once, not once per piece (SPEC §6
"precision"). Concurrent misses of one block wait for its one load.

Keys. A read asks for a block by its revision key (file, revision, block);
what the block holds is fixed by its content key (its ZBlk's oid, blksize)
and the span of revisions [lo, hi] over which every record it was decoded
from (the ZBlk, and a ZBlk1's chunk tree and ZData) stayed the same. A kept
block serves every revision key whose ZBlk, looked up in blktab as of that
revision, is the same and whose revision is in the span: `@<tid>/`
directories and head share one load of a block that did not change between
them (exact: the span is where the records are the same, from the
database's own serials). A revision key once resolved is remembered (at most
ALIASES of them), so that the pieces of a block cost no lookup.

Memory is bounded in bytes, whatever the blksize (ZBIGFILE.md):

- kept blocks: at most max(`max_bytes`, KEEP_LARGEST x the largest blksize
  read in the last IDLE seconds): two blocks of the largest size fit, so
  that reads interleaved between two blocks load each once;
- loads in flight: at most `max_inflight` bytes over all users (a load waits
  for room, one load always proceeds), and `max_user` bytes for one uid
  (but one load of each uid always may);
- blocks unused for IDLE seconds are dropped by `trim()` (the server's
  timer) while no load is in flight, and the bound falls back with them:
  an idle wcfs keeps nothing.

A block counts as its blksize, whatever its decoded length (a hole is kept
as nothing, and must not make the cache unbounded in entries).

Turns. Loads that wait for room start fairly: the next is the oldest
waiting load of the uid with the fewest bytes in flight, among the uids
under their own bound. A user with many threads gets no more turns than a
user with one read, and the bytes one user has in flight at the database
(which serves one connection's requests in order) stay few, so that another
user's load is not queued behind them. On a database that serves one
request at a time (ZEO), a uid also waits while it has taken more than its
share of the database's time and another uid reads (shares.py).

Prefetch (prefetch.py) takes part in the same bounds without ever waiting:
`reserve` claims a revision key only when it is neither kept nor claimed,
when nobody waits for a turn, when the loads in flight (all, and the uid's)
have room for it, and while the prefetched blocks not read yet (loading or
kept) stay within `max_ahead` bytes; `fill` then resolves and loads it (on a
prefetch thread). A reader that wants the block meanwhile waits for it, as
for any other load.
"""

import collections
import itertools
import time

from .. import locks
from ..zodb.blockdata import HOLE
from .shares import NOBODY

CACHE_BYTES = 32 << 20      # kept, at least
KEEP_LARGEST = 2            # kept, at least this many blocks of the largest blksize read
INFLIGHT_BYTES = 96 << 20   # loads in flight, all users: one 64 MiB block and 32 MiB beside
# loads in flight of one uid (but one load always): few, since the database
# answers one connection's requests in order (bench_stall, ZEO, 16 threads of
# 2 MiB: another user's p50 x12 with 8 MiB, x7 with 4 MiB; a lone reader's
# cold read the same)
USER_BYTES = 4 << 20
AHEAD_BYTES = 16 << 20      # prefetched and not read yet, loading or kept
IDLE = 10.0                 # seconds unused after which trim() drops a block
ALIASES = 4096              # revision keys remembered
MAX_BLKSIZE = 64 << 20      # the largest blksize wcfs serves (ZBIGFILE.md)
# every decoded block wcfs holds at once, kept and in flight, at most
BLOCK_MEMORY = max(CACHE_BYTES, KEEP_LARGEST * MAX_BLKSIZE) + INFLIGHT_BYTES


class Entry:
    """A decoded block: its content key, and the span it holds for."""

    __slots__ = ('cid', 'lo', 'hi', 'data', 'parts', 'size', 'keys', 'used', 'alive')

    def __init__(self, cid, lo, hi, data, parts, size):
        self.cid, self.lo, self.hi = cid, lo, hi
        self.data, self.parts, self.size = data, parts, size
        self.keys = set()           # revision keys resolved to it
        self.used = time.monotonic()
        self.alive = True


class Waiter:
    __slots__ = ('uid', 'size', 'seq', 'go')

    def __init__(self, uid, size, seq):
        self.uid, self.size, self.seq = uid, size, seq
        self.go = False


class BlockCache:
    def __init__(self, max_bytes=CACHE_BYTES, max_inflight=INFLIGHT_BYTES,
                 max_ahead=AHEAD_BYTES, max_user=USER_BYTES, shares=None):
        # guards everything below: entries, aliases, claims, loads, turns, shares
        self.lock = locks.condition('BlockCache.lock')
        self._entries = collections.OrderedDict()   # id(entry) -> Entry, least used first
        self._by_cid = {}                   # content key -> [Entry]
        self._aliases = collections.OrderedDict()   # revision key -> Entry
        self._bytes = 0                     # of _entries
        self._claims = {}                   # revision key -> Event: being resolved
        self._loading = {}                  # content key -> Event of its load in flight
        self._inflight = 0                  # bytes admitted, all uids
        self._user = {}                     # uid -> bytes admitted
        self._queues = {}                   # uid -> deque of Waiters, oldest first
        self._shares = shares               # a shares.Shares, or None (a parallel database)
        self._flight = []                   # the uid of each load in flight, oldest first
        self._seq = itertools.count()
        self._unread = {}                   # revision key -> size: prefetched, not read yet
        self._ahead = 0                     # bytes of _unread
        self._max = max_bytes
        self._max_inflight = max_inflight
        self._max_user = max_user
        self._max_ahead = max_ahead
        self._largest = 0                   # the largest blksize read lately
        self._largest_used = 0.0            # when
        self.unused = 0                     # prefetched blocks dropped before any read
        self.rested = 0                     # loads that waited for their uid's share

    # ---- readers ----

    def get(self, key, at, size, find, load, uid=None, resolved=None):
        """Block `key` (of revision `at`, `size` bytes) from the cache, or:
        find() -> its content key (None: a hole), load(cid) -> (data, (lo,
        hi), parts); resolved(parts) is called when `key` is resolved to a
        block (loaded or shared), not when it is a hit."""
        while True:
            with self.lock:
                if self._shares is not None:
                    self._shares.seen(uid, time.monotonic())
                self._note_size(size)
                data = self._hit(key)
                if data is not None:
                    return data
                claim = self._claims.get(key)
                if claim is None:
                    claim = self._claims[key] = locks.event('BlockCache.load')
                    break
                self._read(key)         # a prefetch of it: read now, whatever comes of it
            claim.wait()
        return self._resolve(key, claim, at, size, find, load, uid, resolved, admitted=False)

    def cached_bytes(self):
        with self.lock:
            return self._bytes

    # ---- prefetch ----

    def reserve(self, key, size, uid=None):
        """Claim `key` for a prefetch: -> True when the caller must now have
        it fill(key, ...), False when it is kept or claimed, or there is no
        room (a prefetch never waits)."""
        with self.lock:
            alias = self._aliases.get(key)
            if (alias is not None and alias.alive) or key in self._claims:
                return False
            if self._queues or not self._fits(uid, size):
                return False
            if self._ahead + size > self._max_ahead:
                return False
            self._note_size(size)
            self._claims[key] = locks.event('BlockCache.load')
            self._begin(uid, size)
            self._unread[key] = size
            self._ahead += size
            return True

    def fill(self, key, at, size, find, load, uid=None, resolved=None):
        """Resolve and load a reserved block; its failure only unclaims it
        (a reader then loads it itself, and sees the error itself)."""
        with self.lock:
            claim = self._claims[key]
        try:
            self._resolve(key, claim, at, size, find, load, uid, resolved, admitted=True)
        finally:
            with self.lock:
                alias = self._aliases.get(key)
                if alias is None or not alias.alive:
                    self._read(key)

    # ---- the server's timer ----

    def trim(self, now=None):
        """While no load is in flight: drop the blocks unused for IDLE
        seconds, and forget a large blksize not read for as long (a load
        may take longer than that: it keeps what the reads around it use).
        Memory goes back when reads stop."""
        now = time.monotonic() if now is None else now
        with self.lock:
            if self._shares is not None:
                self._charge()          # before it forgets who read
                self._shares.trim(now, self._user)
            if self._claims:
                return
            if now - self._largest_used >= IDLE:
                self._largest = 0
            for entry in list(self._entries.values()):
                if now - entry.used < IDLE:
                    break
                self._drop(entry)
            self._evict()

    # ---- resolving a revision key (its claim held) ----

    def _resolve(self, key, claim, at, size, find, load, uid, resolved, admitted):
        entry = None
        try:
            cid = find()
            if cid is None:
                with self.lock:
                    self._alias(key, self._hole(size))
                return HOLE
            with self.lock:
                while True:
                    entry = self._covering(cid, at)
                    if entry is not None:
                        self._alias(key, entry)
                        break
                    inflight = self._loading.get(cid)
                    if inflight is not None:
                        # the same ZBlk loaded as of another revision: its
                        # span may cover ours
                        self.lock.release()
                        try:
                            inflight.wait()
                        finally:
                            self.lock.acquire()
                        continue
                    if admitted:
                        break
                    self._admit(uid, size)
                    admitted = True
                if entry is None:
                    inflight = self._loading[cid] = locks.event('BlockCache.load')
            if entry is None:
                entry = self._load(key, cid, size, load, inflight)
            if resolved is not None:
                resolved(entry.parts)
            return entry.data
        finally:
            with self.lock:
                if admitted:
                    self._end(uid, size)
                del self._claims[key]
                self.lock.notify_all()
            claim.set()

    def _load(self, key, cid, size, load, inflight):
        try:
            data, (lo, hi), parts = load(cid)
            with self.lock:
                entry = self._keep(cid, lo, hi, data, parts, size)
                self._alias(key, entry)
            return entry
        finally:
            with self.lock:
                del self._loading[cid]
            inflight.set()

    def _hit(self, key):
        """The data `key` resolved to, if still kept (lock held)."""
        entry = self._aliases.get(key)
        if entry is None:
            return None
        if not entry.alive:
            self._unalias(key)
            return None
        self._aliases.move_to_end(key)
        self._use(entry)
        self._read(key)
        return entry.data

    def _covering(self, cid, at):
        for entry in self._by_cid.get(cid, ()):
            if entry.lo <= at <= entry.hi:
                self._use(entry)
                return entry
        return None

    def _use(self, entry):
        entry.used = time.monotonic()
        if entry.size:
            self._entries.move_to_end(id(entry))

    def _hole(self, size):
        """An entry of nothing for a hole: aliased, never counted."""
        return Entry(None, 0, 0, HOLE, (), 0)

    def _alias(self, key, entry):
        old = self._aliases.pop(key, None)
        if old is not None:
            old.keys.discard(key)
        self._aliases[key] = entry
        entry.keys.add(key)
        while len(self._aliases) > ALIASES:
            self._unalias(next(iter(self._aliases)))

    def _unalias(self, key):
        entry = self._aliases.pop(key)
        entry.keys.discard(key)

    def _keep(self, cid, lo, hi, data, parts, size):
        """Keep what a load gave; a span that meets one kept of the same
        content key is the same content: one entry for both."""
        for entry in self._by_cid.get(cid, ()):
            if entry.lo <= hi and lo <= entry.hi:
                entry.lo, entry.hi = min(entry.lo, lo), max(entry.hi, hi)
                self._use(entry)
                return entry
        self._note_size(size)
        entry = Entry(cid, lo, hi, data, parts, size)
        self._entries[id(entry)] = entry
        self._by_cid.setdefault(cid, []).append(entry)
        self._bytes += size
        self._evict(keep=entry)
        return entry

    def _limit(self):
        return max(self._max, KEEP_LARGEST * self._largest)

    def _evict(self, keep=None):
        """Drop the least used blocks beyond the limit (never `keep`, the
        newest: the pieces of one block larger than the limit load it once)."""
        limit = self._limit()
        while self._bytes > limit and self._entries:
            entry = next(iter(self._entries.values()))
            if entry is keep:
                break
            self._drop(entry)

    def _drop(self, entry):
        del self._entries[id(entry)]
        same = self._by_cid[entry.cid]
        same.remove(entry)
        if not same:
            del self._by_cid[entry.cid]
        self._bytes -= entry.size
        entry.alive = False
        for key in list(entry.keys):
            if key in self._unread:
                self._read(key)
                self.unused += 1
            self._unalias(key)

    def _note_size(self, size):
        if size >= self._largest:
            self._largest = size
            self._largest_used = time.monotonic()

    def _read(self, key):
        """The block is read (or given up): it no longer counts as ahead."""
        size = self._unread.pop(key, None)
        if size is not None:
            self._ahead -= size

    # ---- turns for loads (lock held) ----

    def _fits(self, uid, size):
        return self._user_fits(uid, size) and (
            self._inflight == 0 or self._inflight + size <= self._max_inflight)

    def _user_fits(self, uid, size):
        used = self._user.get(uid, 0)
        return (used == 0 or used + size <= self._max_user) and self._rest(uid) is None

    def _rest(self, uid):
        """Seconds before `uid` may start a load (shares.py), or None: now."""
        if self._shares is None:
            return None
        now = time.monotonic()
        self._charge(now)
        return self._shares.rest(uid, now)

    def _admit(self, uid, size):
        """Wait for the turn of a load of `size` bytes of `uid`; counted in
        flight once it returns (`_end` gives it back)."""
        waiter = Waiter(uid, size, next(self._seq))
        self._queues.setdefault(uid, collections.deque()).append(waiter)
        self._schedule()
        rested = False
        try:
            while not waiter.go:
                rest = self._rest(uid)      # no load ends to wake it: its credit fills
                rested = rested or rest is not None
                self.lock.wait(rest)
                self._schedule()
        except BaseException:
            if waiter.go:
                self._end(uid, size)
            else:
                self._dequeue(waiter)
            raise
        finally:
            self.rested += rested

    def _schedule(self):
        """Start the waiting loads whose turn it is, fairest first."""
        woke = False
        while self._queues:
            ready = [(self._user.get(uid, 0), q[0].seq, uid) for uid, q in self._queues.items()
                     if self._user_fits(uid, q[0].size)]
            if not ready:
                break
            uid = min(ready)[2]
            waiter = self._queues[uid][0]
            if not self._fits(uid, waiter.size):
                break                   # room comes back as loads end: its turn stays
            self._dequeue(waiter)
            self._begin(uid, waiter.size)
            waiter.go = woke = True
        if woke:
            self.lock.notify_all()

    def _charge(self, now=None):
        """The database's time so far to the uid of the oldest load in
        flight, the one the database serves."""
        if self._shares is not None:
            self._shares.charge(self._flight[0] if self._flight else NOBODY,
                                time.monotonic() if now is None else now)

    def _dequeue(self, waiter):
        queue = self._queues[waiter.uid]
        queue.remove(waiter)
        if not queue:
            del self._queues[waiter.uid]

    def _begin(self, uid, size):
        self._charge()
        self._flight.append(uid)
        self._inflight += size
        self._user[uid] = self._user.get(uid, 0) + size

    def _end(self, uid, size):
        self._charge()
        self._flight.remove(uid)        # its oldest: one uid's loads are alike here
        self._inflight -= size
        left = self._user[uid] - size
        if left:
            self._user[uid] = left
        else:
            del self._user[uid]
        self._schedule()
# wcfs's resident memory under any reads, as the man page says: the blocks,
# and the database client's buffers of the loads in flight (a 64 MiB record
# takes about three times its size while it arrives: seen 674 MiB at most,
# PostgreSQL, bench_stall.py)
RSS_BOUND = 768 << 20
