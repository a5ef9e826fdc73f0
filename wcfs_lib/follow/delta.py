"""δR(A, B): the byte ranges of a file that changed between revisions A and B.

δR holds every block whose content differs between A and B and no block that
no transaction in (A, B] touched (SPEC 4.2). Two ways to get it:

- `DeltaHistory`: the δ of every transaction since the file became visible,
  as the watcher computed it; δR is the union over (A, B]. Bounded: the
  oldest steps are forgotten, and `since` moves forward with them. A step
  that folds several transactions (the database told them as one) is their
  net δ: a block changed and changed back, a file grown and shrunk again,
  is not in it, though it differs between a state inside the fold and the
  end of it. So no tid strictly inside a folded step is covered: δR from
  there is computed from the database.
- `compare_revisions`: for A older than the history, compare the file's
  trees as of A and as of B: the block → ZBlk mapping, then for blocks that
  kept their ZBlk the serials of the ZBlk and of its chunks.

Ranges are half-open, block aligned, sorted and merged.
"""

import bisect
import collections

from ..ranges import blocks_to_ranges, merge_ranges, resized_range, whole
from ..zodb import zformat

MAX_STEPS = 100000


class DeltaHistory:
    """The δ of each transaction of one file after `since`, oldest first."""

    def __init__(self, since, max_steps=MAX_STEPS):
        self.since = since
        self._steps = collections.deque()   # (tid, [(start, stop)...]), non-empty only
        self._folds = collections.deque()   # (hi, lo): the step of hi folded (lo, hi]; by hi
        self._max = max_steps

    def append(self, tid, ranges, since=None):
        """The step of `tid`; `since`: the tid before it, when the step may
        fold several transactions (even with no ranges: their net δ)."""
        if since is not None and since < tid:
            self._folds.append((tid, since))
        if ranges:
            self._steps.append((tid, ranges))
        while len(self._steps) > self._max:
            self.since = self._steps.popleft()[0]
        while len(self._folds) > self._max:
            self.since = max(self.since, self._folds.popleft()[0])
        while self._folds and self._folds[0][0] <= self.since:
            self._folds.popleft()

    def covers(self, a):
        if a < self.since:
            return False
        i = bisect.bisect_right(self._folds, a, key=lambda fold: fold[0])
        return i == len(self._folds) or self._folds[i][1] >= a

    def ranges(self, a, b):
        """δR(a, b) for a and b covered, a <= b."""
        return merge_ranges(r for tid, ranges in self._steps if a < tid <= b for r in ranges)


def compare_revisions(loader, oid, a, b):
    """δR(a, b) of the ZBigFile `oid`, from the database alone."""
    ha = loader.zbigfile(oid, a)
    hb = loader.zbigfile(oid, b)
    size_a, size_b = loader.size(ha), loader.size(hb)
    if ha.serial != hb.serial:          # the ZBigFile object itself changed
        return whole(max(size_a, size_b))
    map_a = _mapping(loader, ha)
    map_b = _mapping(loader, hb)
    changed = set()
    for blk in map_a.keys() | map_b.keys():
        za, zb = map_a.get(blk), map_b.get(blk)
        if za != zb or (za is not None and _touched(loader, za, a, b, hb.blksize)):
            changed.add(blk)
    return merge_ranges(blocks_to_ranges(changed, hb.blksize) + resized_range(size_a, size_b))


def _mapping(loader, head):
    return dict(loader.walk(head.blktab, head.at))


def _touched(loader, zblk, a, b, blksize):
    """Did a transaction in (a, b] modify the ZBlk `zblk` or its chunks?

    An object was modified in (a, b] exactly when its record as of b was
    written after a: one load per object, as of b only.
    """
    klass, state, serial = loader.decode(zblk, b, blksize=blksize)
    if serial > a:
        return True
    if klass != zformat.ZBLK1 or not isinstance(state, zformat.Ref):
        return False
    chunktab = state.oid
    touched = []

    def visit(oid, _node):
        touched.append(loader.record(oid, b)[1] > a)

    for _off, zdata in loader.walk(chunktab, b, zformat.IOBTREE, visit=visit):
        touched.append(loader.record(zdata, b)[1] > a)
    return any(touched)
