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

Locks (the order of every lock of wcfs is in server.py): `BigFile.cond`
guards head, at, pending, moving, answering, history, since, channels and
their protocol states. It is never held across database I/O, /proc reads or
kernel notifications.
"""

import collections
import logging
import threading
import time


from .. import locks, protocol
from ..follow.delta import DeltaHistory, compare_revisions
from ..ranges import merge_ranges, whole
from ..zodb import zformat
from ..zodb.revisions import ObjectRevisions
from ..zodb.zstorage import RETRY_PAUSE, Cancelled, DatabaseUnavailable
from .reply import Reply
from .revdir import RevDirs
from .subscription import Update

log = logging.getLogger('wcfs.bigfile')

MAX_REVDIRS = 10000     # @<tid>/ directories over all files, shared per uid (quota.py); beyond: ENOSPC
ANSWERER_POLL = 1.0     # seconds between checks for shutdown while the answerer waits for a step
INDEX_TRIES = 3         # δR from the index computed again when it moved meanwhile
MAX_SINCE = 1024        # δR(Cat, z) kept per file for Cats older than its history


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
        self._latest = self.head    # as of the index: head once the pending step is applied
        self.revisions = ObjectRevisions(self.loader, oid)
        self.revisions.add_current(index.head.serial)
        self.cond = locks.condition('BigFile.cond')
        self.history = DeltaHistory(self.head.at)
        self.pending = None             # (Snapshot, ranges): the step not applied yet
        self.moving = False             # a step is being applied (a thread owns it)
        self.mover = None               # the last mover thread started (watcher thread; joined at shutdown)
        self.answering = False          # the answerer thread runs
        self.since = {}                 # Cat older than the history -> (z, δR(Cat, z)), oldest z
        self.channels = set()
        self.revdirs = RevDirs()

    @property
    def name(self):
        return '%016x' % self.oid

    # ---- following the database (watcher thread) ----

    def on_transaction(self, tid, oids, hits=()):
        """Transaction `tid` modified `oids` (None: unknown, compare all);
        `hits`: the blocks whose ZBlk is in `oids`.

        DatabaseUnavailable propagates (the watcher retries the step); any
        other failure marks the file broken."""
        old = self._latest
        try:
            new, ranges = self._step(old, tid, oids, hits)
        except DatabaseUnavailable:
            raise
        except Exception as e:
            reason = '%s: %s' % (type(e).__name__, e) if str(e) else type(e).__name__
            new, ranges = self._broken(old, tid, reason), whole(old.size)
        self._latest = new
        self._push_step(new, ranges, tid)

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
        old = self._latest
        if old.broken:
            return
        try:
            self.loader.record(self.oid, zhead, fresh=True)
        except zformat.ObjectMissing as e:
            self._latest = self._broken(old, old.at, 'packed away: %s' % e)
            self._push_step(self._latest, whole(old.size), None)

    def _push_step(self, new, ranges, tid):
        with self.cond:
            if tid is not None:
                self.history.append(tid, ranges)
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
        update.ranges = {ch: self._delta_retrying(reported, target)
                         for ch, reported in since.items()}
        laggards = []
        with self.cond:
            while not self.ctx.shutdown.is_set():
                needed = update.answers_needed()
                if needed:
                    self.cond.release()     # δR may need the database
                    try:
                        for ch, cat in needed:
                            update.since_cat[(ch, cat)] = self._delta_retrying(
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

    def _delta(self, a, b, cancelled=None):
        """δR(a, b) with a <= b <= zhead; no lock held (may load from the
        database). Cancelled once cancelled() is true."""
        with self.cond:
            if self.history.covers(a):
                return self.history.ranges(a, b)
        try:
            return self._delta_from_database(a, b, cancelled)
        except (DatabaseUnavailable, Cancelled):
            raise
        except Exception as e:
            log.warning('bigfile/%s: δR(%016x, %016x): %s; reporting the whole file',
                        self.name, a, b, e)
            return whole(max(self.head.size, self._latest.size))

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
                if self.history.covers(cat):
                    self._send_have(ch, sat, self.history.ranges(cat, sat))
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
                 and not self.history.covers(ch.state.waiting)]
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
                found = self._delta_from_index(cat, gone)
            except (DatabaseUnavailable, Cancelled):
                raise
            except Exception:
                found = None    # _delta meets it again, says so, and reports the whole file
            return found or (sat, self._delta(cat, sat, gone))
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
        elif self.history.covers(since):
            self._send_have(ch, sat, merge_ranges(ranges + self.history.ranges(since, sat)))
        # else the history forgot `since`: the next round computes it again
        return True

    def _delta_from_index(self, a, cancelled=None, before=None):
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
            applied = self.ctx.applied()    # first: the index has every transaction up to it
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

    def _delta_from_database(self, a, b, cancelled=None):
        """δR(a, b) for `a` older than the history: δR(a, z) for some z <= b
        (_delta_from_index) and the history from z to b; else, or where the
        storage cannot list transactions, the trees as of a and b are
        compared."""
        found = self._delta_from_index(a, cancelled, before=b)
        if found is not None:
            z, ranges = found
            with self.cond:
                if self.history.covers(z):
                    return merge_ranges(ranges + self.history.ranges(z, b))
        return compare_revisions(self.loader, self.oid, a, b)

    def _delta_retrying(self, a, b, cancelled=None):
        """δR(a, b) for an update, which cannot go on without it: while the
        database is away, ask again (the update then takes the database's
        time, SPEC 4.4). Nothing once cancelled() is true (the channel it
        was for is gone)."""
        while True:
            try:
                return self._delta(a, b, cancelled)
            except Cancelled:
                return []
            except DatabaseUnavailable as e:
                if self.ctx.shutdown.is_set():
                    return whole(max(self.head.size, self._latest.size))
                log.warning('bigfile/%s: update waits for the database: %s', self.name, e)
                time.sleep(RETRY_PAUSE)

    def _delta_or_none(self, a, b, cancelled=None):
        try:
            return self._delta(a, b, cancelled)
        except DatabaseUnavailable:
            return None

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
            elif self.history.covers(cat):
                self._send_have(ch, sat, self.history.ranges(cat, sat))
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

    # ---- reading ----

    def read(self, head, offset, size, stream=None, uid=None):
        """Bytes [offset, offset+size) of the file as of `head`, as a Reply;
        `stream`: the prefetch.ReadStream of the open file read through;
        `uid`: who reads (whose turn a load takes, blockcache.py)."""
        if head.broken:
            raise zformat.FormatError(self.oid, head.at, head.broken)
        end = min(offset + size, head.size)
        reply = Reply()
        if offset >= end:
            return reply
        bs = head.blksize
        ahead = None if stream is None else stream.note(offset, end, bs)
        if ahead is not None:
            self.ctx.prefetch.ahead(self, head, ahead, uid)
        for blk in range(offset // bs, (end - 1) // bs + 1):
            reply.add(self._block(head, blk, uid), max(offset - blk * bs, 0),
                      min(end - blk * bs, bs))
        stats = self.ctx.stats
        stats.add('reads')
        stats.add('bytes_read', end - offset)
        return reply

    def block_key(self, head, blk):
        """What a read asks the BlockCache for block `blk` as of `head` by."""
        return (self.oid, head.at, blk)

    def _block(self, head, blk, uid=None):
        return self.ctx.blocks.get(self.block_key(head, blk), head.at, head.blksize,
                                   lambda: self._content_key(head, blk),
                                   lambda cid: self._load_block(head, blk, cid[0]), uid,
                                   lambda parts: self._note_parts(head, blk, parts))

    def fill_ahead(self, head, blk, uid=None):
        """Load block `blk` as of `head` for prefetch (a prefetch thread)."""
        self.ctx.blocks.fill(self.block_key(head, blk), head.at, head.blksize,
                             lambda: self._content_key(head, blk),
                             lambda cid: self._load_block(head, blk, cid[0], 'blocks_prefetched'),
                             uid, lambda parts: self._note_parts(head, blk, parts))

    def _content_key(self, head, blk):
        """What fixes the content of block `blk` as of `head` besides the
        span of its records: its ZBlk (looked up in blktab as of head.at)
        and the blksize; None for a hole."""
        zhead = zformat.ZBigFileState(self.oid, head.at, None, head.blksize, head.blktab)
        zblk = self.loader.lookup(zhead, blk)
        return None if zblk is None else (zblk, head.blksize)

    def _load_block(self, head, blk, zblk, counter=None):
        """-> (data, (lo, hi)): block `blk` as of `head` (ZBlk `zblk`), the
        same for every revision in [lo, hi]."""
        # a record without a next revision is current as of the server's
        # answer, so at least as of what the watcher applied before asking
        span = zformat.Span(self.ctx.applied())
        data, oids = self.loader.load_block_data(zblk, head.at, head.blksize, span)
        self.ctx.stats.add('blocks_loaded')
        if counter is not None:
            self.ctx.stats.add(counter)
        return data, (span.lo, span.hi), oids

    def _note_parts(self, head, blk, oids):
        """A block of head, loaded or shared with another revision: the
        watcher must know every record it is made of."""
        if head.at == self.index.at:
            self.index.note_parts(blk, oids)


class BigFileTable:
    """oid -> BigFile, and the files being made visible.

    `lock` is held only to look up or change the table."""

    def __init__(self):
        self.lock = locks.lock('BigFileTable.lock')
        self.waiting = WaitingFiles()
        self._files = {}
        self._by_fid = {}               # OidIndex file id -> BigFile
        self._loading = {}              # oid -> Loading

    def get(self, oid):
        with self.lock:
            return self._files.get(oid)

    def files(self):
        with self.lock:
            return list(self._files.values())

    def count(self):
        with self.lock:
            return len(self._files)

    def start_loading(self, oid, at):
        """-> ('visible', BigFile), ('loading', Loading) of another mkdir, or
        ('new', Loading): the caller loads `oid` as of `at`."""
        with self.lock:
            if oid in self._files:
                return 'visible', self._files[oid]
            if oid in self._loading:
                return 'loading', self._loading[oid]
            loading = self._loading[oid] = Loading(oid, at)
            return 'new', loading

    def note_transaction(self, tid, oids):
        """A transaction: the files being loaded get it in their backlog;
        -> {fid: BigFile} of the files visible now, which get it from the
        watcher. Both under one hold of the lock, and a copy: a file
        published after this caught up on it from its backlog, and must not
        get it from the watcher too."""
        with self.lock:
            for loading in self._loading.values():
                loading.backlog.append((tid, oids))
            return dict(self._by_fid)

    def publish(self, loading, make):
        """Publish the file make() builds, unless transactions wait for it:
        -> (BigFile, None), or (None, the transactions to catch up on first)."""
        with self.lock:
            if loading.backlog:
                backlog, loading.backlog = loading.backlog, []
                return None, backlog
            bf = self._files[loading.oid] = make()
            self._by_fid[bf.index.fid] = bf
            del self._loading[loading.oid]
        loading.done.set()
        return bf, None

    def abandon(self, loading):
        """The load failed: the oid is free again."""
        with self.lock:
            if self._loading.get(loading.oid) is loading:
                del self._loading[loading.oid]
        loading.done.set()


class WaitingFiles:
    """The files with a channel whose `want` waits for a later head: the
    watcher pokes them after each transaction, touched or not."""

    def __init__(self):
        self.lock = locks.lock('WaitingFiles.lock')    # guards _files
        self._files = set()

    def add(self, bf):
        with self.lock:
            self._files.add(bf)

    def discard(self, bf):
        with self.lock:
            self._files.discard(bf)

    def files(self):
        with self.lock:
            return list(self._files)


class Loading:
    """A file being made visible: the transactions it must catch up on."""

    def __init__(self, oid, at):
        self.oid = oid
        self.at = at
        self.backlog = []               # (tid, oids) after `at`; guarded by the table's lock
        self.done = locks.event('Loading.done')
