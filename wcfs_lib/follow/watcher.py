"""Following the database: zhead, and handing each visible file its steps.

The database tells us, for every committed transaction (or every few, folded
into one), its tid and the oids it modified (Database.follow): on the
storage's I/O or polling thread we only queue and wake the watcher thread
(loading there would deadlock ZEO).

The watcher thread applies transactions in order: it moves zhead, then hands
the transaction to every visible file (BigFile.on_transaction, which asks the
file's index for δ and moves or queues the file's head). One file's step
never costs another file its transaction: a step that fails marks only that
file broken, and a step that needs the database while it is unreachable is
retried for that file, never skipped.

Making a file visible (`add_file`, from mkdir) loads its index as of zhead
without holding any lock the watcher needs; transactions that arrive
meanwhile are kept in the file's backlog and applied to the index before the
file is published, so that no transaction is lost or applied twice.
"""

import collections
import logging
import threading
import time

from .. import locks
from ..zodb import zstorage
from .fileindex import FileIndex

log = logging.getLogger('wcfs.watcher')



class Watcher:
    """The thread that follows the database and moves every file's head.

    `zhead_lock` guards zhead together with the table's membership: a file
    made visible at zhead gets every transaction after it, through its
    backlog while it loads. It is held only for that, never across I/O.
    """

    PACKED = object()

    def __init__(self, loader, table, stats, oidindex, make_file):
        self.loader = loader
        self._make_file = make_file     # (oid, FileIndex) -> the visible file (bigfile.BigFile)
        self.records = loader.records
        self.table = table
        self.stats = stats
        self.oidindex = oidindex
        self.zhead = self.records.last_tid()
        self.applied = self.zhead   # every file untouched since shows this as head/at
        self.zhead_lock = locks.lock('Watcher.zhead_lock')
        self._queue = collections.deque()
        self._queued = 0    # commits in _queue (.wcfs/metrics): read without the lock
        self._queue_cond = locks.condition('Watcher._queue_cond')    # guards _queue, _queued, _stop
        self._zhead_cond = locks.condition('Watcher._zhead_cond')    # notified when zhead moves
        self._stop = False
        self._thread = threading.Thread(target=self._run, name='watcher', daemon=True)

    # the database → us, on its I/O or polling thread: record and wake only.

    def on_commit(self, tid, oids, folded=False):
        self._push((tid, oids, folded))

    def on_resync(self, tid=None):
        """tid: the database's last transaction as the caller found it (a
        poll), or None: asked of the database."""
        self._push(_Resync(tid))

    def on_pack(self):
        self._push(self.PACKED)

    def _push(self, item):
        with self._queue_cond:
            self._queue.append(item)
            self._queued += isinstance(item, tuple)
            self._queue_cond.notify()

    def queued(self):
        """Commits the database told of that the watcher has not taken up
        yet (a folded one counts once): how far zhead is behind, without
        asking the database."""
        return self._queued

    # the watcher thread

    def start(self):
        self.records.database.follow(self.on_commit, self.on_resync, self.on_pack)
        self._thread.start()

    def stop(self):
        with self._queue_cond:
            self._stop = True
            self._queue_cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self):
        while True:
            with self._queue_cond:
                while not self._queue and not self._stop:
                    self._queue_cond.wait()
                if self._stop:
                    return
                item = self._queue.popleft()
                self._queued -= isinstance(item, tuple)
            try:
                if isinstance(item, _Resync):
                    self._resync(item.tid)
                elif item is self.PACKED:
                    self._each_file([(bf, None) for bf in self.table.files()],
                                    lambda bf, _: bf.check_gone(self.zhead))
                else:
                    self._apply(*item)
            except Exception:
                log.exception('watcher: applying %s failed', _describe(item))

    def _apply(self, tid, oids, folded):
        """Transaction `tid` modified `oids` (None: unknown, compare all);
        `folded`: it may stand for several since zhead, whose states in
        between the files' δ histories must not claim to know."""
        with self.zhead_lock:
            if tid <= self.zhead:
                return
            since = self.zhead if folded or oids is None else None
            self.zhead = tid
            files = self.table.note_transaction(tid, oids)
        self.stats.set('zhead', '%016x' % tid)
        with self._zhead_cond:
            self._zhead_cond.notify_all()
        if oids is None:
            targets = [(bf, ()) for bf in files.values()]
        else:
            touched = self.oidindex.touched(oids)
            targets = [(files[fid], hits) for fid, hits in touched.items() if fid in files]
        self._each_file(targets, lambda bf, hits: bf.on_transaction(tid, oids, hits, since))
        self.applied = tid
        self._each_file([(bf, None) for bf in self.table.waiting.files()],
                        lambda bf, _: bf.subscribers.answer_waiting())

    def _each_file(self, targets, step):
        """step(bf, arg) for each (bf, arg); a step that needs the database
        while it is unreachable is retried, never skipped: skipping would
        lose that transaction's δ for the file. Any other failure stays in
        its file."""
        for bf, arg in targets:
            while not self._stop:
                try:
                    step(bf, arg)
                    break
                except zstorage.DatabaseUnavailable as e:
                    log.warning('bigfile/%s: waiting for the database: %s', bf.name, e)
                    time.sleep(zstorage.RETRY_PAUSE)
                except Exception:
                    log.exception('bigfile/%s: step failed', bf.name)
                    break

    def _resync(self, last=None):
        """After a reconnection: the storage may have lost invalidations.
        The transactions missed up to `last` (None: the last one now) are
        listed by the database and applied as one; where it cannot list
        them, each file compares its trees. Retried while the database is
        away: skipping would lose those transactions for good."""
        while not self._stop:
            try:
                tid = self.records.last_tid() if last is None else last
                if tid <= self.zhead:
                    return
                oids = self.records.changed_oids(self.zhead, tid, upto=tid)
                break
            except zstorage.DatabaseUnavailable as e:
                log.warning('resync: waiting for the database: %s', e)
                time.sleep(zstorage.RETRY_PAUSE)
        else:
            return
        log.info('resync after reconnection: %016x -> %016x (%s)', self.zhead, tid,
                 'everything compared' if oids is None else '%d objects changed' % len(oids))
        self._apply(tid, None if oids is None else frozenset(oids), True)

    def wait_zhead(self, tid, timeout):
        """Wait until zhead >= tid; TimeoutError after `timeout` seconds."""
        with self._zhead_cond:
            if not self._zhead_cond.wait_for(lambda: self.zhead >= tid, timeout):
                raise TimeoutError('the watcher is at %016x, behind %016x' % (self.zhead, tid))

    # making a file visible (a FUSE thread)

    def add_file(self, oid):
        """Make the ZBigFile `oid` visible as of zhead; -> the BigFile, or
        None if it is visible already. Raises what loading its index raises."""
        while True:
            with self.zhead_lock:
                kind, there = self.table.start_loading(oid, self.zhead)
            if kind == 'visible':
                return None
            if kind == 'new':
                return self._load(there)
            there.done.wait()           # another mkdir loads it: its outcome decides

    def _load(self, loading):
        """Load the index of `loading`, catch up on the transactions that
        arrived meanwhile, publish the file. No notification to the kernel
        here: this runs in mkdir's handler, and the file was never visible."""
        oid = loading.oid
        index = None
        try:
            index = FileIndex(self.loader, oid, loading.at, self.oidindex)
            while True:
                bf, backlog = self.table.publish(loading, lambda: self._make_file(oid, index))
                if bf is not None:
                    return bf
                for tid, oids in backlog:
                    self._catch_up(index, tid, oids)
        except BaseException:
            if index is not None:
                index.forget()
            self.table.abandon(loading)
            raise

    def _catch_up(self, index, tid, oids):
        """Move the index to `tid`."""
        while True:
            try:
                if oids is None:
                    index.update(tid, {index.oid})      # reload it whole
                else:
                    index.update(tid, oids, self.oidindex.touched(oids).get(index.fid, ()))
                return
            except zstorage.DatabaseUnavailable:
                if self._stop:
                    raise
                time.sleep(zstorage.RETRY_PAUSE)


class _Resync:
    """A resync in the watcher's queue (not a tuple: those are commits)."""

    __slots__ = ('tid',)

    def __init__(self, tid):
        self.tid = tid


def _describe(item):
    if isinstance(item, tuple):
        return 'transaction %016x' % item[0]
    return 'resync' if isinstance(item, _Resync) else 'pack check'
