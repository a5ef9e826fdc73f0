"""The channels of one visible file and their protocol (SPEC 4.2-4.4):
`want`, `ack`, the wants that wait for the head, the answerer of old Cats,
and the updates that move every subscribed client before the head moves.

The file (bigfile.BigFile) owns the head and moves it; when a step has
subscribed clients, its mover calls `update` before the head changes, and
`answer_waiting` once head/at shows the new tid.

A `want` whose δR needs the database (a Cat older than the file's δ
history, or inside a step that folded several transactions) is answered by
the file's answerer thread, not by the write that asked: the kernel takes
the inode's lock for every write to the file's channels, so a write that
waited for the database would hold up every other channel's `want` of the
file (issue 15). The answerer takes the oldest Cat first (the walk of
history for it covers the others'), stops working for a channel once it is
dropped or closed, and brings an answer computed before the head moved
forward with the δ history. δR(Cat, z) of such a Cat, once computed, is
kept (`since`, deltas.py): with the history it gives δR(Cat, S) for every S
after z, for the answerer and for updates alike, with no database and no
comparison of trees.

Locks: the file's `BigFile.cond` guards the channels, their protocol states,
`answering`, and what the file guards; it is never held across database
I/O, /proc reads or kills (locks.ORDER).
"""

import logging
import threading
import time

from .. import protocol
from ..ranges import merge_ranges
from ..zodb.zstorage import Cancelled, DatabaseUnavailable
from .subscription import Update

log = logging.getLogger('wcfs.bigfile')

ANSWERER_POLL = 1.0     # seconds between checks for shutdown while the answerer waits for a step


def _gone(ch):
    """A `cancelled` callable for work that only `ch` needs."""
    return lambda: ch.dropped or ch.closed


class Subscribers:
    """The channels of the BigFile `bf`, and what they were told."""

    def __init__(self, bf, kill, stats, shutdown, waiting, applied):
        self.bf = bf
        self.cond = bf.cond
        self.deltas = bf.deltas
        self.kill = kill                # subscription.KillPolicy
        self.stats = stats
        self.shutdown = shutdown        # the server's Event
        self.waiting = waiting          # table.WaitingFiles: files with a want that waits
        self.applied = applied          # -> the last tid the watcher applied
        self.channels = set()
        self.answering = False          # the answerer thread runs

    @property
    def name(self):
        return self.bf.name

    def subscribed(self):
        """Channels subscribed now. cond held."""
        return [ch for ch in self.channels
                if ch.state.subscribed and not ch.dropped and not ch.closed]

    def update(self, target, waitset):
        """Move the clients in `waitset` (subscribed, cond held when it was
        taken) to the Snapshot `target`: send the update's haves and wait
        for the acks (SPEC 4.3 steps 1-2). No lock held."""
        update = Update(target, waitset, self.kill.kill_timeout)
        target = update.target.at
        with self.cond:
            since = {ch: ch.state.reported for ch in update.waitset}
        update.ranges = {ch: self.deltas.retrying(reported, target)
                         for ch, reported in since.items()}
        laggards = []
        with self.cond:
            while not self.shutdown.is_set():
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
            self.kill.deal_with(ch, channels)
            ch.drop()

    def _send_have(self, ch, tid, ranges, update=False):
        ch.send(protocol.format_have(tid, ranges))
        if update:
            ch.state.sent_update(tid)
        else:
            ch.state.sent_have(tid)
            ch.count_subscribed()
        self.stats.add('invalidations_sent')

    def answer_waiting(self, mover=False):
        """Channels whose `want` waited for a head at or after their Cat get
        their `have`, when no update waits for acks: from the thread that
        moves the head between two steps (`mover`), or once no step is being
        applied (the watcher calls this after every transaction while some
        `want` of the file waits). Those whose δR needs the database go to
        the answerer thread."""
        with self.cond:
            if self.bf.moving and not mover:
                return
            sat = self.bf.shown_at()
            waiting = [(ch, ch.state.waiting) for ch in self.channels
                       if ch.state.waiting is not None and not ch.dropped and not ch.closed]
            if not waiting:
                self.waiting.discard(self.bf)
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
                while not self.shutdown.is_set():
                    if self.bf.moving:
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
                    sat = self.bf.shown_at()
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
        sat = self.bf.shown_at()
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
        sat = self.bf.shown_at()
        if ranges is None:
            ch.send(protocol.format_error('want %016x: database unreachable' % cat))
            ch.state.waiting = None
        elif since > sat:
            return False
        elif self.deltas.covers(since):
            self._send_have(ch, sat, merge_ranges(ranges + self.deltas.ranges(since, sat)))
        # else the history forgot `since`: the next round computes it again
        return True

    # ---- requests (FUSE threads) ----

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
            sat = self.bf.shown_at()
            ch.owner = owner
            # an update that started meanwhile answers it once done
            if self.bf.moving or ch.state.unacked or sat < cat:
                ch.send(protocol.format_have(sat, wait=True))
                ch.state.sent_wait(cat)
                self.waiting.add(self.bf)
            elif self.deltas.covers(cat):
                self._send_have(ch, sat, self.deltas.ranges(cat, sat))
                return
            else:
                ch.state.asked(cat)
                self.waiting.add(self.bf)
                self._start_answerer()
                return
        # the watcher may have moved on before it saw this file waiting
        self.answer_waiting()

    def _check_cat(self, cat, request):
        try:
            # a tid the watcher applied is no later than the database's last
            last = cat if cat <= self.applied() else request.last_tid()
            if cat > last:
                raise protocol.ProtocolError('want %016x: after the last transaction %016x'
                                             % (cat, last))
            why = self.bf.revisions.verdict(cat)
        except DatabaseUnavailable as e:
            raise protocol.ProtocolError('want %016x: %s' % (cat, e)) from None
        if why is not None:
            raise protocol.ProtocolError('want %016x: %s' % (cat, why))
