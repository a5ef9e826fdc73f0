"""Visible bigfiles: their head, their `@<tid>/` directories, reading blocks.

A `BigFile` exists once a client made `bigfile/<oid>/`. Its `head` is an
immutable `Head` snapshot replaced as a whole when the head moves, so a read
takes one snapshot and serves every block of the request as of one revision.

Moving the head (watcher thread, `on_transaction`): compute δ with the file's
index, replace `head`, then tell the kernel to drop exactly the changed ranges
of head/data. Never the other way round: a read between dropping and
switching would put the old data back in the page cache for good.

Locks: `BigFileTable.lock` guards the table; `BigFile.revdirs_lock` guards a
file's revdirs. Order: watcher.zhead_lock > BigFileTable.lock > revdirs_lock
> BlockCache.lock. None of them is held across a kernel notification.
"""

import collections
import logging
import threading
import time

from ZODB.TimeStamp import TimeStamp
from ZODB.utils import p64

from . import zformat
from .watcher import ALL, FileIndex, blocks_to_ranges

log = logging.getLogger('wcfs.bigfile')

MAX_REVDIRS = 10000     # @<tid>/ directories over all files; mkdir beyond: ENOSPC


class Head(collections.namedtuple('Head', 'oid at blksize blktab size broken')):
    """A file as of revision `at`; `broken` is why it cannot be read, or None."""

    @property
    def mtime(self):
        return tid_time(self.at)


def tid_time(tid):
    return TimeStamp(p64(tid)).timeTime()


def head_of(index, broken=None):
    h = index.head
    return Head(index.oid, index.at, h.blksize, h.blktab, index.size, broken)


class RevDir:
    """`bigfile/<oid>/@<tid>/`: the file as of <tid>, never changing."""

    def __init__(self, head):
        self.head = head
        self.opens = 0                  # guarded by the file's revdirs_lock
        self.last_used = time.monotonic()


class BlockCache:
    """The last few decoded blocks, so that the kernel's pieces of one block
    (128 KiB .. 1 MiB requests) load it once; concurrent misses wait for the
    one load in flight."""

    def __init__(self, nblocks=16):
        self.lock = threading.Lock()    # guards _blocks, _loading
        self._blocks = collections.OrderedDict()
        self._loading = {}              # key -> Event of the load in flight
        self._max = nblocks

    def get(self, key, load):
        while True:
            with self.lock:
                data = self._blocks.get(key)
                if data is not None:
                    self._blocks.move_to_end(key)
                    return data
                inflight = self._loading.get(key)
                if inflight is None:
                    inflight = self._loading[key] = threading.Event()
                    break
            inflight.wait()
        try:
            data = load()
            with self.lock:
                self._blocks[key] = data
                while len(self._blocks) > self._max:
                    self._blocks.popitem(last=False)
            return data
        finally:
            with self.lock:
                del self._loading[key]
            inflight.set()


class BigFile:
    """One ZBigFile made visible under `bigfile/<oid>/`."""

    def __init__(self, oid, loader, zhead, ctx):
        self.oid = oid
        self.loader = loader
        self.ctx = ctx                  # Context: kcache, stats, blocks
        self.index = FileIndex(loader, oid, zhead)
        self.head = head_of(self.index)
        self.revdirs_lock = threading.Lock()
        self.revdirs = {}               # tid -> RevDir

    @property
    def name(self):
        return '%016x' % self.oid

    # moving the head (watcher thread)

    def on_transaction(self, tid, oids):
        """Apply transaction `tid` that modified `oids` (None: unknown)."""
        old = self.head
        broken = None
        try:
            if oids is None or old.broken:
                self.index._load(tid)
                delta = ALL
            else:
                delta = self.index.update(tid, oids)
            new = head_of(self.index)
        except (zformat.FormatError, zformat.ObjectMissing, zformat.NotZBigFile) as e:
            log.error('bigfile %s @%016x: cannot serve it any more: %s', self.name, tid, e)
            broken = str(e)
            delta = ALL
            new = old._replace(at=tid, broken=broken)
        if delta == ALL:
            ranges = [(0, max(old.size, new.size))] if max(old.size, new.size) else []
        else:
            ranges = blocks_to_ranges(delta, new.blksize)
        self.head = new
        if ranges:
            self.ctx.kcache.invalidate_data('bigfile/%s/head/data' % self.name, ranges)

    # reading

    def read(self, head, offset, size):
        """Bytes [offset, offset+size) of the file as of `head`."""
        if head.broken:
            raise zformat.FormatError(self.oid, head.at, head.broken)
        end = min(offset + size, head.size)
        if offset >= end:
            return b''
        bs = head.blksize
        pieces = []
        for blk in range(offset // bs, (end - 1) // bs + 1):
            data = self._block(head, blk)
            lo = max(offset - blk * bs, 0)
            hi = min(end - blk * bs, bs)
            pieces.append(data[lo:hi] if (lo, hi) != (0, bs) else data)
        stats = self.ctx.stats
        stats.add('reads')
        stats.add('bytes_read', end - offset)
        return pieces[0] if len(pieces) == 1 else b''.join(pieces)

    def _block(self, head, blk):
        return self.ctx.blocks.get((self.oid, head.at, blk), lambda: self._load_block(head, blk))

    def _load_block(self, head, blk):
        zhead = zformat.ZBigFileHead(self.oid, head.at, None, head.blksize, head.blktab)
        zblk = self.loader.lookup(zhead, blk)
        if zblk is None:
            return bytes(head.blksize)
        data, oids = self.loader.load_block(zblk, head.at, head.blksize)
        self.ctx.stats.add('blocks_loaded')
        if head.at == self.index.at:
            self.index.note_parts(blk, oids)
        return data

    # @<tid>/ directories

    def revdir(self, tid):
        with self.revdirs_lock:
            return self.revdirs.get(tid)

    def add_revdir(self, tid, head):
        with self.revdirs_lock:
            if tid in self.revdirs:
                return None
            rd = self.revdirs[tid] = RevDir(head)
            return rd

    def revdir_names(self):
        with self.revdirs_lock:
            return ['@%016x' % tid for tid in sorted(self.revdirs)]

    def use_revdir(self, rd, delta):
        """Count an open (+1) or a release (-1) of something in `rd`."""
        with self.revdirs_lock:
            rd.opens += delta
            rd.last_used = time.monotonic()

    def expire_revdirs(self, timeout):
        """Remove unused revdirs; -> names removed."""
        now = time.monotonic()
        with self.revdirs_lock:
            old = [tid for tid, rd in self.revdirs.items()
                   if rd.opens == 0 and now - rd.last_used >= timeout]
            for tid in old:
                del self.revdirs[tid]
        return ['@%016x' % tid for tid in old]


class BigFileTable:
    """oid -> BigFile; `lock` is held only to look up or change the table."""

    def __init__(self):
        self.lock = threading.Lock()
        self._files = {}

    def get(self, oid):
        with self.lock:
            return self._files.get(oid)

    def add(self, bf):
        with self.lock:
            self._files[bf.oid] = bf

    def files(self):
        with self.lock:
            return list(self._files.values())

    def count_revdirs(self):
        return sum(len(bf.revdirs) for bf in self.files())
