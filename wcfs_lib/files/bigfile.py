"""Visible bigfiles: their head, moving it, the protocol of their channels,
reading blocks.

A `BigFile` exists once a client made `bigfile/<oid>/`. Its `head` is an
immutable `Snapshot` replaced as a whole when the head moves, so a read
takes one snapshot and serves every block of the request as of one revision.

Moving the head (SPEC 4.3, DESIGN "Moving a head"): the watcher thread hands
the file each transaction (`on_transaction`); what changed is folded into one
pending step, so that a file whose update waits for acks holds one step, not
one per transaction. A step is applied inline on the watcher thread when no
channel is subscribed, else by a mover thread of the file (an `Update` that
waits for acks), so that the watcher never waits for clients. Applying a
step: the update's haves and acks, then `head` (reads serve the new data),
then the kernel drops exactly the changed ranges, then `at` (what head/at
shows). Never the other way round: a read between dropping and switching
would put the old data back in the page cache for good. While a step is
being applied (`moving`), a `want` is answered `have <Sat> wait`, and
answered for real once the step is done.

A `want` whose δR needs the database (a Cat older than the file's δ
history) is answered by the file's answerer thread, not by the write that
asked: the kernel takes the inode's lock for every write to the file's
channels, so a write that waited for the database would hold up every
other channel's `want` of the file (issue 15). The answerer takes the
oldest Cat first (the walk of history for it covers the others'), stops
working for a channel once it is dropped or closed, and brings an answer
computed before the head moved forward with the δ history. δR(Cat, z) of
such a Cat, once computed, is kept (`since`): with the history it gives
δR(Cat, S) for every S after z, for the answerer and for updates alike,
with no database and no comparison of trees.

A file whose step fails for any reason other than an unreachable database is
marked broken: its reads give EIO (logged once, with the reason), and the
other files go on (DESIGN "Failures stay where they happen").

Locks (the order of every lock of wcfs is locks.ORDER): `BigFile.cond`
guards head, at, pending, moving, answering, the δ history and `since`
(deltas.py), channels and their protocol states. It is never held across
database I/O, /proc reads or kernel notifications.
"""

import collections
import logging
import threading
import time


from .. import locks, protocol
from ..follow.delta import compare_revisions
from ..ranges import merge_ranges, whole
from ..zodb import zformat
from ..zodb.revisions import ObjectRevisions
from ..zodb.zstorage import Cancelled, DatabaseUnavailable
from .deltas import FileDeltas
from .reads import FileReads
from .revdir import RevDirs
from .subscription import Update

log = logging.getLogger('wcfs.bigfile')

MAX_REVDIRS = 10000     # @<tid>/ directories over all files, shared per uid (quota.py); beyond: ENOSPC
ANSWERER_POLL = 1.0     # seconds between checks for shutdown while the answerer waits for a step


class Snapshot(collections.namedtuple('Snapshot', 'oid at blksize blktab size broken')):
    """A file as of revision `at`; `broken` is why it cannot be read, or None."""


def _gone(ch):
    """A `cancelled` callable for work that only `ch` needs."""
    return lambda: ch.dropped or ch.closed


def snapshot_of(zh, size):
    """The Snapshot of a ZBigFileState whose file has `size` bytes."""
    return Snapshot(zh.oid, zh.at, zh.blksize, zh.blktab, size, None)


class BigFile:
    """One ZBigFile made visible under `bigfile/<oid>/`.

    `head` is what data reads serve; `at`, what head/at shows, follows it
    once the kernel has dropped the changed ranges, so that a client that
    sees the new head/at never reads stale cached pages.
    """

    def __init__(self, oid, index, ctx):
        self.oid = oid
        self.loader = index.loader
        self.ctx = ctx                  # Context: kcache, stats, blocks, kill policy, options
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
        self.answering = False          # the answerer thread runs
        self.channels = set()
        self.revdirs = RevDirs()
        self.reads = FileReads(oid, index, ctx)
        self.deltas = FileDeltas(self, self.head.at)

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
            self.at = max(self.at, self.ctx.applied())
            self.moving = True
            inline = not any(self._subscribed())
        if inline:
            self._apply_steps()
        else:
            self.mover = threading.Thread(target=self._mover, daemon=True, name='mover-' + self.name)
            self.mover.start()

    def shown_at(self):
        """What head/at shows: an idle file is as of every transaction the
        watcher applied (those it was not handed did not touch it)."""
        applied = self.ctx.applied()        # first: see DESIGN "Moving a head"
        at = self.at
        if self.pending is None and not self.moving:
            return max(at, applied)
        return at

    def _subscribed(self):
        """Channels subscribed now. cond held."""
        return [ch for ch in self.channels
                if ch.state.subscribed and not ch.dropped and not ch.closed]

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
                waitset = self._subscribed() if ranges else []
            if waitset:
                self._update_clients(Update(target, waitset, self.ctx.kill.kill_timeout))
            with self.cond:
                self.head = target
            if ranges:
                self.ctx.kcache.invalidate_data('bigfile/%s/head/data' % self.name, ranges)
            with self.cond:
                self.at = target.at
            # between steps no update waits: wants that waited are answered
            # now, not once the database stops changing the file
            self.answer_waiting(mover=True)
        self.answer_waiting()

    def _update_clients(self, update):
        """Send the update's haves and wait for the acks (SPEC 4.3 steps 1-2)."""
        target = update.target.at
        with self.cond:
            since = {ch: ch.state.reported for ch in update.waitset}
        update.ranges = {ch: self.deltas.retrying(reported, target)
                         for ch, reported in since.items()}
        laggards = []
        with self.cond:
            while not self.ctx.shutdown.is_set():
                needed = update.answers_needed()
                if needed:
                    self.cond.release()     # δR may need the database
                    try:
                        for ch, cat in needed:
                            update.since_cat[(ch, cat)] = self.deltas.retrying(
                                cat, target, cancelled=_gone(ch))
                    finally:
                        self.cond.acquire()
                    continue
                update.send_ready(self._send_have)
                pending = update.pending()
                if not pending:
                    break
                now = time.monotonic()
                if now < update.deadline:
                    self.cond.wait(update.deadline - now)
                    continue
                laggards = [ch for ch in pending if not ch.state.checking]
                if len(laggards) == len(pending):
                    break
                if laggards:
                    self.cond.release()
                    try:
                        self._deal_with(laggards)
                    finally:
                        self.cond.acquire()
                    laggards = []
                    continue
                self.cond.wait(ANSWERER_POLL)   # want() notifies once its check is done
        self._deal_with(laggards)

    def _deal_with(self, laggards):
        """Kill or drop the channels that held an update up past its deadline;
        no lock held (reads /proc)."""
        if not laggards:
            return
        with self.cond:
            channels = list(self.channels)
        for ch in laggards:
            self.ctx.kill.deal_with(ch, channels)
            ch.drop()

    def _send_have(self, ch, tid, ranges, update=False):
        ch.send(protocol.format_have(tid, ranges))
        if update:
            ch.state.sent_update(tid)
        else:
            ch.state.sent_have(tid)
            ch.count_subscribed()
        self.ctx.stats.add('invalidations_sent')

    def answer_waiting(self, mover=False):
        """Channels whose `want` waited for a head at or after their Cat get
        their `have`, when no update waits for acks: from the thread that
        moves the head between two steps (`mover`), or once no step is being
        applied (the watcher calls this after every transaction while some
        `want` of the file waits). Those whose δR needs the database go to
        the answerer thread."""
        with self.cond:
            if self.moving and not mover:
                return
            sat = self.shown_at()
            waiting = [(ch, ch.state.waiting) for ch in self.channels
                       if ch.state.waiting is not None and not ch.dropped and not ch.closed]
            if not waiting:
                self.ctx.waiting.discard(self)
                return
            for ch, cat in waiting:
                if cat > sat or ch.state.unacked:
                    continue
                if self.deltas.covers(cat):
                    self._send_have(ch, sat, self.deltas.ranges(cat, sat))
                else:
                    self._start_answerer()

    def _start_answerer(self):
        """cond held."""
        if not self.answering:
            self.answering = True
            threading.Thread(target=self._answerer, daemon=True,
                             name='answerer-' + self.name).start()

    def _answerer(self):
        """Answer the wants whose δR needs the database, one at a time, the
        oldest Cat first; between two steps of the head only, as the mover
        does (SPEC 4.2). `found` keeps δR(Cat, S) computed as of an S other
        than what head/at shows: the δ history brings it forward from there,
        and one past head/at waits for the head to get there."""
        found = {}                      # (channel, Cat) -> (S, δR(Cat, S) or None)
        try:
            with self.cond:
                while not self.ctx.shutdown.is_set():
                    if self.moving:
                        self.cond.wait(ANSWERER_POLL)
                        continue
                    job = self._oldest_asked()
                    if job is None:
                        # with cond still held: a want asked after this starts a new thread
                        self.answering = False
                        return
                    if job in found:
                        if self._answer_asked(*job, *found[job]):
                            del found[job]
                        else:
                            self.cond.wait(ANSWERER_POLL)
                        continue
                    sat = self.shown_at()
                    self.cond.release()
                    try:
                        found[job] = self._answer_of(*job, sat)
                    except Cancelled:
                        pass                # the channel is gone: not asked any more
                    finally:
                        self.cond.acquire()
        except Exception:
            log.exception('bigfile/%s: answering wants failed', self.name)
        with self.cond:
            self.answering = False

    def _oldest_asked(self):
        """(channel, Cat) of the oldest Cat not yet answered that is not in
        the δ history, or None. cond held."""
        sat = self.shown_at()
        asked = [(ch.state.waiting, id(ch), ch) for ch in self.channels
                 if ch.state.waiting is not None and ch.state.waiting <= sat
                 and not ch.state.unacked and not ch.dropped and not ch.closed
                 and not self.deltas.covers(ch.state.waiting)]
        if not asked:
            return None
        cat, _, ch = min(asked)
        return ch, cat

    def _answer_of(self, ch, cat, sat):
        """-> (S, δR(cat, S)): S a revision the file's index was at (kept,
        or now), which needs no comparison of trees however the head moved,
        or else `sat`;
        (sat, None) while the database is unreachable. No lock held;
        Cancelled once `ch` is gone."""
        gone = _gone(ch)
        try:
            try:
                found = self.deltas.from_index(cat, gone)
            except (DatabaseUnavailable, Cancelled):
                raise
            except Exception:
                found = None    # deltas.delta meets it again, says so, and reports the whole file
            return found or (sat, self.deltas.delta(cat, sat, gone))
        except DatabaseUnavailable:
            return sat, None

    def _answer_asked(self, ch, cat, since, ranges):
        """Answer `want <cat>` on `ch` with δR(cat, since) = `ranges` (None:
        the database was unreachable) and what changed since; -> False when
        head/at has not reached `since` yet. cond held."""
        sat = self.shown_at()
        if ranges is None:
            ch.send(protocol.format_error('want %016x: database unreachable' % cat))
            ch.state.waiting = None
        elif since > sat:
            return False
        elif self.deltas.covers(since):
            self._send_have(ch, sat, merge_ranges(ranges + self.deltas.ranges(since, sat)))
        # else the history forgot `since`: the next round computes it again
        return True

    # ---- the protocol (FUSE threads) ----

    def add_channel(self, ch):
        with self.cond:
            self.channels.add(ch)

    def channel_closed(self, ch):
        with self.cond:
            self.channels.discard(ch)
            self.cond.notify_all()

    def ack(self, ch):
        with self.cond:
            ch.state.ack()
            self.cond.notify_all()

    def want(self, ch, cat, request):
        """`want <cat>` on `ch`; `request` (channel.WriteContext) knows the
        writer's process and the database's last tid, asked once per write.
        A δR that needs the database is left to the answerer thread."""
        with self.cond:
            ch.state.want(cat)
        try:
            self._check_cat(cat, request)
            owner = request.process()
        except BaseException as e:
            with self.cond:
                # refused before an update may send this channel anything
                if isinstance(e, protocol.ProtocolError):
                    ch.reply_error(e)
                ch.state.checked()
                self.cond.notify_all()
            if isinstance(e, protocol.ProtocolError):
                return
            raise
        with self.cond:
            ch.state.checked()
            self.cond.notify_all()      # an update skipped this channel meanwhile
            sat = self.shown_at()
            ch.owner = owner
            # an update that started meanwhile answers it once done
            if self.moving or ch.state.unacked or sat < cat:
                ch.send(protocol.format_have(sat, wait=True))
                ch.state.sent_wait(cat)
                self.ctx.waiting.add(self)
            elif self.deltas.covers(cat):
                self._send_have(ch, sat, self.deltas.ranges(cat, sat))
                return
            else:
                ch.state.asked(cat)
                self.ctx.waiting.add(self)
                self._start_answerer()
                return
        # the watcher may have moved on before it saw this file waiting
        self.answer_waiting()

    def _check_cat(self, cat, request):
        try:
            # a tid the watcher applied is no later than the database's last
            last = cat if cat <= self.ctx.applied() else request.last_tid()
            if cat > last:
                raise protocol.ProtocolError('want %016x: after the last transaction %016x'
                                             % (cat, last))
            why = self.revisions.verdict(cat)
        except DatabaseUnavailable as e:
            raise protocol.ProtocolError('want %016x: %s' % (cat, e)) from None
        if why is not None:
            raise protocol.ProtocolError('want %016x: %s' % (cat, why))
