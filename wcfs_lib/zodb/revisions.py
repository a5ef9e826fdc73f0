"""What a ZBigFile object was at any revision, for checking `want <Cat>`.

A `want` names any tid; a client may write thousands of them in one write.
Asking the database for each would make one write cost a round trip per
line (SPEC 4.6). An object's record as of Cat is valid for a whole span of
revisions [serial, end), so the answer for every Cat in a span costs one
load, and the start of the object's history is found once by walking its
records back: the loads follow the revisions of the ZBigFile object (almost
always one or two), not the requests.
"""

import bisect

from .. import locks
from . import zformat

MAX_SPANS = 256     # revisions of one ZBigFile object remembered
MAX_WALK = 64       # records walked back to find where the object began


class ObjectRevisions:
    """Verdicts on `oid` as of any revision: None (a ZBigFile wcfs serves),
    or the reason a `want` of that revision is refused."""

    def __init__(self, loader, oid):
        self.loader = loader
        self.oid = oid
        self.lock = locks.lock('ObjectRevisions.lock')    # guards _spans, _first
        self._spans = []                # sorted (serial, end or None, verdict)
        self._first = None              # no revision of the object before this tid

    def forget(self):
        """After a pack: records may be gone."""
        with self.lock:
            self._spans = []
            self._first = None

    def add_current(self, serial):
        """The object's record of `serial` is its latest: a ZBigFile wcfs serves."""
        self._add(serial, None, None)

    def verdict(self, at):
        """-> None if wcfs can serve the object as of `at`, else why not.
        Raises zstorage.DatabaseUnavailable."""
        known, verdict = self._lookup(at)
        if known:
            return verdict
        try:
            data, serial, end = self.loader.record_span(self.oid, at)
        except zformat.ObjectMissing:
            self._find_first()
            known, verdict = self._lookup(at)
            return verdict if known else 'the file did not exist then, or its history was packed away'
        self._add(serial, end, _judge(self.oid, at, data, serial))
        return self._lookup(at)[1]

    def _lookup(self, at):
        with self.lock:
            if self._first is not None and at < self._first:
                return True, 'the file did not exist then, or its history was packed away'
            i = bisect.bisect_right(self._spans, at, key=_serial) - 1
            if i >= 0:
                serial, end, verdict = self._spans[i]
                if serial <= at and (end is None or at < end):
                    return True, verdict
        return False, None

    def _add(self, serial, end, verdict):
        with self.lock:
            if len(self._spans) >= MAX_SPANS:
                self._spans = []
                self._first = None
            if end is None:     # a newer latest record ends the one before
                self._spans = [(s, serial if e is None and s < serial else e, v)
                               for s, e, v in self._spans]
            if (serial, end, verdict) not in self._spans:
                bisect.insort(self._spans, (serial, end, verdict), key=_serial)

    def _find_first(self):
        """Walk the object's records back from the earliest one known."""
        with self.lock:
            if self._first is not None:
                return
            earliest = self._spans[0][0] if self._spans else None
        if earliest is None:
            return
        for _ in range(MAX_WALK):
            try:
                data, serial, end = self.loader.record_span(self.oid, earliest - 1)
            except zformat.ObjectMissing:
                with self.lock:
                    self._first = earliest
                return
            self._add(serial, end, _judge(self.oid, earliest - 1, data, serial))
            earliest = serial


def _serial(span):
    return span[0]


def _judge(oid, at, data, serial):
    try:
        zformat.zbigfile_of(oid, at, data, serial)
    except zformat.NotZBigFile:
        return 'the object was not a ZBigFile then'
    except zformat.FormatError as e:
        return str(e)
    return None
