"""Decoded blocks: the few kept, and the memory spent on loads in flight.

The kernel asks for a 2 MiB block in 128 KiB .. 1 MiB pieces; keeping the
last decoded blocks loads each block once per revision, not once per piece
(SPEC §6 "precision"). Concurrent misses of one block wait for its one load.

Memory is bounded in bytes, whatever the blksize (ZBIGFILE.md): the cache
holds at most `max_bytes` of blocks (but always the newest one, so that the
pieces of one block larger than the bound still load it once), and loads in
flight together at most `max_inflight` bytes (a load waits for room; one
load always proceeds).
"""

import collections
import threading

CACHE_BYTES = 32 << 20
INFLIGHT_BYTES = 64 << 20


class BlockCache:
    def __init__(self, max_bytes=CACHE_BYTES, max_inflight=INFLIGHT_BYTES):
        self.lock = threading.Condition()   # guards _blocks, _bytes, _loading, _inflight
        self._blocks = collections.OrderedDict()    # key -> bytes, oldest first
        self._bytes = 0
        self._loading = {}                  # key -> Event of the load in flight
        self._inflight = 0                  # bytes of the loads in flight
        self._max = max_bytes
        self._max_inflight = max_inflight

    def get(self, key, size, load):
        """The block `key` of `size` bytes, from the cache or from load()."""
        while True:
            with self.lock:
                data = self._blocks.get(key)
                if data is not None:
                    self._blocks.move_to_end(key)
                    return data
                inflight = self._loading.get(key)
                if inflight is None:
                    self.lock.wait_for(lambda: self._inflight == 0 or
                                       self._inflight + size <= self._max_inflight)
                    if key in self._loading or key in self._blocks:
                        continue
                    inflight = self._loading[key] = threading.Event()
                    self._inflight += size
                    break
            inflight.wait()
        try:
            data = load()
            with self.lock:
                self._keep(key, data)
            return data
        finally:
            with self.lock:
                del self._loading[key]
                self._inflight -= size
                self.lock.notify_all()
            inflight.set()

    def _keep(self, key, data):
        self._blocks[key] = data
        self._bytes += len(data)
        while self._bytes > self._max and len(self._blocks) > 1:
            _, old = self._blocks.popitem(last=False)
            self._bytes -= len(old)
