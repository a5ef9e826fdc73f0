"""Visible bigfiles: their head, and moving it.

A `BigFile` exists once a client made `bigfile/<oid>/`. Its `head` is an
immutable `Snapshot` replaced as a whole when the head moves, so a read
takes one snapshot and serves every block of the request as of one revision.
Its other jobs have modules of their own: its channels and their protocol
(subscribers.py), δR over its history (deltas.py), reads (reads.py), its
`@<tid>/` directories (revdir.py).

Moving the head (SPEC 4.3, DESIGN "Moving a head"): the watcher thread hands
the file each transaction (`on_transaction`); what changed is folded into one
pending step, so that a file whose update waits for acks holds one step, not
one per transaction (the δ history still gets each transaction). A step is
applied inline on the watcher thread when no channel is subscribed, else by
a mover thread of the file (`Subscribers.update` waits for acks), so that
the watcher never waits for clients. Applying a step: the update's haves
and acks, then `head` (reads serve the new data), then the kernel drops
exactly the changed ranges, then `at` (what head/at shows). Never the other
way round: a read between dropping and switching would put the old data
back in the page cache for good. While a step is being applied (`moving`),
a `want` is answered `have <Sat> wait`, and answered for real once the step
is done.

A file whose step fails for any reason other than an unreachable database is
marked broken: its reads give EIO (logged once, with the reason), and the
other files go on (DESIGN "Failures stay where they happen").

Locks (the order of every lock of wcfs is locks.ORDER): `BigFile.cond`
guards head, at, pending, moving, the δ history and `since` (deltas.py),
and the channels and their protocol states (subscribers.py). It is never
held across database I/O, /proc reads or kernel notifications.
"""

import collections
import logging
import threading

from .. import locks
from ..follow.delta import compare_revisions
from ..ranges import merge_ranges, whole
from ..zodb import zformat
from ..zodb.revisions import ObjectRevisions
from ..zodb.zstorage import DatabaseUnavailable
from .deltas import FileDeltas
from .revdir import RevDirs
from .subscribers import Subscribers

log = logging.getLogger('wcfs.bigfile')

MAX_REVDIRS = 10000     # @<tid>/ directories over all files, shared per uid (quota.py); beyond: ENOSPC


class Snapshot(collections.namedtuple('Snapshot', 'oid at blksize blktab size broken')):
    """A file as of revision `at`; `broken` is why it cannot be read, or None."""


def snapshot_of(zh, size):
    """The Snapshot of a ZBigFileState whose file has `size` bytes."""
    return Snapshot(zh.oid, zh.at, zh.blksize, zh.blktab, size, None)


class BigFile:
    """One ZBigFile made visible under `bigfile/<oid>/`.

    `head` is what data reads serve; `at`, what head/at shows, follows it
    once the kernel has dropped the changed ranges, so that a client that
    sees the new head/at never reads stale cached pages.
    """

    def __init__(self, oid, index, reads, kcache, kill, stats, shutdown, waiting, applied):
        """`reads`: its FileReads; what every file shares: `kcache`
        (kcache.KernelCache), `kill` (subscription.KillPolicy), `stats`, the
        server's `shutdown` Event, `waiting` (table.WaitingFiles), and
        `applied` (-> the last tid the watcher applied)."""
        self.oid = oid
        self.loader = index.loader
        self.kcache = kcache
        self.applied = applied
        self.index = index              # owned by the watcher thread
        self.head = snapshot_of(index.head, index.size)
        self.at = self.head.at          # what head/at shows
        self.latest = self.head    # as of the index: head once the pending step is applied
        self.revisions = ObjectRevisions(self.loader, oid)
        self.revisions.add_current(index.head.serial)
        self.cond = locks.condition('BigFile.cond')
        self.pending = None             # (Snapshot, ranges): the step not applied yet
        self.moving = False             # a step is being applied (a thread owns it)
        self.mover = None               # the last mover thread started (watcher thread; joined at shutdown)
        self.revdirs = RevDirs()
        self.reads = reads
        self.deltas = FileDeltas(self, self.head.at, applied, shutdown)
        self.subscribers = Subscribers(self, kill, stats, shutdown, waiting, applied)

    @property
    def name(self):
        return '%016x' % self.oid

    # ---- following the database (watcher thread) ----

    def on_transaction(self, tid, oids, hits=(), since=None):
        """Transaction `tid` modified `oids` (None: unknown, compare all);
        `hits`: the blocks whose ZBlk is in `oids`; `since`: the tid before
        it when it may stand for several transactions (folded).

        DatabaseUnavailable propagates (the watcher retries the step); any
        other failure marks the file broken."""
        old = self.latest
        try:
            new, ranges = self._step(old, tid, oids, hits)
        except DatabaseUnavailable:
            raise
        except Exception as e:
            reason = '%s: %s' % (type(e).__name__, e) if str(e) else type(e).__name__
            new, ranges = self._broken(old, tid, reason), whole(old.size)
        self.latest = new
        self._push_step(new, ranges, tid, since)

    def _step(self, old, tid, oids, hits):
        if old.broken:
            if oids is not None and self.oid not in oids:
                return old._replace(at=tid), []
            self.index.update(tid, {self.oid})      # the ZBigFile changed: try again
            ranges = whole(max(old.size, self.index.size))
        elif oids is None:                          # invalidations were lost: compare
            ranges = compare_revisions(self.loader, self.oid, old.at, tid)
            self.index.update(tid, {self.oid})
        else:
            ranges = self.index.update(tid, oids, hits)
        if self.index.head.serial is not None:
            self.revisions.add_current(self.index.head.serial)
        return snapshot_of(self.index.head, self.index.size), ranges

    def _broken(self, old, tid, reason):
        log.error('bigfile/%s @%016x: cannot serve it any more: %s', self.name, tid, reason)
        return old._replace(at=tid, broken=reason)

    def check_gone(self, zhead):
        """After a pack: is the ZBigFile still in the database? (watcher thread)"""
        self.revisions.forget()
        old = self.latest
        if old.broken:
            return
        try:
            self.loader.record(self.oid, zhead, fresh=True)
        except zformat.ObjectMissing as e:
            self.latest = self._broken(old, old.at, 'packed away: %s' % e)
            self._push_step(self.latest, whole(old.size), None)

    def _push_step(self, new, ranges, tid, since=None):
        with self.cond:
            if tid is not None:
                self.deltas.append(tid, ranges, since)
            if self.pending is not None:
                ranges = merge_ranges(self.pending[1] + ranges)
            self.pending = (new, ranges)
            if self.moving:
                return                  # its thread picks the step up
            # head/at showed the last transaction applied: never back from there
            self.at = max(self.at, self.applied())
            self.moving = True
            inline = not any(self.subscribers.subscribed())
        if inline:
            self._apply_steps()
        else:
            self.mover = threading.Thread(target=self._mover, daemon=True, name='mover-' + self.name)
            self.mover.start()

    def shown_at(self):
        """What head/at shows: an idle file is as of every transaction the
        watcher applied (those it was not handed did not touch it)."""
        applied = self.applied()        # first: see DESIGN "Moving a head"
        at = self.at
        if self.pending is None and not self.moving:
            return max(at, applied)
        return at

    def _mover(self):
        try:
            self._apply_steps()
        except Exception:
            # a bug: log it, and let the next transaction try again rather
            # than leave the file's head frozen for good
            log.exception('bigfile/%s: moving the head failed', self.name)
            with self.cond:
                self.moving = False
                self.cond.notify_all()

    def _apply_steps(self):
        """Apply pending steps until there is none (the thread owning `moving`)."""
        while True:
            with self.cond:
                if self.pending is None:
                    self.moving = False
                    self.cond.notify_all()
                    break
                target, ranges = self.pending
                self.pending = None
                waitset = self.subscribers.subscribed() if ranges else []
            if waitset:
                self.subscribers.update(target, waitset)
            with self.cond:
                self.head = target
            if ranges:
                self.kcache.invalidate_data('bigfile/%s/head/data' % self.name, ranges)
            with self.cond:
                self.at = target.at
            # between steps no update waits: wants that waited are answered
            # now, not once the database stops changing the file
            self.subscribers.answer_waiting(mover=True)
        self.subscribers.answer_waiting()

