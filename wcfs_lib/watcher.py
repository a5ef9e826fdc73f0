"""Following the database: zhead, and which blocks of each file changed.

The storage tells us, for every committed transaction, its tid and the oids it
modified: ZEO calls `invalidate(tid, oids)` on its I/O thread, where we only
queue and wake the watcher thread (loading there would deadlock ZEO).

The watcher thread applies transactions in order. For each visible bigfile it
asks the file's `FileIndex` for δ: the blocks that transaction changed. The
index knows what the file is made of as of zhead: the ZBigFile object, every
node of `blktab`, the block → ZBlk mapping, and the chunk trees and ZData of
ZBlk1 blocks that were read. From the changed oids:

- the ZBigFile object itself changed: the whole file changed;
- a node of `blktab` changed: walk `blktab` again, reusing every node the
  transaction did not modify (its state is the same as before), and compare
  block → ZBlk mappings, never nodes: moving entries between buckets changes
  nothing;
- a ZBlk, or a part of a ZBlk1 it was read from, changed: that block changed.

A transaction that modifies no part of a file gives an empty δ. Several
transactions may be folded into one `invalidate` (ZEO does so after a
reconnection): the same rules hold for the union of their oids.
"""

import collections
import logging
import threading
import time

from ZODB.utils import u64

from . import zformat
from .delta import resized_blocks

log = logging.getLogger('wcfs.watcher')

ALL = 'all'
RETRY_PAUSE = 0.5   # seconds between tries of a step while the database is unreachable     # δ of a change to the ZBigFile object: every block


class FileIndex:
    """What one ZBigFile is made of as of `at`, to turn oids into blocks.

    Owned by the watcher thread; `note_parts` may be called by readers and
    takes `parts_lock`.
    """

    def __init__(self, loader, oid, at):
        self.loader = loader
        self.oid = oid
        self.parts_lock = threading.Lock()      # guards parts, blk_parts
        self._load(at)

    def _load(self, at, reuse=None, changed=frozenset()):
        head = self.loader.zbigfile(self.oid, at)
        nodes = {}

        def visit(oid, node):
            nodes[oid] = node

        blocks = {}
        for blk, ref in self._walk(head.blktab, at, reuse or {}, changed, visit, set()):
            blocks[blk] = zformat._ref_oid(ref, head.blktab, at)
        if blocks:
            zformat.file_size(min(blocks), head)
            zformat.file_size(max(blocks), head)
        self.head = head                        # the index moves as a whole, or not at all
        self.nodes = nodes                      # blktab node oid -> node
        self.blocks = blocks                    # blk -> ZBlk oid
        with self.parts_lock:
            self.parts = {}                     # oid -> {blk}: ZBlk and its chunks
            self.blk_parts = {}                 # blk -> oids registered for it
            for blk, zblk in blocks.items():
                self._add_parts(blk, (zblk,))

    def _walk(self, oid, at, reuse, changed, visit, seen, depth=0):
        """Items of the BTree at `oid`; nodes not in `changed` come from `reuse`."""
        if depth > 64:
            raise zformat.FormatError(oid, at, 'BTree deeper than 64 levels')
        if oid in seen:
            raise zformat.FormatError(oid, at, 'BTree node reached twice')
        seen.add(oid)
        node = reuse.get(oid) if oid not in changed else None
        if node is None:
            node, _ = self.loader.node(oid, at)
        visit(oid, node)
        if isinstance(node, zformat.Bucket):
            yield from node.items
            return
        for child in node.children:
            if isinstance(child, zformat.Bucket):
                yield from child.items
            else:
                yield from self._walk(child.oid, at, reuse, changed, visit, seen, depth + 1)

    @property
    def at(self):
        return self.head.at

    @property
    def size(self):
        return (max(self.blocks) + 1) * self.head.blksize if self.blocks else 0

    def _add_parts(self, blk, oids):
        self.blk_parts[blk] = tuple(oids)
        for oid in oids:
            self.parts.setdefault(oid, set()).add(blk)

    def _drop_parts(self, blk):
        for oid in self.blk_parts.pop(blk, ()):
            blks = self.parts.get(oid)
            if blks is not None:
                blks.discard(blk)
                if not blks:
                    del self.parts[oid]

    def note_parts(self, blk, oids):
        """Remember that `blk` was read from `oids` (its ZBlk first)."""
        with self.parts_lock:
            if self.blocks.get(blk) != oids[0] or self.blk_parts.get(blk) == tuple(oids):
                return
            self._drop_parts(blk)
            self._add_parts(blk, oids)

    def update(self, tid, changed):
        """Move the index to `tid`; -> δ: set of changed blocks, or ALL."""
        if self.oid in changed:
            self._load(tid)
            return ALL
        delta = set()
        if not changed.isdisjoint(self.nodes):
            old = self.blocks
            self._load(tid, reuse=self.nodes, changed=changed)
            delta = {blk for blk in old.keys() | self.blocks.keys()
                     if old.get(blk) != self.blocks.get(blk)}
            delta |= resized_blocks(old, self.blocks)
        with self.parts_lock:
            for oid in changed.intersection(self.parts):
                delta |= self.parts[oid]
            for blk in delta:                   # chunks are registered again when read
                zblk = self.blocks.get(blk)
                self._drop_parts(blk)
                if zblk is not None:
                    self._add_parts(blk, (zblk,))
        self.head.at = tid
        return delta


class Watcher:
    """The thread that follows the database and moves every file's head.

    `zhead_lock` is held while a transaction is applied; take it to see the
    table of files and zhead consistently (mkdir builds a file's index under
    it). Lock order: zhead_lock > the bigfile table lock > a file's locks.
    """

    RESYNC = object()
    PACKED = object()

    def __init__(self, storage, loader, table, stats):
        self.storage = storage
        self.loader = loader
        self.table = table
        self.stats = stats
        self.zhead = u64(storage.lastTransaction())
        self.zhead_lock = threading.RLock()
        self._queue = collections.deque()
        self._queue_cond = threading.Condition()    # guards _queue, _stop
        self._zhead_cond = threading.Condition()    # notified when zhead moves
        self._stop = False
        self._thread = threading.Thread(target=self._run, name='watcher', daemon=True)

    # storage → us, on the storage's I/O thread: record and wake only.

    def invalidate(self, tid, oids):
        self._push((u64(tid), frozenset(u64(oid) for oid in oids)))

    def invalidateCache(self):
        self._push(self.RESYNC)

    def _on_info(self, info):
        # A read-only client gets `info` only when the server packed: packs
        # send no invalidations, and objects may be gone.
        self._storage_info(info)
        self._push(self.PACKED)

    def transform_record_data(self, data):
        return data

    untransform_record_data = transform_record_data

    def _push(self, item):
        with self._queue_cond:
            self._queue.append(item)
            self._queue_cond.notify()

    # the watcher thread

    def start(self):
        self.storage.registerDB(self)
        # ZEO's I/O object bound storage.info when it was made: hook there.
        zio = getattr(getattr(self.storage, '_server', None), 'client', None)
        self._storage_info = getattr(zio, 'info', None)
        if self._storage_info is not None:
            zio.info = self._on_info
        self._thread.start()

    def stop(self):
        with self._queue_cond:
            self._stop = True
            self._queue_cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self):
        while True:
            with self._queue_cond:
                while not self._queue and not self._stop:
                    self._queue_cond.wait()
                if self._stop:
                    return
                item = self._queue.popleft()
            try:
                if item is self.RESYNC:
                    self._resync()
                elif item is self.PACKED:
                    self._check_packed()
                else:
                    self._apply(*item)
            except Exception:
                log.exception('watcher: applying %r failed', item)

    def _apply(self, tid, oids):
        with self.zhead_lock:
            if tid <= self.zhead:
                return
            self.zhead = tid
            self.stats.set('zhead', '%016x' % tid)
            self._each_file(lambda bf: bf.on_transaction(tid, oids))
        with self._zhead_cond:
            self._zhead_cond.notify_all()

    def _each_file(self, step):
        """step(bf) for every visible file; a step that needs the database
        while it is unreachable is retried, never skipped: skipping would
        lose that transaction's δ for the file."""
        for bf in self.table.files():
            while True:
                try:
                    step(bf)
                    break
                except zformat.DatabaseUnavailable as e:
                    if self._stop:
                        return
                    log.warning('bigfile/%s: waiting for the database: %s', bf.name, e)
                    time.sleep(RETRY_PAUSE)

    def wait_zhead(self, tid, timeout):
        """Wait until zhead >= tid; TimeoutError after `timeout` seconds."""
        with self._zhead_cond:
            if not self._zhead_cond.wait_for(lambda: self.zhead >= tid, timeout):
                raise TimeoutError('the watcher is at %016x, behind %016x' % (self.zhead, tid))

    def _check_packed(self):
        with self.zhead_lock:
            self._each_file(lambda bf: bf.check_gone(self.zhead))

    def _resync(self):
        """After a reconnection: the storage may have lost invalidations."""
        with self.zhead_lock:
            tid = u64(self.storage.lastTransaction())
            if tid <= self.zhead:
                return
            log.info('resync after reconnection: %016x -> %016x', self.zhead, tid)
            self.zhead = tid
            self.stats.set('zhead', '%016x' % tid)
            self._each_file(lambda bf: bf.on_transaction(tid, None))
        with self._zhead_cond:
            self._zhead_cond.notify_all()
