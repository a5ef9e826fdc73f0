"""Decoded blocks: the few kept, and the memory spent on loads in flight.

The kernel asks for a 2 MiB block in 128 KiB .. 1 MiB pieces; keeping the
last decoded blocks loads each block once per revision, not once per piece
(SPEC §6 "precision"). Concurrent misses of one block wait for its one load.

Memory is bounded in bytes, whatever the blksize (ZBIGFILE.md): the cache
holds at most `max_bytes` of blocks (but always the newest one, so that the
pieces of one block larger than the bound still load it once), and loads in
flight together at most `max_inflight` bytes (a load waits for room; one
load always proceeds). A block counts as its blksize, whatever its decoded
length (a hole is kept as nothing, and must not make the cache unbounded in
entries).

Prefetch (prefetch.py) takes part in the same bounds without ever waiting:
`reserve` claims a block's load only when it is neither kept nor loading,
when the loads in flight have room for it, and while the prefetched blocks
not read yet (loading or kept) stay within `max_ahead` bytes; `fill` then
loads it (on a prefetch thread). A reader that wants the block meanwhile
waits for that one load, as for any other. A prefetched block is keyed like
any block, by (file, revision, block): it is served only for the revision
it was loaded as of.
"""

import collections
import threading

CACHE_BYTES = 32 << 20
INFLIGHT_BYTES = 64 << 20
AHEAD_BYTES = 16 << 20      # prefetched and not read yet, loading or kept


class BlockCache:
    def __init__(self, max_bytes=CACHE_BYTES, max_inflight=INFLIGHT_BYTES,
                 max_ahead=AHEAD_BYTES):
        # guards _blocks, _bytes, _loading, _inflight, _unread, _ahead, unused
        self.lock = threading.Condition()
        self._blocks = collections.OrderedDict()    # key -> (data, size), oldest first
        self._bytes = 0
        self._loading = {}                  # key -> Event of the load in flight
        self._inflight = 0                  # bytes of the loads in flight
        self._unread = {}                   # key -> size: prefetched, not read yet
        self._ahead = 0                     # bytes of _unread
        self._max = max_bytes
        self._max_inflight = max_inflight
        self._max_ahead = max_ahead
        self.unused = 0                     # prefetched blocks dropped before any read

    def get(self, key, size, load):
        """The block `key` of `size` bytes, from the cache or from load()."""
        while True:
            with self.lock:
                kept = self._blocks.get(key)
                if kept is not None:
                    self._blocks.move_to_end(key)
                    self._read(key)
                    return kept[0]
                inflight = self._loading.get(key)
                if inflight is None:
                    self.lock.wait_for(lambda: self._inflight == 0 or
                                       self._inflight + size <= self._max_inflight)
                    if key in self._loading or key in self._blocks:
                        continue
                    inflight = self._start(key, size)
                    break
                self._read(key)         # a prefetch of it: read now, whatever comes of it
            inflight.wait()
        return self._run(key, size, load, inflight)

    def reserve(self, key, size):
        """Claim the load of `key` for a prefetch: -> True when the caller must
        now have it fill(key, ...), False when it is kept, loading, or there
        is no room (a prefetch never waits)."""
        with self.lock:
            if key in self._blocks or key in self._loading:
                return False
            if self._inflight and self._inflight + size > self._max_inflight:
                return False
            if self._ahead + size > self._max_ahead:
                return False
            self._start(key, size)
            self._unread[key] = size
            self._ahead += size
            return True

    def fill(self, key, size, load):
        """Run the load of a reserved block; its failure only unclaims it
        (a reader then loads it itself, and sees the error itself)."""
        with self.lock:
            inflight = self._loading[key]
        try:
            self._run(key, size, load, inflight)
        finally:
            with self.lock:
                if key not in self._blocks:
                    self._read(key)

    def _start(self, key, size):
        inflight = self._loading[key] = threading.Event()
        self._inflight += size
        return inflight

    def _run(self, key, size, load, inflight):
        try:
            data = load()
            with self.lock:
                self._keep(key, data, size)
            return data
        finally:
            with self.lock:
                del self._loading[key]
                self._inflight -= size
                self.lock.notify_all()
            inflight.set()

    def _read(self, key):
        """The block is read (or given up): it no longer counts as ahead."""
        size = self._unread.pop(key, None)
        if size is not None:
            self._ahead -= size

    def _keep(self, key, data, size):
        self._blocks[key] = (data, size)
        self._bytes += size
        while self._bytes > self._max and len(self._blocks) > 1:
            old, (_, old_size) = self._blocks.popitem(last=False)
            self._bytes -= old_size
            if old in self._unread:
                self._read(old)
                self.unused += 1
