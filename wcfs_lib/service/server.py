"""The server: opens the database, mounts, serves, unmounts.

Threads: the main thread owns signals and runs `serve()` (timers, shutdown);
one thread runs libfuse's loop (which starts its own workers, the FUSE
threads); the watcher thread follows the database; a mover thread per file
applies a step that waits for acks, and an answerer thread per file answers
the `want`s whose δR needs the database; up to prefetch.THREADS threads load the
blocks after sequential reads; on an MVCC database (RelStorage) a poller
thread asks it for new commits and a watchdog thread cuts the connection
of a use that outlasts --db-timeout (zstorage/mvcc.py); on ZEO a prober
thread pings the server and aborts a connection that hangs
(zstorage/zeo.py). Shutdown is one path, `stop()` in the `finally` of
`serve()`, whatever asked for it (SIGTERM, SIGINT, autoexit, an external
unmount, a failing timer task): it joins every one of these threads,
holding no lock, then closes the database. Signal handlers only record
(`request_*`); the timer loop acts.

Locks and waits: the one list, their order, what each guards and which
threads take them, is locks.ORDER (wcfs_lib/locks.py); with the lock-ranks
knob every lock checks it.
"""

import ctypes
import ctypes.util
import logging
import os
import threading
import time

from .. import knobs, procfs, zurl
from ..files.bigfile import MAX_REVDIRS, BigFile
from ..files.table import BigFileTable
from ..files.blockcache import BlockCache
from ..files.channel import Channel
from ..files.prefetch import Prefetcher
from ..files.reads import FileReads
from ..files.shares import Shares
from ..files.subscription import KillPolicy
from ..follow.oidindex import OidIndex
from ..follow.watcher import Watcher
from ..kernel import fs, mount
from ..kernel.fs_binding import FUSE, PollHandles, libfuse
from ..kernel.kcache import KernelCache
from ..zodb import zformat, zstorage
from . import metrics
from .model import Model
from .quota import Quota
from .stats import Stats

log = logging.getLogger('wcfs')

# Open head/invalidations; beyond, or past one uid's share (quota.py), EMFILE.
# One uid alone gets four fifths, 1760: it can still block 1000 in read (SPEC §4.6).
MAX_CHANNELS = 2200
MAX_THREADS = 2400          # every channel blocked in read, and data reads beside them
READ_AHEAD_KB = 1024        # lets the kernel send 1 MiB reads
TICK = 1.0                  # seconds between two runs of the timers
FUSE_STOP_TIMEOUT = 30      # seconds the FUSE loop has to end once unmounted
THREAD_EXIT_GRACE = 1.0     # seconds a joined thread may take to leave /proc/self/task


class Malloc:
    """Give freed block buffers back to the system.

    Decoded 2 MiB blocks and ZEO's message buffers come from the heap once
    glibc's dynamic mmap threshold has grown past them (serving them from
    fresh mmaps instead halves cold reads: every page faults in again), and
    the heap keeps what was freed: trim it on the timer, and keep to two
    arenas so that the worker threads do not each hold one."""

    M_ARENA_MAX = -8    # mallopt parameter, from malloc.h

    def __init__(self):
        try:
            self._libc = ctypes.CDLL(ctypes.util.find_library('c'))
            self._libc.mallopt(self.M_ARENA_MAX, 2)
        except (OSError, AttributeError) as e:
            log.info('mallopt: %s', e)
            self._libc = None

    def trim(self):
        if self._libc is not None:
            self._libc.malloc_trim(0)


class StartError(Exception):
    """wcfs cannot start: a one-line reason for the user; exit 1."""


# What the command line (wcfs.py, which imports only this layer) tells
# apart: a ZURL it cannot use (exit 2), a start that failed (exit 1).
UsageError = zstorage.UsageError
START_ERRORS = (zstorage.OpenError, mount.MountError, StartError)


def check_environment():
    """UsageError for a WCFS_DEBUG that names an unknown knob (knobs.py)."""
    if knobs.ERROR is not None:
        raise UsageError(knobs.ERROR)


def check_zurl(zurl):
    """UsageError for a ZURL that names no database wcfs can open; run
    before detaching, so that the caller sees it."""
    zstorage.resolve(zurl)


def _time_of(tid):
    """The time of transaction `tid` (seconds since the epoch); 0 for none
    yet (an empty database), as Prometheus' timestamps say "never"."""
    return zformat.tid_time(tid) if tid else 0


class Server:
    def __init__(self, opts, reopen_log=lambda: None):
        self.opts = opts
        self.reopen_log = reopen_log            # SIGHUP: called by the timer loop
        self._reopen_log_asked = False          # set by the SIGHUP handler
        self._fuse_dev = None                   # the mount's device, for an abort
        self._threads_before = set()            # thread ids when start() began
        self.zurl = opts.zurl
        self.zurl_shown = zurl.masked(opts.zurl)    # in .wcfs/zurl and the log
        self.mountpoint = os.path.realpath(opts.mountpoint)
        self.shutdown = threading.Event()
        self._mounted = threading.Event()
        self._fuse_error = None
        self.stats = Stats()
        self.table = BigFileTable()
        self.stats.gauge('bigfiles', self.table.count)
        self.stats.set('subscribed', 0)         # counted by the channels themselves
        self.database = None
        self.channel_quota = Quota('channels', MAX_CHANNELS)
        self.revdir_quota = Quota('revision directories', MAX_REVDIRS)
        self.stats.gauge('channels', self.channel_quota.used)
        self.stats.gauge('revdirs', self.revdir_quota.used)
        self._database_since = time.monotonic()     # when `database` of the stats last changed

    # ---- start ----

    def start(self):
        """Open the database and mount; -> once the mount serves."""
        self._threads_before = set(procfs.threads())
        self.malloc = Malloc()
        mount.check_mountpoint(self.mountpoint)
        self.database = zstorage.open_database(
            self.zurl, self.opts.db_timeout, connections=self.opts.db_connections,
            poll_interval=self.opts.db_poll_interval)
        self.records = zstorage.Records(self.database, self.opts.db_timeout)
        self.loader = zformat.ZLoader(self.records)
        self.stats.gauge('db_requests', lambda: self.records.requests)
        self.stats.gauge('history_walks', lambda: self.records.walks.walks)
        self.stats.gauge('history_walked', lambda: self.records.walks.walked)
        self.kcache = KernelCache(libfuse, self.mountpoint)
        self.blocks = BlockCache(shares=Shares() if self.database.serial else None)
        self.prefetch = Prefetcher(self.blocks)
        self.stats.gauge('prefetched_unused', lambda: self.blocks.unused)
        self.stats.gauge('loads_rested', lambda: self.blocks.rested)
        self.kill = KillPolicy(self.mountpoint, self.opts.kill_timeout, self.stats)
        try:
            self.watcher = Watcher(self.loader, self.table, self.stats, OidIndex(), self._make_file)
        except zstorage.DatabaseUnavailable as e:
            self._close_storage()
            raise StartError('%s: %s' % (self.zurl_shown, e)) from None
        self.stats.set('zhead', '%016x' % self.watcher.zhead)
        self.watcher.start()
        self.ops = fs.WCFS(Model(self), debug=self.opts.debug)
        self._fuse_thread = threading.Thread(target=self._run_fuse, name='fuse', daemon=True)
        self._fuse_thread.start()
        while not self._mounted.wait(0.1):
            if not self._fuse_thread.is_alive():
                self._close_storage()
                raise StartError('%s: mount failed: %s' % (self.mountpoint, self._fuse_error or
                                 'see the log'))
        self._fuse_dev = os.stat(self.mountpoint).st_dev
        mount.set_read_ahead(self.mountpoint, READ_AHEAD_KB)
        log.info('serving %s on %s, zhead %016x', self.zurl_shown, self.mountpoint, self.watcher.zhead)

    def _make_file(self, oid, index):
        """The BigFile of a file made visible, and what it shares with the others."""
        applied = self._applied
        reads = FileReads(oid, index, self.blocks, self.prefetch, self.stats, applied)
        return BigFile(oid, index, reads, kcache=self.kcache, kill=self.kill, stats=self.stats,
                       shutdown=self.shutdown, waiting=self.table.waiting, applied=applied)

    def _applied(self):
        """The last transaction the watcher applied to every file."""
        return self.watcher.applied

    def _run_fuse(self):
        # max_idle_threads: libfuse 3.14 warns about its unset default otherwise.
        # No libfuse debug: it writes to stderr, which a daemon has not; with
        # --debug, fs logs every request through the log instead.
        kwargs = dict(foreground=True, raw_fi=True, fsname='wcfs', subtype='wcfs',
                      max_threads=MAX_THREADS, max_idle_threads=64)
        kwargs.update(self.opts.fuse_options)
        try:
            FUSE(self.ops, self.mountpoint, **kwargs)
        except Exception as e:
            self._fuse_error = e
            log.error('FUSE loop: %s', e)
        finally:
            self.shutdown.set()

    def on_mounted(self):
        """From the FUSE init handler: the kernel talks to us."""
        self.kcache.bind()
        self._mounted.set()

    # ---- serving ----

    def serve(self):
        """Run timers until shutdown is requested; then unmount and close,
        also when a timer task failed. -> exit code: 0, or 1 after a failure."""
        try:
            while not self.shutdown.wait(TICK):
                self._tick()
                if self._idle_too_long():
                    log.info('nothing open under %s for %gs: exiting (--autoexit)',
                             self.mountpoint, self.opts.autoexit)
                    break
            return 0
        except Exception:
            log.exception('timer loop of %s failed: shutting down', self.mountpoint)
            return 1
        finally:
            self.stop()

    def _tick(self):
        self.act_on_signals()
        self._expire_revdirs()
        self._check_database()
        self.blocks.trim()
        self.malloc.trim()

    def _check_database(self):
        state = 'connected' if self.records.connected() else 'unreachable'
        if state != self.stats.get('database'):
            (log.info if state == 'connected' else log.error)('database %s: %s', self.zurl_shown, state)
            self.stats.set('database', state)
            self._database_since = time.monotonic()

    def _idle_too_long(self):
        if not self.opts.autoexit:
            return False
        opens, last_close = self.ops.usage()
        return opens == 0 and time.monotonic() - last_close >= self.opts.autoexit

    # ---- signals: the handlers only record, the timer loop acts ----

    def request_shutdown(self):
        self.shutdown.set()

    def request_log_reopen(self):
        """SIGHUP: reopen the log at the next tick (a handler runs between
        two bytecodes of the main thread, maybe in the middle of writing a
        log line: it must not close the file under it)."""
        self._reopen_log_asked = True

    def act_on_signals(self):
        """What the handlers recorded since the last tick (timer loop)."""
        if self._reopen_log_asked:
            self._reopen_log_asked = False
            self.reopen_log()

    def _expire_revdirs(self):
        for bf in self.table.files():
            for rd in bf.revdirs.expire(self.opts.revdir_timeout):
                self.revdir_quota.release(rd.uid)
                log.debug('bigfile/%s/%s: removed after %ss unused', bf.name, rd.name,
                          self.opts.revdir_timeout)
                self.kcache.forget_entry('bigfile/' + bf.name, rd.name)

    def stop(self):
        """The one way out (SIGTERM, SIGINT, autoexit, an external unmount, a
        failure): unmount, then end every thread wcfs started, each once
        nothing can give it work any more (FUSE > watcher > movers >
        prefetch), then close the database, which the threads used."""
        self.shutdown.set()
        self._wake_channels()
        self._stop_fuse()
        self.watcher.stop()
        for bf in self.table.files():
            if bf.mover is not None:
                bf.mover.join()
        self.prefetch.stop()
        self._close_storage()
        log.info('unmounted %s', self.mountpoint)
        self._log_threads_left()

    def _stop_fuse(self):
        """Unmount and wait for the FUSE loop. A request stuck past
        FUSE_STOP_TIMEOUT (in the database) is cut off by aborting the
        connection; its thread then has the database's own timeout to
        return before the database is closed under it."""
        if self._fuse_thread.is_alive():
            mount.unmount(self.mountpoint)
            self._fuse_thread.join(FUSE_STOP_TIMEOUT)
        if self._fuse_thread.is_alive() and self._fuse_dev is not None:
            log.warning('unmount %s: FUSE requests still busy after %ss: aborting the connection',
                        self.mountpoint, FUSE_STOP_TIMEOUT)
            mount.abort_connection(self._fuse_dev)
            self._fuse_thread.join(self.opts.db_timeout)
        if self._fuse_thread.is_alive():
            log.error('unmount %s: the FUSE loop did not end; closing the database under it',
                      self.mountpoint)

    def _log_threads_left(self):
        """Say which threads started since start() outlive the shutdown: none
        should (threads from before, e.g. a numerical library's, are not ours).
        A thread just joined may still be leaving the kernel's list: they
        have THREAD_EXIT_GRACE to go."""
        deadline = time.monotonic() + THREAD_EXIT_GRACE
        while True:
            left = {tid: comm for tid, comm in procfs.threads().items()
                    if tid not in self._threads_before}
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        if left:
            names = {t.native_id: t.name for t in threading.enumerate()}
            log.warning('threads still running at exit: %s',
                        ', '.join(sorted(names.get(tid, comm) for tid, comm in left.items())))

    def _close_storage(self):
        try:
            self.database.close()
        except Exception as e:
            log.warning('closing %s: %s', self.zurl_shown, e)

    # ---- for the filesystem ----

    def metrics_text(self):
        """.wcfs/metrics: the stats and the database's state, from what
        wcfs knows already: any user may read it in a loop, and no read
        of it asks the database anything."""
        values = self.stats.values()
        db = self.database
        waits, waited = db.pool_waits()
        reachable = values['database'] == 'connected'
        state = metrics.DatabaseState(
            reachable=reachable,
            unreachable_for=0 if reachable else round(time.monotonic() - self._database_since),
            zhead_time=_time_of(int(values['zhead'], 16)),
            last_time=_time_of(db.heard_last_tid()),
            queued=self.watcher.queued(), pool_waits=waits, pool_waited=waited,
            following=db.following(), modes=zstorage.FOLLOWING_MODES)
        return metrics.render(values, state)

    def last_tid(self):
        """The database's last transaction, asking the server (never stale)."""
        return max(self.watcher.zhead, self.records.last_tid())

    def committed(self, tid):
        """Has the database committed `tid`? The server is asked only for a
        tid past what the watcher knows."""
        return tid <= self.watcher.zhead or tid <= self.last_tid()

    def open_channel(self, bf, caller_tid, uid):
        """A new channel of `bf` for user `uid`; None when MAX_CHANNELS are
        open, or `uid` holds its share (quota.py): EMFILE. channel_released(uid)
        gives its slot back."""
        refused = self.channel_quota.acquire(uid)
        if refused is not None:
            log.warning('open bigfile/%s/head/invalidations: EMFILE: %s', bf.name, refused)
            return None
        ch = Channel(bf, self.shutdown, PollHandles, self.last_tid, self.stats,
                     debug=self.opts.debug)
        ch.opener = procfs.thread_process(caller_tid)
        bf.subscribers.add_channel(ch)
        return ch

    def channel_released(self, uid):
        self.channel_quota.release(uid)

    def _wake_channels(self):
        for bf in self.table.files():
            with bf.cond:
                chans = list(bf.subscribers.channels)
                bf.cond.notify_all()
            for ch in chans:
                ch.wake_shutdown()
