"""Every lock and wait of wcfs, in the one order they may nest, and the
locks that check it.

A thread holding a lock may take only locks listed after it ("A before B":
take A, then B); the order is total, so a lock marked "alone" is never held
while another is taken, nor takes another. Waiting on a condition or an
event (marked "wait") holds no lock but the condition's own: a wait with
another lock held is how a slow client or database would stall everyone
behind that lock.

No lock is held across database I/O or /proc reads, and none across the
kernel cache notifications of kcache.py (a notification of a page waits for
the read handler of that page, and the lookup it needs is itself a request
to this filesystem). A poll notification (fuse_notify_poll) waits for
nothing, and is sent under Channel.lock.

Threads: `fuse` (libfuse's workers: the requests), `watcher`, `mover`
(one per file, a step that waits for acks), `answerer` (one per file, the
wants that need the database), `prefetch`, `timer` (the main thread:
expiry, shutdown), and the database's own: `poller`, `watchdog` (MVCC) and
`prober` (ZEO).

With the lock-ranks knob (knobs.py), `lock`, `condition` and `event` make
objects that check all of this and raise LockOrderError (an AssertionError,
logged as critical first) at the first wrong nesting; without it they are
threading's own, at no cost.
"""

import logging
import threading

from . import knobs

log = logging.getLogger('wcfs.locks')

# (name, what it guards, threads that take it), in rank order
ORDER = [
    ('Watcher.zhead_lock', 'zhead, and where a file\'s loading starts (every later '
     'transaction reaches its backlog)', 'watcher, fuse'),
    ('BigFileTable.lock', 'the table: oid -> BigFile, oid -> Loading, backlogs',
     'watcher, fuse, timer'),
    ('BigFile.cond', 'a file\'s head, at, pending step, history, channels and their protocol '
     'states; the mover waits on it for acks, the answerer for a step (wait)',
     'fuse, watcher, mover, answerer, timer'),
    ('Channel.lock', 'a channel\'s unread replies, poll handle, flags; Channel._readable: a '
     'blocked read waits on it (wait)', 'fuse, mover, answerer, timer'),
    ('WaitingFiles.lock', 'the files with a `want` that waits', 'fuse, watcher, answerer'),
    ('RevDirs.lock', 'a file\'s @<tid>/ directories and their use counts', 'fuse, timer'),
    ('FileIndex.parts_lock', 'which oids each read block was made of', 'fuse, prefetch, watcher'),
    ('OidIndex.lock', 'which visible file each oid belongs to', 'fuse, prefetch, watcher'),
    ('FileIndex.state_lock', 'a file index\'s head, blktab and size as one revision (alone)',
     'fuse, watcher, answerer'),
    ('BlockCache.lock', 'decoded blocks, revision keys resolved to them, loads in flight and '
     'waiting for their turn, for room or, on ZEO, for the uid\'s share of the server\'s time '
     '(shares.py) (wait), prefetched blocks not read yet',
     'fuse, prefetch, timer'),
    ('ReadStream._lock', 'where the last reads of an open data file ended (alone)', 'fuse'),
    ('Prefetcher._lock', 'the prefetch threads started (alone)', 'fuse, timer'),
    ('ObjectRevisions.lock', 'verdicts on a ZBigFile object\'s revisions', 'fuse, answerer'),
    ('Walks.lock', 'walked history kept, requests waiting for a walk (alone; Walks._ended: a '
     'request waits for the walk in progress, which runs with it released (wait))',
     'fuse, answerer, watcher'),
    ('ZLoader._nodes_lock', 'decoded BTree nodes', 'fuse, prefetch, watcher, answerer'),
    ('ZLoader._large_decode_lock', 'the one record over 1 MiB being unpickled (alone)',
     'fuse, prefetch, watcher, answerer'),
    ('KernelCache._lock', 'the inode numbers looked up last, problems logged (alone)',
     'watcher, mover, timer'),
    ('Quota._lock', 'slots of channels / @<tid>/ directories per uid', 'fuse, timer'),
    ('Stats._lock', 'counters', 'every thread'),
    ('Records._requests_lock', 'the count of database requests (alone)', 'every thread'),
    ('WCFS._handles_lock', 'open files and directories', 'fuse'),
    ('Watcher._queue_cond', 'transactions not applied yet (alone; the watcher waits on it)',
     'watcher, poller, prober, ZEO\'s I/O thread'),
    ('Watcher._zhead_cond', 'waiting for zhead (alone, wait)', 'watcher, fuse'),
    ('Pool._cond', 'idle storage instances, the count of waits for one (alone; a use waits '
     'on it for one, within --db-timeout)', 'every thread that asks the database, fuse '
     '(.wcfs/metrics)'),
    ('Watchdog._cond', 'uses of the database being timed (alone; the watchdog waits on it)',
     'every thread that asks the database, watchdog'),
    ('Prefetched._lock', 'records fetched ahead (alone)', 'fuse, watcher'),
    ('opening._fs_magic_lock', 'FileStorage\'s packed_version while one opens (alone; start '
     'only: the I/O of opening a FileStorage runs under it)', 'timer'),
]
# Waits on events, which hold no lock: Loading.done (a second mkdir of a
# file being made visible), BlockCache's claims and loads in flight (a read
# of a block another thread loads).
EVENTS = ['Loading.done', 'BlockCache.load']

RANK = {name: rank for rank, (name, _, _) in enumerate(ORDER)}


class LockOrderError(AssertionError):
    pass


class _Held(threading.local):
    def __init__(self):
        self.locks = []         # RankedLocks this thread holds, in the order taken


_held = _Held()


def _violation(message):
    log.critical('lock order: %s', message)
    raise LockOrderError(message)


class RankedLock:
    """threading.Lock that checks the order of ORDER (lock-ranks knob)."""

    def __init__(self, name):
        self.name = name
        self.rank = RANK[name]
        self._lock = threading.Lock()

    def acquire(self, blocking=True, timeout=-1):
        for held in _held.locks:
            if held.rank >= self.rank:
                _violation('%s taken while %s is held (%s)' % (
                    self.name, held.name, ' > '.join(h.name for h in _held.locks)))
        got = self._lock.acquire(blocking, timeout)
        if got:
            _held.locks.append(self)
        return got

    def release(self):
        _held.locks.remove(self)
        self._lock.release()

    __enter__ = acquire

    def __exit__(self, *exc):
        self.release()

    def locked(self):
        return self._lock.locked()

    # threading.Condition takes these from its lock
    def _is_owned(self):
        return self in _held.locks

    def _release_save(self):
        others = [held for held in _held.locks if held is not self]
        if others:      # checked before the wait lets the lock go: it stays consistent
            _violation('waits on %s while %s is held' % (self.name, others[-1].name))
        self.release()

    def _acquire_restore(self, _state):
        self.acquire()


class CheckedEvent(threading.Event):
    """threading.Event whose wait holds no RankedLock (lock-ranks knob)."""

    def __init__(self, name):
        super().__init__()
        self.name = name

    def wait(self, timeout=None):
        if _held.locks and not self.is_set():
            _violation('waits for %s while %s is held' % (self.name, _held.locks[-1].name))
        return super().wait(timeout)


def lock(name):
    """The lock `name` of ORDER."""
    if knobs.LOCK_RANKS:
        return RankedLock(name)
    if name not in RANK:
        raise KeyError('%s is not in locks.ORDER' % name)
    return threading.Lock()


def condition(name):
    """A condition on the lock `name` of ORDER."""
    return threading.Condition(lock(name))


def event(name):
    """An event of EVENTS, waited for with no lock held."""
    if name not in EVENTS:
        raise KeyError('%s is not in locks.EVENTS' % name)
    return CheckedEvent(name) if knobs.LOCK_RANKS else threading.Event()
