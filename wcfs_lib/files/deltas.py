"""δR(A, B) of one visible file, for its updates and its answers to `want`:
from the δ history while it covers A; for an older A from the file's index
and the database's list of changed objects (kept per A: `since`), or else by
comparing the file's trees as of A and B (follow/delta.py).

`history` and `since` are guarded by the file's BigFile.cond, which the
caller passes in; no lock is held across the database I/O done here.
"""

import logging
import time

from ..follow.delta import DeltaHistory, compare_revisions
from ..ranges import merge_ranges, whole
from ..zodb.zstorage import RETRY_PAUSE, Cancelled, DatabaseUnavailable

log = logging.getLogger('wcfs.bigfile')

INDEX_TRIES = 3         # δR from the index computed again when it moved meanwhile
MAX_SINCE = 1024        # δR(Cat, z) kept per file for Cats older than its history


class FileDeltas:
    def __init__(self, bf, at, applied, shutdown):
        self.oid = bf.oid
        self.name = bf.name
        self.loader = bf.loader
        self.index = bf.index
        self.applied = applied          # -> the last tid the watcher applied
        self.shutdown = shutdown        # the server's Event
        self.cond = bf.cond
        self._largest = lambda: max(bf.head.size, bf.latest.size)  # the whole file, at most
        self.history = DeltaHistory(at)
        self.since = {}                 # Cat older than the history -> (z, δR(Cat, z)), oldest z

    # cond held

    def covers(self, a):
        return self.history.covers(a)

    def ranges(self, a, b):
        return self.history.ranges(a, b)

    def append(self, tid, ranges, since=None):
        self.history.append(tid, ranges, since)

    # no lock held

    def delta(self, a, b, cancelled=None):
        """δR(a, b) with a <= b <= zhead; no lock held (may load from the
        database). Cancelled once cancelled() is true."""
        with self.cond:
            if self.history.covers(a):
                return self.history.ranges(a, b)
        try:
            return self._from_database(a, b, cancelled)
        except (DatabaseUnavailable, Cancelled):
            raise
        except Exception as e:
            log.warning('bigfile/%s: δR(%016x, %016x): %s; reporting the whole file',
                        self.name, a, b, e)
            return whole(self._largest())

    def from_index(self, a, cancelled=None, before=None):
        """-> (z, δR(a, z)): kept from an earlier call, or for z the
        revision of the file's index: the oids that changed in (a, z],
        looked up in the index (exact, and the cost follows the
        transactions); None where the database cannot list them, the index
        kept moving meanwhile, or it is past `before`."""
        with self.cond:
            known = self.since.get(a)
        if known is not None and (before is None or known[0] <= before):
            return known
        for _ in range(INDEX_TRIES):
            applied = self.applied()        # first: the index has every transaction up to it
            at = self.index.at
            if a > at or (before is not None and at > before):
                return None
            # transactions in (at, applied] did not touch the file
            changed = self.loader.records.changed_oids(a, at, upto=applied, cancelled=cancelled)
            if changed is None:
                return None
            moved_at, ranges = self.index.delta_since(a, frozenset(changed))
            if moved_at == at:
                with self.cond:
                    self._keep_since(a, at, ranges)
                return at, ranges
        return None

    def _keep_since(self, a, z, ranges):
        """Keep δR(a, z) unless one of an older z is kept. cond held."""
        known = self.since.get(a)
        if known is None or z < known[0]:
            if known is None and len(self.since) >= MAX_SINCE:
                del self.since[next(iter(self.since))]
            self.since[a] = (z, ranges)

    def _from_database(self, a, b, cancelled=None):
        """δR(a, b) for `a` older than the history: δR(a, z) for some z <= b
        (from_index) and the history from z to b; else, or where the
        storage cannot list transactions, the trees as of a and b are
        compared."""
        found = self.from_index(a, cancelled, before=b)
        if found is not None:
            z, ranges = found
            with self.cond:
                if self.history.covers(z):
                    return merge_ranges(ranges + self.history.ranges(z, b))
        return compare_revisions(self.loader, self.oid, a, b)

    def retrying(self, a, b, cancelled=None):
        """δR(a, b) for an update, which cannot go on without it: while the
        database is away, ask again (the update then takes the database's
        time, SPEC 4.4). Nothing once cancelled() is true (the channel it
        was for is gone)."""
        while True:
            try:
                return self.delta(a, b, cancelled)
            except Cancelled:
                return []
            except DatabaseUnavailable as e:
                if self.shutdown.is_set():
                    return whole(self._largest())
                log.warning('bigfile/%s: update waits for the database: %s', self.name, e)
                time.sleep(RETRY_PAUSE)

    def or_none(self, a, b, cancelled=None):
        try:
            return self.delta(a, b, cancelled)
        except DatabaseUnavailable:
            return None
