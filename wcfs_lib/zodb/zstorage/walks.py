"""Walks of a database's history: the oids each transaction changed, walked
once, kept, and shared by every request that needs them.

A `want` of a Cat older than its file's δ history needs the oids that the
transactions in (Cat, head] changed; so does a resync. Where the database
lists them in one round trip (PostgreSQL; a ZEO server for the
transactions it keeps), that is asked each time. Otherwise its history is
walked (ZEO's iterator: every record of those transactions travels to
wcfs, and every load of wcfs waits behind the walk's calls on the one
connection). A client may ask for that as often as it writes `want`
(issue 15: 32 old-Cat wants walked the same history 32 times, one after
another). So, per database:

- One walk at a time, of what the requests waiting then asked and nobody
  walked yet. A request that a walk in progress covers waits for it;
  others wait for the next walk, which covers them all.
- What was walked is kept: for each transaction of some ranges (a, b], the
  oids it changed, at most MAX_BYTES (8 bytes an oid, 16 a transaction;
  the oldest transactions forgotten first). A request within a kept range
  walks nothing; one that reaches past it walks only what is missing.
- A walk goes on while some request waiting for it is not cancelled (its
  channel dropped or closed): once none is, it stops at its next call to
  the database, and its requests get `Cancelled`.

Two walks at once (issue 15, item 6) would be safe on ZEO (zeo.py says why,
and tests/test_old_cat_walks.py walks two at once beside loads). They are
not run anyway: the server answers one connection's calls in order, so two
walks only queue behind each other, every load waits behind both, and where
their ranges overlap the same records would travel twice.

Locks: `Walks.lock` guards the kept ranges, the requests waiting and the
walk in progress; it is taken alone (a request's `cancelled()` reads flags
and takes no lock), and never held across the walk.
"""

import array
import bisect
import threading

from ... import locks

MAX_BYTES = 16 << 20    # kept oids and tids of walked transactions, at most
POLL = 0.1              # seconds between checks that a waiting request is still wanted


class Cancelled(Exception):
    """Nobody waits for this request, or for the walk it waited for."""


def _never():
    return False


class Request:
    """The oids changed in (a, b], for a caller that may stop waiting."""

    __slots__ = ('a', 'b', 'cancelled', 'done', 'oids', 'error')

    def __init__(self, a, b, cancelled):
        self.a, self.b = a, b
        self.cancelled = cancelled or _never
        self.done = False
        self.oids = None        # the answer; None: the database cannot list them
        self.error = None       # what the walk for it raised


class Span:
    """The oids of each transaction in (lo, hi], oldest first: tids[i]
    changed oids[ends[i-1]:ends[i]] (from 0 for the first)."""

    __slots__ = ('lo', 'hi', 'tids', 'ends', 'oids')

    def __init__(self, lo, hi, txns=None):
        self.lo, self.hi = lo, hi
        self.tids, self.ends, self.oids = array.array('Q'), array.array('Q'), array.array('Q')
        for tid in sorted(txns or ()):
            self.tids.append(tid)
            self.oids.extend(sorted(txns[tid]))
            self.ends.append(len(self.oids))

    def nbytes(self):
        return 8 * len(self.oids) + 16 * len(self.tids)

    def changed(self, a, b):
        """The oids changed in (a, b], within (lo, hi]."""
        i = bisect.bisect_right(self.tids, a)
        j = bisect.bisect_right(self.tids, b)
        start = self.ends[i - 1] if i else 0
        stop = self.ends[j - 1] if j else 0
        return set(self.oids[start:stop])

    def extend(self, later):
        """Append the span that starts where this one ends."""
        base = len(self.oids)
        self.tids.extend(later.tids)
        self.ends.extend(end + base for end in later.ends)
        self.oids.extend(later.oids)
        self.hi = later.hi

    def forget_before(self, n):
        """Forget the first n transactions."""
        cut = self.ends[n - 1]
        self.lo = self.tids[n - 1]
        self.tids = self.tids[n:]
        self.ends = array.array('Q', (end - cut for end in self.ends[n:]))
        self.oids = self.oids[cut:]


class Kept:
    """Walked transactions: disjoint spans, oldest first, at most max_bytes."""

    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self.spans = []

    def changed(self, a, b):
        """The oids changed in (a, b], or None where that is not all kept."""
        for span in self.spans:
            if span.lo <= a and b <= span.hi:
                return span.changed(a, b)
        return None

    def missing(self, ranges):
        """The parts of `ranges` [(a, b)] not kept, merged, oldest first."""
        gaps = []
        for a, b in ranges:
            for span in self.spans:
                if span.hi <= a or b <= span.lo:
                    continue
                if a < span.lo:
                    gaps.append((a, span.lo))
                a = max(a, span.hi)
            if a < b:
                gaps.append((a, b))
        out = []
        for a, b in sorted(gaps):
            if out and out[-1][1] >= a:
                out[-1] = (out[-1][0], max(out[-1][1], b))
            else:
                out.append((a, b))
        return out

    def add(self, span):
        """Keep `span` (disjoint from those kept), joined to its neighbours."""
        spans = sorted(self.spans + [span], key=lambda s: s.lo)
        joined = [spans[0]]
        for s in spans[1:]:
            if joined[-1].hi == s.lo:
                joined[-1].extend(s)
            else:
                joined.append(s)
        self.spans = joined

    def trim(self):
        """Forget the oldest transactions past max_bytes."""
        over = sum(s.nbytes() for s in self.spans) - self.max_bytes
        while over > 0 and self.spans:
            span = self.spans[0]
            if span.nbytes() <= over or len(span.tids) <= 1:
                over -= span.nbytes()
                del self.spans[0]
                continue
            n = 0
            while over > 0 and n < len(span.tids) - 1:
                n += 1
                over -= 16 + 8 * (span.ends[n - 1] - (span.ends[n - 2] if n > 1 else 0))
            span.forget_before(n)


class Walks:
    """The oids changed in any range of transactions of one database, from
    walks of its history: `walk(a, b, keep_going)` -> {tid: oids} of every
    transaction in (a, b], or None where the database cannot list them; it
    calls keep_going() between its calls to the database and raises
    Cancelled when that says no."""

    def __init__(self, walk, max_bytes=MAX_BYTES):
        self._walk = walk
        self.lock = locks.lock('Walks.lock')
        self._ended = threading.Condition(self.lock)    # a walk ended
        self._kept = Kept(max_bytes)
        self._waiting = []          # Requests not answered yet
        self._walking = False       # a thread walks, with the lock released
        self.walks = 0              # walks of a range of transactions, ever
        self.walked = 0             # transactions they listed

    def changed_oids(self, a, b, cancelled=None):
        """-> the oids the transactions in (a, b] changed, or None where the
        database cannot list them. Cancelled once cancelled() is true: the
        caller no longer needs them. Raises what the walk for it raised."""
        if b <= a:
            return set()
        with self.lock:
            oids = self._kept.changed(a, b)
            if oids is not None:
                return oids
            req = Request(a, b, cancelled)
            self._waiting.append(req)
            try:
                while not req.done:
                    if req.cancelled():
                        raise Cancelled('transactions (%016x, %016x]: nobody waits' % (a, b))
                    if self._walking:
                        self._ended.wait(POLL)
                    else:
                        self._walk_for_waiting()
            finally:
                if req in self._waiting:
                    self._waiting.remove(req)
        if req.error is not None:
            raise req.error
        return req.oids

    def _walk_for_waiting(self):
        """Walk what the waiting requests need and nobody walked; answer
        every request that this covers. Lock held; released while walking."""
        asked = [(r.a, r.b) for r in self._waiting]
        pieces = self._kept.missing(asked)
        self._walking = True
        found, error = [], None
        self.lock.release()
        try:
            for a, b in pieces:
                txns = self._walk(a, b, self._wanted)
                if txns is None:
                    found = None
                    break
                found.append(Span(a, b, txns))
        except Exception as e:
            error = e
        finally:
            self.lock.acquire()
            self._walking = False
            self._ended.notify_all()
        if found is not None:
            self.walks += len(found)
            self.walked += sum(len(s.tids) for s in found)
            for span in found:          # whole pieces, even if a later one failed
                self._kept.add(span)
        for req in self._waiting:
            if (req.a, req.b) in asked and (error is not None or found is None):
                req.done, req.error = True, error
            elif found is not None:
                req.oids = self._kept.changed(req.a, req.b)
                req.done = req.oids is not None
        self._kept.trim()

    def _wanted(self):
        """Does a request not cancelled still wait? (the walking thread)"""
        with self.lock:
            return any(not r.cancelled() for r in self._waiting)

    def kept_bytes(self):
        with self.lock:
            return sum(s.nbytes() for s in self._kept.spans)
