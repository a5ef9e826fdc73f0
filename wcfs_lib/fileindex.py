"""The δ engine of one file: which bytes a transaction changed.

A `FileIndex` knows what one ZBigFile is made of as of `at`: the ZBigFile
object, every node of `blktab`, the block → ZBlk mapping, and the chunk trees
and ZData of ZBlk1 blocks that were read. From the oids a transaction
modified (`update`):

- the ZBigFile object itself changed: the whole file changed, from 0 to the
  larger of the old and new sizes;
- a node of `blktab` changed: walk `blktab` again, reusing every node the
  transaction did not modify (its state is the same as before), and compare
  block → ZBlk mappings, never nodes: moving entries between buckets changes
  nothing;
- a ZBlk, or a part of a ZBlk1 it was read from, changed: that block changed;
- blocks that appear or disappear as the size changes are one range, however
  many blocks that is (ZBIGFILE.md: the cost of a change is its size).

A transaction that modifies no part of the file gives no range. Several
transactions may be folded into one update: the same rules hold for the
union of their oids. The index moves as a whole, or not at all: an update
that raises leaves it as it was.

Threads: the watcher thread owns the index (load, update); readers call
`note_parts` and take `parts_lock`.
"""

import threading

from . import zformat
from .delta import blocks_to_ranges, merge_ranges, resized_range

MAX_DEPTH = 64      # deeper BTrees are refused as malformed


class FileIndex:
    """What one ZBigFile is made of as of `at`, to turn oids into ranges."""

    def __init__(self, loader, oid, at):
        self.loader = loader
        self.oid = oid
        self.parts_lock = threading.Lock()      # guards parts, blk_parts
        self._load(at)

    def _load(self, at, reuse=None, changed=frozenset()):
        head = self.loader.zbigfile(self.oid, at)
        nodes = {}
        blocks = {}
        for blk, ref in self._walk(head.blktab, at, reuse or {}, changed, nodes, set()):
            blocks[blk] = zformat._ref_oid(ref, head.blktab, at)
        size = 0
        if blocks:
            zformat.file_size(min(blocks), head)
            size = zformat.file_size(max(blocks), head)
        self.head = head                        # the index moves as a whole, or not at all
        self.nodes = nodes                      # blktab node oid -> node
        self.blocks = blocks                    # blk -> ZBlk oid
        self.size = size
        with self.parts_lock:
            # Walked again after a blktab change: a block that kept its ZBlk keeps
            # the chunks it was read from (its pages may stay in the kernel's cache).
            kept = self.blk_parts if reuse is not None else {}
            self.parts = {}                     # oid -> {blk}: ZBlk and its chunks
            self.blk_parts = {}                 # blk -> oids registered for it
            for blk, zblk in blocks.items():
                oids = kept.get(blk, ())
                self._add_parts(blk, oids if oids[:1] == (zblk,) else (zblk,))

    def _walk(self, oid, at, reuse, changed, nodes, seen, depth=0):
        """Items of the BTree at `oid`; nodes not in `changed` come from `reuse`."""
        if depth > MAX_DEPTH:
            raise zformat.FormatError(oid, at, 'BTree deeper than %d levels' % MAX_DEPTH)
        if oid in seen:
            raise zformat.FormatError(oid, at, 'BTree node reached twice')
        seen.add(oid)
        node = reuse.get(oid) if oid not in changed else None
        if node is None:
            node, _ = self.loader.node(oid, at)
        nodes[oid] = node
        if isinstance(node, zformat.Bucket):
            yield from node.items
            return
        for child in node.children:
            if isinstance(child, zformat.Bucket):
                yield from child.items
            else:
                yield from self._walk(child.oid, at, reuse, changed, nodes, seen, depth + 1)

    @property
    def at(self):
        return self.head.at

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
        """Move the index to `tid`, whose transactions modified the oids
        `changed`; -> the byte ranges that changed, merged."""
        if self.oid in changed:
            old_size = self.size
            self._load(tid)
            size = max(old_size, self.size)
            return [(0, size)] if size else []
        with self.parts_lock:                   # before a walk of blktab registers parts anew
            blocks = {blk for oid in changed.intersection(self.parts) for blk in self.parts[oid]}
        resized = []
        if not changed.isdisjoint(self.nodes):
            old, old_size = self.blocks, self.size
            self._load(tid, reuse=self.nodes, changed=changed)
            blocks |= {blk for blk in old.keys() | self.blocks.keys()
                       if old.get(blk) != self.blocks.get(blk)}
            resized = resized_range(old_size, self.size)
        with self.parts_lock:
            for blk in blocks:                  # chunks are registered again when read
                zblk = self.blocks.get(blk)
                self._drop_parts(blk)
                if zblk is not None:
                    self._add_parts(blk, (zblk,))
        self.head.at = tid
        return merge_ranges(blocks_to_ranges(blocks, self.head.blksize) + resized)
