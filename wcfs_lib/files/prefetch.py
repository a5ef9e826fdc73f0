"""Sequential reads: telling them apart, and loading the blocks that follow.

A cold read is served block by block on demand: while a FUSE thread waits
for one block's record and decodes it, nothing loads the next one, and the
kernel's readahead (1 MiB) reaches at most one block ahead. For a reader
that goes through a file in order, prefetch threads load the next blocks in
parallel, so that the database's round trips, the decoding and the FUSE
replies overlap.

Telling: each open data file has a `ReadStream`: the byte ranges its last
reads covered, merged into runs (the kernel's readahead sends contiguous
reads, a few at a time and not always in order). A read calls for prefetch
when the run it is part of goes through a whole block into the next one,
from the last byte of the block before: the reader crossed two block
boundaries in a row; the blocks after the run are loaded ahead. Random
reads never make such a run; nor does the read of a block changed under a
page cache that holds the rest of the file (SPEC §6 "precision"), even when
the page cache lost a page at the start of the block after it: neither
prefetches anything, so they load exactly the blocks they read.

Loading: the blocks after the read, up to AHEAD_BYTES (at most
AHEAD_BLOCKS of them), are claimed in the BlockCache (which bounds the bytes
in flight, of all users and of the reader's uid, and the bytes prefetched
and not read yet, and never makes a prefetch wait) and loaded by THREADS
threads, nearest first. Each is asked for by (file, revision, block) like
every block, and loaded as of that revision: a block prefetched for a head
that has moved since is served for the new one only where its records are
the same (blockcache.py).
"""

import logging
import queue
import threading

from .. import locks

log = logging.getLogger('wcfs.prefetch')

AHEAD_BYTES = 8 << 20       # how far ahead of a sequential reader
AHEAD_BLOCKS = 32           # and at most that many blocks (small blksizes)
THREADS = 4                 # prefetch loads in flight at most
RECENT = 16                 # runs of a stream remembered (random reads each make one)


class ReadStream:
    """The reads through one open data file, enough to tell a sequential reader."""

    def __init__(self):
        self._lock = locks.lock('ReadStream._lock')       # guards _runs
        self._runs = []                     # disjoint [lo, hi) ranges read, last extended last

    def note(self, offset, end, blksize):
        """Note the read [offset, end): -> the block to prefetch from, the one
        after its run, when the run covers the block before the run's last
        block from that block's previous byte on; else None."""
        with self._lock:
            lo, hi = offset, end
            runs = []
            for run in self._runs:
                if run[1] < lo or run[0] > hi:
                    runs.append(run)
                else:                       # overlapping or adjacent: merged
                    lo, hi = min(lo, run[0]), max(hi, run[1])
            runs.append((lo, hi))
            self._runs = runs[-RECENT:]
        last = (hi - 1) // blksize
        if last >= 2 and lo <= (last - 1) * blksize - 1:
            return last + 1
        return None


class Prefetcher:
    """Threads that load claimed blocks into the BlockCache."""

    def __init__(self, blocks):
        self.blocks = blocks
        self._queue = queue.SimpleQueue()
        self._lock = locks.lock('Prefetcher._lock')       # guards _threads
        self._threads = []

    def ahead(self, bf, head, blk, uid=None):
        """Prefetch the blocks of `bf` (a reads.FileReads) as of `head` from
        `blk` on, for the reader `uid` (they count among its loads in flight)."""
        bs = head.blksize
        nblk = -(-head.size // bs)
        stop = min(nblk, blk + max(1, min(AHEAD_BLOCKS, AHEAD_BYTES // bs)))
        for b in range(blk, stop):
            key = bf.block_key(head, b)
            if self.blocks.reserve(key, bs, uid):
                self._start()
                self._queue.put((bf, head, b, uid))

    def _start(self):
        with self._lock:
            if len(self._threads) < THREADS:
                t = threading.Thread(target=self._run, daemon=True,
                                     name='prefetch-%d' % len(self._threads))
                self._threads.append(t)
                t.start()

    def stop(self):
        """End the threads once the loads queued before are done (shutdown)."""
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)
        for t in threads:
            t.join()

    def _run(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            bf, head, blk, uid = item
            try:
                bf.fill_ahead(head, blk, uid)
            except Exception as e:
                # the reader of the block loads it again, and gets the error itself
                log.debug('bigfile/%s @%016x: prefetch of block %d: %s: %s',
                          bf.name, head.at, blk, type(e).__name__, e)
