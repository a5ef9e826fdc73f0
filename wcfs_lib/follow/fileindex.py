"""The δ engine of one file: which bytes a transaction changed.

A `FileIndex` knows what one ZBigFile is made of as of `at`: the ZBigFile
object, every node of `blktab` (as compact arrays: the block → ZBlk mapping
is the buckets themselves), and the chunk trees and ZData of ZBlk1 blocks
that were read. The ZBlk of every block, and every other part, is also in
the shared `OidIndex`, which tells the watcher which files a transaction
touches and, through their ZBlks, which blocks (`hits`).

From the oids a transaction modified (`update`):

- the ZBigFile object itself changed: the whole file changed, from 0 to the
  larger of the old and new sizes;
- a node of `blktab` changed: the changed nodes are diffed against their
  previous state, and the block → ZBlk entries they held before and hold now
  are compared, never the nodes: moving entries between buckets (a split, a
  merge) changes nothing; nodes the transaction did not modify are reused
  as they are, so the cost follows the changed nodes, not the file;
- a ZBlk, or a part of a ZBlk1 it was read from, changed: that block changed;
- blocks that appear or disappear as the size changes are one range, however
  many blocks that is (ZBIGFILE.md: the cost of a change is its size).

A transaction that modifies no part of the file gives no range. Several
transactions may be folded into one update: the same rules hold for the
union of their oids. The index moves as a whole, or not at all: an update
that raises leaves it as it was.

Threads: the watcher thread owns the index (load, update), or mkdir's thread
before the file is published; readers call `note_parts` and take
`parts_lock`, or `delta_since`, which reads head, blktab and size under
`state_lock`: an update moves the three (and `at`) in one step under it, so
that δR is never computed from blktab of one revision and `at` of another.
"""


import numpy as np

from .. import locks
from ..ranges import blocks_to_ranges, merge_ranges, resized_range, whole
from ..zodb import zformat

PREFETCH = 256      # records asked for at once while loading a file


class FileIndex:
    """What one ZBigFile is made of as of `at`, to turn oids into ranges."""

    def __init__(self, loader, oid, at, oidindex):
        self.loader = loader
        self.oid = oid
        self.oidindex = oidindex
        self.fid = oidindex.new_fid()
        self.parts_lock = locks.lock('FileIndex.parts_lock')      # guards parts, blk_parts
        self.parts = {}                         # ZBlk1 part oid -> {blk}
        self.blk_parts = {}                     # blk -> part oids registered for it
        self.state_lock = locks.lock('FileIndex.state_lock')      # guards head (and head.at), nodes, size: one revision
        self.head = None
        self.nodes = {}                         # blktab node oid -> Bucket or Tree
        self._load(at)

    @property
    def at(self):
        return self.head.at

    # ---- loading the whole file (mkdir, a new ZBigFile object) ----

    def _load(self, at):
        head = self.loader.zbigfile(self.oid, at)
        nodes = self._walk_all(head.blktab, at)
        buckets = [n for n in nodes.values() if isinstance(n, zformat.Bucket)]
        blks = np.concatenate([np.frombuffer(b.keys, np.int64) for b in buckets] or
                              [np.empty(0, np.int64)])
        zblks = np.concatenate([np.frombuffer(b.oids, np.uint64) for b in buckets] or
                               [np.empty(0, np.uint64)])
        size = 0
        if len(blks):
            zformat.file_size(int(blks.min()), head)
            size = zformat.file_size(int(blks.max()), head)
        # checked: now move as a whole
        if self.head is not None:
            self.forget()
        self.oidindex.add_blocks(self.fid, zblks, blks)
        self.oidindex.own(self.fid, list(nodes) + [self.oid])
        with self.state_lock:
            self.head, self.nodes, self.size = head, nodes, size

    def forget(self):
        """Take every entry of this file out of the OidIndex (a new
        ZBigFile object, or a file that could not be made visible)."""
        idx = self.oidindex
        idx.drop_file(self.fid)
        idx.disown(self.fid, list(self.nodes) + [self.oid])
        with self.parts_lock:
            idx.disown(self.fid, list(self.parts))
            self.parts, self.blk_parts = {}, {}

    def _walk_all(self, root, at):
        """Every node of the BTree at `root`, level by level, the records of
        a level asked for PREFETCH at a time (ZEO prefetch), so that loading
        a big file does not cost a round trip per node."""
        nodes = {}
        level = [root]
        for depth in range(zformat.MAX_DEPTH + 1):
            if not level:
                return nodes
            below = []
            for i, oid in enumerate(level):
                if i % PREFETCH == 0:
                    # in batches: the storage's invalidations for other
                    # files are not queued behind a whole level's records
                    self.loader.prefetch(level[i:i + PREFETCH], at)
                if oid in nodes:
                    raise zformat.FormatError(oid, at, 'BTree node reached twice')
                node, _ = self.loader.node(oid, at, uncached=True)
                nodes[oid] = node
                if isinstance(node, zformat.Tree):
                    below.extend(node.children)
            level = below
        raise zformat.FormatError(root, at, 'BTree deeper than %d levels' % zformat.MAX_DEPTH)

    # ---- following transactions ----

    def update(self, tid, changed, hits=()):
        """Move the index to `tid`, whose transactions modified the oids
        `changed`; `hits`: blocks whose ZBlk is in `changed` (OidIndex).
        -> the byte ranges that changed, merged."""
        if self.oid in changed:
            old_size = self.size
            self._load(tid)
            return whole(max(old_size, self.size))
        blocks = set(hits)
        with self.parts_lock:
            for oid in changed.intersection(self.parts):
                blocks |= self.parts[oid]
        resized = []
        nodes = None
        if not changed.isdisjoint(self.nodes):
            moved, nodes, size = self._diff(tid, changed)
            blocks |= moved
            resized = resized_range(self.size, size)
        if blocks:
            with self.parts_lock:
                for blk in blocks:              # chunks are registered again when read
                    self._drop_parts(blk)
        with self.state_lock:                   # one step, for delta_since
            if nodes is not None:
                self.nodes, self.size = nodes, size
            self.head.at = tid
        return merge_ranges(blocks_to_ranges(blocks, self.head.blksize) + resized)

    def _diff(self, tid, changed):
        """blktab as of `tid`, the OidIndex moved to it; -> (blocks whose
        entry changed, the nodes, the size): update() moves the index."""
        old_nodes = self.nodes
        nodes = self._walk_changed(tid, changed)
        before, after = {}, {}
        for oid in old_nodes.keys() - nodes.keys() | (changed & old_nodes.keys()):
            node = old_nodes[oid]
            if isinstance(node, zformat.Bucket):
                before.update(zip(node.keys, node.oids))
        new_nodes = nodes.keys() - old_nodes.keys() | (changed & nodes.keys())
        for oid in new_nodes:
            node = nodes[oid]
            if isinstance(node, zformat.Bucket):
                after.update(zip(node.keys, node.oids))
        moved = {blk for blk in before.keys() | after.keys() if before.get(blk) != after.get(blk)}
        if moved and min(moved) < 0:
            raise zformat.FormatError(self.head.blktab, tid, 'block number %d out of range'
                                      % min(moved))
        size = self._size_of(nodes, tid)
        idx = self.oidindex
        for blk in moved:
            idx.change(self.fid, blk, before.get(blk), after.get(blk))
        idx.disown(self.fid, old_nodes.keys() - nodes.keys())
        idx.own(self.fid, nodes.keys() - old_nodes.keys())
        return moved, nodes, size

    def _walk_changed(self, tid, changed):
        """The nodes of blktab as of `tid`: unchanged ones reused, changed
        and new ones loaded."""
        old_nodes = self.nodes
        nodes = {}
        stack = [(self.head.blktab, 0)]
        while stack:
            oid, depth = stack.pop()
            if depth > zformat.MAX_DEPTH:
                raise zformat.FormatError(oid, tid, 'BTree deeper than %d levels' % zformat.MAX_DEPTH)
            if oid in nodes:
                raise zformat.FormatError(oid, tid, 'BTree node reached twice')
            node = old_nodes.get(oid) if oid not in changed else None
            if node is None:
                node, _ = self.loader.node(oid, tid, uncached=True)
            nodes[oid] = node
            if isinstance(node, zformat.Tree):
                stack.extend((child, depth + 1) for child in node.children)
        return nodes

    def _size_of(self, nodes, tid):
        """File size: from the last key of the rightmost bucket."""
        node = nodes[self.head.blktab]
        while isinstance(node, zformat.Tree):
            node = nodes[node.children[-1]]
        if len(node.keys):
            return zformat.file_size(node.keys[-1], self.head)
        last = max((n.keys[-1] for n in nodes.values()
                    if isinstance(n, zformat.Bucket) and len(n.keys)), default=None)
        return 0 if last is None else zformat.file_size(last, self.head)

    # ---- δR from an older revision ----

    def delta_since(self, a, changed):
        """δR(a, at) from the oids that the transactions in (a, at] modified
        (`changed`); -> (at, ranges), `at` being the revision of the index
        it was computed against (the index may move meanwhile: the caller
        checks). Loads only the nodes of blktab that changed since `a` as of
        `a`: the cost follows the changes, not the file."""
        with self.state_lock:
            head, nodes, size, at = self.head, self.nodes, self.size, self.head.at
        if self.oid in changed:
            old = self.loader.zbigfile(self.oid, a)
            return at, whole(max(size, self.loader.size(old)))
        before, size_a = self._entries_as_of(a, head, changed, nodes)
        after = {}
        for oid in changed & nodes.keys():
            node = nodes[oid]
            if isinstance(node, zformat.Bucket):
                after.update(zip(node.keys, node.oids))
        blocks = {blk for blk in before.keys() | after.keys() if before.get(blk) != after.get(blk)}
        hits = self.oidindex.touched(changed).get(self.fid, ())
        blocks.update(blk for blk in hits if self.zblk_of(blk, nodes, head) in changed)
        with self.parts_lock:
            for oid in changed.intersection(self.parts):
                blocks |= self.parts[oid]
        return at, merge_ranges(blocks_to_ranges(blocks, head.blksize) + resized_range(size_a, size))

    def _entries_as_of(self, a, head, changed, nodes):
        """-> ({blk: ZBlk} held as of `a` by the buckets that changed since,
        the file size as of `a`). `head`, `nodes`: the ZBigFile and blktab
        as of now (one revision of the index); a node that did
        not change since `a` is the same now, and is descended into only
        when something below it changed."""
        root = head.blktab
        hot = self._ancestors(root, changed, nodes)
        entries = {}
        stack = [(root, 0, True)]
        last = None
        while stack:
            oid, depth, rightmost = stack.pop()
            if depth > zformat.MAX_DEPTH:
                raise zformat.FormatError(oid, a, 'BTree deeper than %d levels' % zformat.MAX_DEPTH)
            same = oid not in changed and oid in nodes
            if same and oid not in hot and not rightmost:
                continue
            node = nodes[oid] if same else self._node_as_of(oid, a)
            if node is None:
                continue
            if isinstance(node, zformat.Tree):
                n = len(node.children)
                stack.extend((child, depth + 1, rightmost and i == n - 1)
                             for i, child in enumerate(node.children))
                continue
            if not same:
                entries.update(zip(node.keys, node.oids))
            if rightmost:
                last = node.keys[-1] if len(node.keys) else None
        size = 0 if last is None else zformat.file_size(last, head)
        return entries, size

    def _node_as_of(self, oid, a):
        try:
            return self.loader.node(oid, a)[0]
        except zformat.ObjectMissing:
            return None

    @staticmethod
    def _ancestors(root, changed, nodes):
        """The tree nodes, as of now, above a node that changed."""
        hot = set()
        stack = [(root, ())]
        while stack:
            oid, path = stack.pop()
            node = nodes.get(oid)
            if oid in changed:
                hot.update(path)
            if isinstance(node, zformat.Tree):
                stack.extend((child, path + (oid,)) for child in node.children)
        return hot

    # ---- parts of ZBlk1 blocks that were read ----

    def zblk_of(self, blk, nodes=None, head=None):
        """The ZBlk of `blk` as of `at` (None: a hole), from the index alone,
        or from `nodes` and `head` of one revision of it."""
        nodes = self.nodes if nodes is None else nodes
        head = self.head if head is None else head
        node = zformat.descend(head.blktab, blk, nodes.get, head.at)
        return None if node is None else node.get(blk)

    def _add_parts(self, blk, oids):
        self.blk_parts[blk] = tuple(oids)
        for oid in oids:
            self.parts.setdefault(oid, set()).add(blk)
        self.oidindex.own(self.fid, oids)

    def _drop_parts(self, blk):
        gone = []
        for oid in self.blk_parts.pop(blk, ()):
            blks = self.parts.get(oid)
            if blks is not None:
                blks.discard(blk)
                if not blks:
                    del self.parts[oid]
                    gone.append(oid)
        if gone:
            self.oidindex.disown(self.fid, gone)

    def note_parts(self, blk, oids):
        """Remember that `blk` was read from `oids` (its ZBlk first): a
        change of any of them changes the block. A ZBlk0 is its ZBlk alone,
        which the OidIndex knows already."""
        if len(oids) < 2:
            return
        with self.parts_lock:
            if self.zblk_of(blk) != oids[0] or self.blk_parts.get(blk) == tuple(oids[1:]):
                return
            self._drop_parts(blk)
            self._add_parts(blk, oids[1:])
