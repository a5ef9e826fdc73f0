"""Visible bigfiles: their head, their `@<tid>/` directories, reading blocks.

A `BigFile` exists once a client made `bigfile/<oid>/`. Its `head` is an
immutable `Head` snapshot replaced as a whole when the head moves, so a read
takes one snapshot and serves every block of the request as of one revision.

Moving the head (watcher thread, `on_transaction`): compute δ with the file's
index, replace `head`, then tell the kernel to drop exactly the changed ranges
of head/data. Never the other way round: a read between dropping and
switching would put the old data back in the page cache for good.

Locks: `BigFileTable.lock` guards the table; `BigFile.revdirs_lock` guards a
file's revdirs. Order: watcher.zhead_lock > BigFileTable.lock > revdirs_lock
> BlockCache.lock. None of them is held across a kernel notification.
"""

import collections
import logging
import os
import signal
import threading
import time

from ZODB.TimeStamp import TimeStamp
from ZODB.utils import p64

from . import protocol, zformat
from .procfs import count_open
from .delta import DeltaHistory, blocks_to_ranges, compare_revisions, merge_ranges
from .watcher import ALL, FileIndex

log = logging.getLogger('wcfs.bigfile')

MAX_REVDIRS = 10000     # @<tid>/ directories over all files, half per uid; beyond: ENOSPC


class Head(collections.namedtuple('Head', 'oid at blksize blktab size broken')):
    """A file as of revision `at`; `broken` is why it cannot be read, or None."""

    @property
    def mtime(self):
        return tid_time(self.at)


def tid_time(tid):
    return TimeStamp(p64(tid)).timeTime()


def head_of(zh, size):
    """The Head of a ZBigFileHead whose file has `size` bytes."""
    return Head(zh.oid, zh.at, zh.blksize, zh.blktab, size, None)


class RevDir:
    """`bigfile/<oid>/@<tid>/`: the file as of <tid>, never changing."""

    def __init__(self, head, uid):
        self.head = head
        self.uid = uid                  # who made it: its slot of the server's revdir quota
        self.opens = 0                  # guarded by the file's revdirs_lock
        self.last_used = time.monotonic()


class BlockCache:
    """The last few decoded blocks, so that the kernel's pieces of one block
    (128 KiB .. 1 MiB requests) load it once; concurrent misses wait for the
    one load in flight."""

    def __init__(self, nblocks=8):
        self.lock = threading.Lock()    # guards _blocks, _loading
        self._blocks = collections.OrderedDict()
        self._loading = {}              # key -> Event of the load in flight
        self._max = nblocks

    def get(self, key, load):
        while True:
            with self.lock:
                data = self._blocks.get(key)
                if data is not None:
                    self._blocks.move_to_end(key)
                    return data
                inflight = self._loading.get(key)
                if inflight is None:
                    inflight = self._loading[key] = threading.Event()
                    break
            inflight.wait()
        try:
            data = load()
            with self.lock:
                self._blocks[key] = data
                while len(self._blocks) > self._max:
                    self._blocks.popitem(last=False)
            return data
        finally:
            with self.lock:
                del self._loading[key]
            inflight.set()


class BigFile:
    """One ZBigFile made visible under `bigfile/<oid>/`.

    `head` is what data reads serve; `at`, what head/at shows, follows it
    once the kernel has dropped the changed ranges, so that a client that
    sees the new head/at never reads stale cached pages.

    `cond` guards `head` (it is replaced, never changed), `at`, `steps`, `history`,
    `channels` and their protocol states. The watcher thread adds steps; they
    are applied inline when no channel is subscribed, else by a mover thread
    that waits for the acks (SPEC 4.3), so that the watcher never waits.
    """

    def __init__(self, oid, loader, zhead, ctx):
        self.oid = oid
        self.loader = loader
        self.ctx = ctx                  # Context: kcache, stats, blocks, options
        self.index = FileIndex(loader, oid, zhead)
        self.head = head_of(self.index.head, self.index.size)
        self.at = self.head.at          # what head/at shows: head.at once the kernel dropped δ
        self._zhead_head = self.head    # as of the index: head once steps are applied
        self.cond = threading.Condition()
        self.history = DeltaHistory(zhead)
        self.steps = []                 # (Head, ranges) not applied yet, oldest first
        self.channels = set()
        self._invalidating = False      # head moved, kernel cache not yet told
        self._mover = None              # the thread applying steps, if any
        self.revdirs_lock = threading.Lock()
        self.revdirs = {}               # tid -> RevDir

    @property
    def name(self):
        return '%016x' % self.oid

    # ---- following the database (watcher thread) ----

    def on_transaction(self, tid, oids):
        """Transaction `tid` modified `oids` (None: unknown, compare all)."""
        old = self._zhead_head
        try:
            if oids is None and not old.broken:     # invalidations were lost: compare
                ranges = compare_revisions(self.loader, self.oid, old.at, tid)
                self.index._load(tid)
                delta = None
            elif oids is None or old.broken:
                self.index._load(tid)
                delta = ALL
            else:
                delta = self.index.update(tid, oids)
            new = head_of(self.index.head, self.index.size)
        except (zformat.FormatError, zformat.ObjectMissing, zformat.NotZBigFile) as e:
            log.error('bigfile %s @%016x: cannot serve it any more: %s', self.name, tid, e)
            delta = ALL
            new = old._replace(at=tid, broken=str(e))
        if delta == ALL:
            size = max(old.size, new.size)
            ranges = [(0, size)] if size else []
        elif delta is not None:
            ranges = blocks_to_ranges(delta, new.blksize)
        self._zhead_head = new
        if not ranges and self._move_at_once(new):
            return
        self._push_step(new, ranges, tid)

    def _move_at_once(self, new):
        """A transaction that changed nothing of the file moves its head at once,
        unless steps wait for acks. -> whether it did."""
        with self.cond:
            if self.steps or self._mover is not None:
                return False
            self.head = new
            self.at = new.at
            self._answer_waiting()
            return True

    def check_gone(self, zhead):
        """After a pack: is the ZBigFile still in the database? (watcher thread)"""
        old = self._zhead_head
        if old.broken:
            return
        try:
            self.loader.record(self.oid, zhead, fresh=True)
        except zformat.ObjectMissing as e:
            log.error('bigfile %s: cannot serve it any more: packed away: %s', self.name, e)
            self._zhead_head = old._replace(broken='packed away: %s' % e)
            self._push_step(self._zhead_head, [(0, old.size)] if old.size else [], None)

    def _push_step(self, new, ranges, tid):
        with self.cond:
            if tid is not None:
                self.history.append(tid, ranges)
            self.steps.append((new, ranges))
            if self._mover is not None:
                return
            inline = not any(ch.state.subscribed for ch in self.channels)
            if inline:
                self._mover = threading.current_thread()
            else:
                self._mover = threading.Thread(target=self._apply_steps, daemon=True,
                                               name='mover-' + self.name)
        if inline:
            self._apply_steps()
        else:
            self._mover.start()

    def _apply_steps(self):
        while True:
            with self.cond:
                if not self.steps:
                    self._mover = None
                    return
                target = self.steps[-1][0]
                ranges = merge_ranges(r for _, rs in self.steps for r in rs)
                self.steps.clear()
                if ranges:
                    self._wait_acks(target)
                self.head = target
                self._invalidating = bool(ranges)
            if ranges:
                self.ctx.kcache.invalidate_data('bigfile/%s/head/data' % self.name, ranges)
            with self.cond:
                self.at = target.at
                self._invalidating = False
                self._answer_waiting()
                self.cond.notify_all()

    def _wait_acks(self, target):
        """Send `have target` to every subscribed channel and wait for their
        acks, killing the ones that take over the kill timeout. cond held."""
        started = time.monotonic()
        while not self.ctx.shutdown.is_set():
            pending = []
            for ch in list(self.channels):
                st = ch.state
                if not st.subscribed or ch.dropped:
                    continue
                if not st.unacked and st.reported < target.at:
                    # Head still shows st.reported until every ack: ranges since
                    # then, also where this have answers a waiting want (a
                    # superset of δR(Cat, target) is what keeps its view right).
                    answers = st.waiting is not None and st.waiting <= target.at
                    self._send_have(ch, target.at, self._delta(st.reported, target.at),
                                    update=not answers)
                if st.unacked:
                    pending.append(ch)
            if not pending:
                return
            now = time.monotonic()
            wake = None
            for ch in pending:
                deadline = max(started, ch.have_time) + self.ctx.kill_timeout
                if now >= deadline:
                    self._kill(ch)
                else:
                    wake = deadline if wake is None else min(wake, deadline)
            if wake is not None:
                self.cond.wait(wake - now)

    def _send_have(self, ch, tid, ranges, update=False):
        ch.send(protocol.format_have(tid, ranges))
        if update:
            ch.state.sent_update(tid)
        else:
            ch.state.sent_have(tid)
        ch.have_time = time.monotonic()
        self.ctx.stats.add('invalidations_sent')

    def _delta(self, a, b):
        """δR(a, b) with a <= b <= zhead; cond held."""
        if self.history.covers(a):
            return self.history.ranges(a, b)
        return self._compare(a, b)

    def _compare(self, a, b):
        """δR(a, b) from the database; the whole file where it cannot be read."""
        try:
            return compare_revisions(self.loader, self.oid, a, b)
        except (zformat.FormatError, zformat.ObjectMissing, zformat.NotZBigFile) as e:
            log.warning('bigfile %s: δR(%016x, %016x): %s; reporting the whole file',
                        self.name, a, b, e)
            size = max(self.head.size, self._zhead_head.size)
            return [(0, size)] if size else []

    def _answer_waiting(self):
        """Channels waiting for a head at or after their Cat get it. cond held."""
        head = self.head
        if self._invalidating:
            return
        for ch in list(self.channels):
            cat = ch.state.waiting
            if cat is not None and cat <= head.at and not ch.state.unacked and not ch.dropped:
                self._send_have(ch, head.at, self._delta(cat, head.at))

    def _kill(self, ch):
        """SPEC 4.4: kill the process holding up an update, if it is sure to be
        the one that subscribed and still has the channel open; drop it."""
        owner = ch.owner
        if owner is not None and owner.pid != os.getpid() and self._holds_only(owner, ch):
            try:
                os.kill(owner.pid, signal.SIGKILL)
                log.warning('%s: killed pid %d (%s): no ack within %gs',
                            ch.path, owner.pid, owner.comm, self.ctx.kill_timeout)
                self.ctx.stats.add('clients_killed')
            except OSError as e:
                log.warning('%s: cannot kill pid %d (%s): %s', ch.path, owner.pid, owner.comm, e)
        else:
            log.warning('%s: no ack within %gs; dropping the subscription (its process '
                        'cannot be identified for sure, not killed)', ch.path, self.ctx.kill_timeout)
        ch.drop()
        self.channels.discard(ch)

    def _holds_only(self, owner, ch):
        """Is `owner` alive and sure to hold `ch`? /proc shows paths, not open
        files: be sure only when the process opened one channel of this file
        and has one descriptor open on it. cond held."""
        if not owner.alive():
            return False
        opened = sum(1 for c in self.channels
                     if c.opener is not None and (c.opener.pid, c.opener.start) == (owner.pid, owner.start))
        if ch.opener is None or (ch.opener.pid, ch.opener.start) != (owner.pid, owner.start):
            return False
        return opened == 1 and count_open(owner.pid, os.path.join(self.ctx.mountpoint, ch.path)) == 1

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
            self._answer_waiting()      # a want that waited behind this update
            self.cond.notify_all()

    def want(self, ch, cat):
        with self.cond:
            ch.state.want(cat)
        self._check_cat(cat)
        while True:
            with self.cond:
                while self._invalidating:
                    self.cond.wait()
                ch.state.want(cat)      # an update may have been sent meanwhile
                head = self.head
                if head.at < cat:
                    ch.send(protocol.format_have(head.at, wait=True))
                    ch.state.sent_wait(cat)
                    return
                if self.history.covers(cat):
                    self._send_have(ch, head.at, self.history.ranges(cat, head.at))
                    return
            ranges = self._compare(cat, head.at)
            with self.cond:
                if self.head is head and not self._invalidating:
                    self._send_have(ch, head.at, ranges)
                    return

    def _check_cat(self, cat):
        try:
            last = self.ctx.last_tid()
            if cat > last:
                raise protocol.ProtocolError('want %016x: after the last transaction %016x'
                                             % (cat, last))
            self.loader.zbigfile(self.oid, cat)
        except zformat.ObjectMissing:
            raise protocol.ProtocolError('want %016x: the file did not exist then, or its '
                                         'history was packed away' % cat) from None
        except zformat.NotZBigFile:
            raise protocol.ProtocolError('want %016x: the object was not a ZBigFile then' % cat) \
                from None
        except (zformat.FormatError, zformat.DatabaseUnavailable) as e:
            raise protocol.ProtocolError('want %016x: %s' % (cat, e)) from None

    def count_channels(self):
        with self.cond:
            return len(self.channels), sum(ch.state.subscribed for ch in self.channels)

    # reading

    def read(self, head, offset, size):
        """Bytes [offset, offset+size) of the file as of `head`."""
        if head.broken:
            raise zformat.FormatError(self.oid, head.at, head.broken)
        end = min(offset + size, head.size)
        if offset >= end:
            return b''
        bs = head.blksize
        pieces = []
        for blk in range(offset // bs, (end - 1) // bs + 1):
            data = self._block(head, blk)
            lo = max(offset - blk * bs, 0)
            hi = min(end - blk * bs, bs)
            pieces.append(data[lo:hi] if (lo, hi) != (0, bs) else data)
        stats = self.ctx.stats
        stats.add('reads')
        stats.add('bytes_read', end - offset)
        return pieces[0] if len(pieces) == 1 else b''.join(pieces)

    def _block(self, head, blk):
        return self.ctx.blocks.get((self.oid, head.at, blk), lambda: self._load_block(head, blk))

    def _load_block(self, head, blk):
        zhead = zformat.ZBigFileHead(self.oid, head.at, None, head.blksize, head.blktab)
        zblk = self.loader.lookup(zhead, blk)
        if zblk is None:
            return bytes(head.blksize)
        data, oids = self.loader.load_block(zblk, head.at, head.blksize)
        self.ctx.stats.add('blocks_loaded')
        if head.at == self.index.at:
            self.index.note_parts(blk, oids)
        return data

    # @<tid>/ directories

    def revdir(self, tid):
        with self.revdirs_lock:
            return self.revdirs.get(tid)

    def add_revdir(self, tid, head, uid):
        with self.revdirs_lock:
            if tid in self.revdirs:
                return None
            rd = self.revdirs[tid] = RevDir(head, uid)
            return rd

    def revdir_names(self):
        with self.revdirs_lock:
            return ['@%016x' % tid for tid in sorted(self.revdirs)]

    def use_revdir(self, rd, delta):
        """Count an open (+1) or a release (-1) of something in `rd`."""
        with self.revdirs_lock:
            rd.opens += delta
            rd.last_used = time.monotonic()

    def expire_revdirs(self, timeout):
        """Remove unused revdirs; -> [(name, uid that made it)] of those removed."""
        now = time.monotonic()
        with self.revdirs_lock:
            old = [tid for tid, rd in self.revdirs.items()
                   if rd.opens == 0 and now - rd.last_used >= timeout]
            return [('@%016x' % tid, self.revdirs.pop(tid).uid) for tid in old]


class BigFileTable:
    """oid -> BigFile; `lock` is held only to look up or change the table."""

    def __init__(self):
        self.lock = threading.Lock()
        self._files = {}

    def get(self, oid):
        with self.lock:
            return self._files.get(oid)

    def add(self, bf):
        with self.lock:
            self._files[bf.oid] = bf

    def files(self):
        with self.lock:
            return list(self._files.values())

    def count_revdirs(self):
        return sum(len(bf.revdirs) for bf in self.files())
