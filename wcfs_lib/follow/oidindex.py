"""Which visible files a transaction touches: oid -> (file, blocks), for all
files at once.

The watcher asks this index, not every file, so that the work of a
transaction follows the oids it changed (issue "Scale"): a transaction that
touches no visible file costs the same with 1 or 10 000 of them.

Two kinds of entries:

- the ZBlk of every block of every visible file: (zblk oid, file id, blk),
  the bulk of the index (one entry a block), kept in sorted numpy arrays
  (20 bytes an entry) with a small overlay of recent changes that is merged
  in from time to time;
- everything else a file is made of that a transaction may change: the
  ZBigFile object, the nodes of blktab, the chunk trees and ZData of ZBlk1
  blocks that were read: oid -> {file id}; the file itself knows which blocks
  they stand for.

Thread-safe: `lock` guards everything here (taken last: no lock is taken
while holding it).
"""

import collections

import numpy as np

from .. import locks

MERGE_AT = 1 << 16      # overlay entries that trigger a merge into the arrays


class OidIndex:
    def __init__(self):
        self.lock = locks.lock('OidIndex.lock')
        self._oids = np.empty(0, np.uint64)     # sorted
        self._fids = np.empty(0, np.uint32)
        self._blks = np.empty(0, np.int64)
        self._added = collections.defaultdict(list)  # zblk oid -> [(fid, blk)] not merged yet
        self._removed = collections.Counter()       # (zblk oid, fid, blk) -> count gone from the arrays
        self._overlay = 0
        self._owners = collections.defaultdict(set)  # other oid -> {fid}
        self._next_fid = 1

    def new_fid(self):
        with self.lock:
            fid = self._next_fid
            self._next_fid += 1
            return fid

    # ---- what a transaction touches ----

    def touched(self, oids):
        """-> {fid: set of blocks whose ZBlk is in `oids`} for every file
        that `oids` touch (a file touched only through other parts maps to
        an empty set)."""
        out = {}
        if not oids:
            return out
        want = np.fromiter(oids, np.uint64, len(oids))
        with self.lock:
            lo = np.searchsorted(self._oids, want, 'left')
            hi = np.searchsorted(self._oids, want, 'right')
            for i in np.nonzero(hi > lo)[0]:
                oid = int(want[i])
                for j in range(lo[i], hi[i]):
                    entry = (oid, int(self._fids[j]), int(self._blks[j]))
                    if not self._removed.get(entry):
                        out.setdefault(entry[1], set()).add(entry[2])
            if self._added:
                for oid in oids:
                    for fid, blk in self._added.get(oid, ()):
                        out.setdefault(fid, set()).add(blk)
            if self._owners:
                for oid in oids:
                    for fid in self._owners.get(oid, ()):
                        out.setdefault(fid, set())
        return out

    # ---- ZBlk entries ----

    def add_blocks(self, fid, zblks, blks):
        """Add a file's blocks in bulk: zblks[i] is the ZBlk of blks[i] (numpy arrays)."""
        zblks = np.asarray(zblks, np.uint64)
        blks = np.asarray(blks, np.int64)
        with self.lock:
            self._merge_in(zblks, np.full(len(zblks), fid, np.uint32), blks)

    def drop_file(self, fid):
        """Forget every ZBlk entry of a file (its ZBigFile object changed)."""
        with self.lock:
            self._merge()
            keep = self._fids != fid
            self._oids, self._fids, self._blks = self._oids[keep], self._fids[keep], self._blks[keep]

    def change(self, fid, blk, old, new):
        """Block `blk` of file `fid` went from ZBlk `old` to ZBlk `new` (None: a hole)."""
        with self.lock:
            if old is not None:
                pairs = self._added.get(old)
                if pairs and (fid, blk) in pairs:
                    pairs.remove((fid, blk))
                    if not pairs:
                        del self._added[old]
                else:
                    self._removed[(old, fid, blk)] += 1
                self._overlay += 1
            if new is not None:
                self._added[new].append((fid, blk))
                self._overlay += 1
            if self._overlay >= MERGE_AT:
                self._merge()

    def _merge(self):
        """Fold the overlay into the sorted arrays. lock held."""
        if not self._overlay:
            return
        if self._removed:
            keep = np.ones(len(self._oids), bool)
            for (oid, fid, blk), n in self._removed.items():
                lo = np.searchsorted(self._oids, np.uint64(oid), 'left')
                hi = np.searchsorted(self._oids, np.uint64(oid), 'right')
                for j in range(lo, hi):
                    if n and keep[j] and self._fids[j] == fid and self._blks[j] == blk:
                        keep[j] = False
                        n -= 1
            self._oids, self._fids, self._blks = self._oids[keep], self._fids[keep], self._blks[keep]
            self._removed.clear()
        added = [(oid, fid, blk) for oid, pairs in self._added.items() for fid, blk in pairs]
        self._added.clear()
        self._overlay = 0
        if added:
            oids, fids, blks = zip(*added)
            self._merge_in(np.array(oids, np.uint64), np.array(fids, np.uint32),
                           np.array(blks, np.int64))

    def _merge_in(self, oids, fids, blks):
        oids = np.concatenate((self._oids, oids))
        order = np.argsort(oids, kind='stable')
        self._oids = oids[order]
        self._fids = np.concatenate((self._fids, fids))[order]
        self._blks = np.concatenate((self._blks, blks))[order]

    # ---- other parts ----

    def own(self, fid, oids):
        with self.lock:
            for oid in oids:
                self._owners[oid].add(fid)

    def disown(self, fid, oids):
        with self.lock:
            for oid in oids:
                fids = self._owners.get(oid)
                if fids is not None:
                    fids.discard(fid)
                    if not fids:
                        del self._owners[oid]
