"""`bigfile/<oid>/@<tid>/` directories of one file: the file as of <tid>.

A revdir never changes; it lives while something in it is open, and for the
revdir timeout after its last use (Server's timer expires it).
"""

import time

from .. import locks


class RevDir:
    """`bigfile/<oid>/@<tid>/`: the file as of <tid>, never changing."""

    def __init__(self, tid, head, uid=None):
        self.tid = tid
        self.head = head
        self.uid = uid                  # who made it (its slot of the revdir bound)
        self.opens = 0                  # guarded by RevDirs.lock
        self.last_used = time.monotonic()

    @property
    def name(self):
        return '@%016x' % self.tid


class RevDirs:
    """The revdirs of one file; `lock` guards the table and their counts."""

    def __init__(self):
        self.lock = locks.lock('RevDirs.lock')
        self._dirs = {}                 # tid -> RevDir

    def get(self, tid):
        with self.lock:
            return self._dirs.get(tid)

    def add(self, tid, head, uid=None):
        """-> the new RevDir, or None if it exists already."""
        with self.lock:
            if tid in self._dirs:
                return None
            rd = self._dirs[tid] = RevDir(tid, head, uid)
            return rd

    def names(self):
        with self.lock:
            return [rd.name for _, rd in sorted(self._dirs.items())]

    def acquire(self, rd):
        """Count an open of something in `rd`; -> False, counting nothing,
        when `rd` was removed since the open found it (the path is gone)."""
        with self.lock:
            if self._dirs.get(rd.tid) is not rd:
                return False
            rd.opens += 1
            rd.last_used = time.monotonic()
            return True

    def release(self, rd):
        """Count a release of something in `rd` that acquire() counted."""
        with self.lock:
            rd.opens -= 1
            rd.last_used = time.monotonic()

    def expire(self, timeout):
        """Remove the revdirs unused for `timeout` seconds; -> them."""
        now = time.monotonic()
        with self.lock:
            old = [rd for rd in self._dirs.values()
                   if rd.opens == 0 and now - rd.last_used >= timeout]
            for rd in old:
                del self._dirs[rd.tid]
        return old
