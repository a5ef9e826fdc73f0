"""What every benchmark of bench/ shares: a database server, a ZBigFile, wcfs mounts.

    with Bench('warm read') as b:
        oid = b.write_bigfile(size)     # runzeo started on first use
        mnt = b.mount()                 # wcfs.py ZURL MNT, serving
        ...
        b.unmount(mnt)                  # or left to close()

The server is runzeo, or with Bench(name, db='postgres') a private PostgreSQL
cluster with one RelStorage database (devtools.zeoserver, devtools.pgcluster:
the tests' and the demo's too); a script offers the choice as --db
(add_db_option), and measures its reference on the same one.

`Bench.close()` (the end of the `with`) always ends what was started, by pid:
every wcfs (SIGTERM, then SIGKILL; then `fusermount3 -u -z` if its mount is
still there), then the server, then removes the temporary directories.
"""

import argparse
import ctypes
import functools
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import transaction                                          # noqa: E402
import ZODB                                                 # noqa: E402
import ZODB.FileStorage                                     # noqa: E402
from ZODB.utils import u64                                  # noqa: E402

from devtools import procs                                  # noqa: E402
from devtools.pgcluster import PGServer, last_transaction   # noqa: E402
from devtools.procs import is_mounted                       # noqa: E402
from devtools.served import open_db                         # noqa: E402
from devtools.wcfsproc import WCFS                          # noqa: E402
from devtools.zeoserver import ZEOServer                    # noqa: E402
from wcfs_lib import zbig  # noqa: E402

MiB = 1 << 20
BLKSIZE = 2 * MiB
CHUNK = 1 * MiB                 # read size of the benchmarks
START_TIMEOUT = 30              # seconds for runzeo or wcfs to serve
COMMIT_EVERY = 64 * MiB         # bytes of blocks per transaction while writing
DATABASES = ('zeo', 'postgres')  # what Bench(db=...) can start
PG_DBNAME = 'zodb'


def add_db_option(p):
    p.add_argument('--db', choices=DATABASES, default='zeo',
                   help='the database: a ZEO server (default) or RelStorage '
                        'on a private PostgreSQL cluster')


def parse_args(description, default_size, db_option=False):
    """--size, and --db with db_option (for a script that passes args.db to Bench)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument('--size', type=int, default=default_size, metavar='MiB',
                   help='size of the file in MiB (default %d)' % default_size)
    if db_option:
        add_db_option(p)
    args = p.parse_args()
    if args.size <= 0 or args.size * MiB % BLKSIZE:
        p.error('--size must be a positive multiple of %d' % (BLKSIZE // MiB))
    return args


def kernel():
    return os.uname().release


def mibps(nbytes, seconds):
    return nbytes / MiB / seconds


def verdict(ok):
    return 'OK' if ok else 'MISS'


# wait_for(cond, timeout, what): RuntimeError after timeout s, as every failure here
wait_for = functools.partial(procs.wait_for, error=RuntimeError)


# ---- a wcfs process seen from outside ----

def proc_status(pid):
    """(VmRSS, VmHWM) of pid in bytes (/proc/<pid>/status)."""
    vals = {}
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            name, _, value = line.partition(':')
            if name in ('VmRSS', 'VmHWM'):
                vals[name] = int(value.split()[0]) * 1024      # kB
    return vals['VmRSS'], vals['VmHWM']


def reset_peak_rss(pid):
    """Make VmHWM of pid start again from its VmRSS (proc(5): clear_refs 5)."""
    with open('/proc/%d/clear_refs' % pid, 'w') as f:
        f.write('5')


def cpu_seconds(pid):
    """CPU time (user + system) pid used so far, all its threads, to the
    nanosecond: utime and stime of /proc/<pid>/stat count in 10 ms ticks,
    too coarse for a fraction of a millisecond per transaction."""
    clock = ctypes.c_int()
    err = _libc.clock_getcpuclockid(pid, ctypes.byref(clock))
    if err:
        raise OSError(err, 'clock_getcpuclockid of pid %d' % pid)
    return time.clock_gettime(clock.value)


def read_at(fd):
    """The tid head/at shows, read at offset 0 of its open fd (direct_io:
    always the current content)."""
    return int(os.pread(fd, 64, 0), 16)


def wait_at(fd, tid, timeout, pause=0.0005):
    """Read head/at at fd every `pause` s until it shows tid or later;
    -> time.time() when it did, None after `timeout` s."""
    deadline = time.monotonic() + timeout
    while read_at(fd) < tid:
        if time.monotonic() > deadline:
            return None
        time.sleep(pause)
    return time.time()


def block_data():
    """The content of a block of a benchmark file: random, so incompressible."""
    return os.urandom(BLKSIZE)


def read_all(path, buf):
    """Read path sequentially in len(buf) pieces; -> (bytes read, seconds)."""
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    try:
        n = 0
        t0 = time.perf_counter()
        while True:
            k = os.readv(fd, [view])
            if k == 0:
                break
            n += k
        return n, time.perf_counter() - t0
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
_libc.clock_getcpuclockid.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
MAP_FAILED = ctypes.c_void_p(-1).value
PAGE = os.sysconf('SC_PAGE_SIZE')


def uncached_blocks(path, blksize=BLKSIZE):
    """Blocks of path that are not wholly in the kernel's page cache (mincore
    of a shared read-only mapping: nothing is read, nothing is faulted in)."""
    size = os.path.getsize(path)
    if size == 0:
        return set()
    npages = -(-size // PAGE)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, 1, 1, fd, 0)      # PROT_READ, MAP_SHARED
        if addr in (None, MAP_FAILED):
            raise OSError(ctypes.get_errno(), 'mmap %s' % path)
        try:
            vec = (ctypes.c_ubyte * npages)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), 'mincore %s' % path)
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)
    per_blk = blksize // PAGE
    return {i // per_blk for i in range(npages) if not vec[i] & 1}


def warm_up(path, buf, passes=5):
    """Read path until all of it is in the page cache (this machine drops a
    little of every file's cache now and then); -> blocks still not cached."""
    for _ in range(passes):
        read_all(path, buf)
        missing = uncached_blocks(path)
        if not missing:
            break
    return missing


def read_stats(mountpoint):
    """.wcfs/stats as {name: value}, numbers as int."""
    stats = {}
    with open(os.path.join(mountpoint, '.wcfs', 'stats')) as f:
        for line in f:
            name, _, value = line.rstrip('\n').partition(': ')
            stats[name] = int(value) if value.isdigit() else value
    return stats


class Bench:
    """Temporary directory, database server, wcfs mounts of one benchmark run;
    see the module doc. db: one of DATABASES."""

    def __init__(self, name, db='zeo', zeo_options=None):
        if db not in DATABASES:
            raise ValueError('%s: no database %r (%s)' % (name, db, ', '.join(DATABASES)))
        self.name = name
        self.kind = db
        self.zeo_options = zeo_options or {}    # keys of runzeo's <zeo> section
        self.dir = Path(tempfile.mkdtemp(prefix='wcfs-bench-'))
        self.server = None                      # a ZEOServer or a PGServer, once started
        self.addr = None
        self.zurl = None
        self._db = None
        self.mounts = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- the database ----

    @property
    def cluster(self):
        """The PostgreSQL cluster of db='postgres', once started; else None."""
        return getattr(self.server, 'cluster', None)

    def start_db(self):
        """Start the server of self.kind; -> its ZURL."""
        if self.kind == 'postgres':
            self.server = PGServer.private(PG_DBNAME)
        else:
            self.server = ZEOServer(self.dir, self.zeo_options, error=RuntimeError)
            self.server.start(START_TIMEOUT)
        self.addr = self.server.addr
        self.zurl = self.server.zurl
        return self.zurl

    def db(self):
        """The writer's ZODB.DB on the server (started on first use)."""
        if self._db is None:
            self._db = self.new_db()
        return self._db

    def new_db(self):
        """A new ZODB.DB on the server (started on first use): a client of its
        own, with empty caches. The caller closes it."""
        if self.zurl is None:
            self.start_db()
        return self.server.new_db()

    def file_db(self):
        """A ZODB.DB straight on the Data.fs that runzeo will serve: writing
        hundreds of thousands of objects is several times faster than through
        ZEO. Only before runzeo starts; the caller closes it first."""
        if self.kind != 'zeo':
            raise RuntimeError('%s: no Data.fs to write with --db %s' % (self.name, self.kind))
        if self.server is not None:
            raise RuntimeError('%s: runzeo already serves %s' % (self.name, self.dir / 'Data.fs'))
        return open_db(ZODB.FileStorage.FileStorage(str(self.dir / 'Data.fs')))

    def close_db(self):
        if self._db is not None:
            self._db.close()
            self._db = None

    def write_bigfile(self, size, copy_to=None):
        """Commit root['f'] = a ZBigFile of size bytes in BLKSIZE ZBlk0 blocks
        of `block_data`; also write the same bytes to the file copy_to if given.
        -> the ZBigFile's oid."""
        db = self.db()
        conn = db.open()
        out = open(copy_to, 'wb') if copy_to else None
        try:
            f = conn.root()['f'] = zbig.ZBigFile(BLKSIZE)
            transaction.commit()
            pending = 0
            for blk in range(size // BLKSIZE):
                data = block_data()
                f.write_block(blk, data)
                if out:
                    out.write(data)
                pending += len(data)
                if pending >= COMMIT_EVERY:
                    transaction.commit()
                    conn.cacheMinimize()
                    pending = 0
            transaction.commit()
            conn.cacheMinimize()
            return u64(f._p_oid)
        finally:
            if out:
                out.close()
            conn.close()

    def write_block(self, blk, data):
        """Commit new content for block blk of root['f']; -> the transaction's tid."""
        db = self.db()
        conn = db.open()
        try:
            conn.root()['f'].write_block(blk, data)
            transaction.commit()
            return u64(last_transaction(db))
        finally:
            conn.close()

    # ---- wcfs ----

    def mount(self, *args):
        """Start wcfs.py on a fresh mount point; -> its WCFS once it serves."""
        n = len(self.mounts)
        mnt = WCFS(self.zurl, self.dir / ('mnt%d' % n), self.dir / ('wcfs%d.log' % n), args,
                   error=RuntimeError)
        self.mounts.append(mnt)
        return mnt.wait_serving(START_TIMEOUT)

    def unmount(self, mnt):
        mnt.cleanup()

    # ---- the end ----

    def close(self):
        for mnt in self.mounts:
            try:
                mnt.cleanup()
            except Exception as e:
                print('%s: stopping wcfs %d: %s' % (self.name, mnt.proc.pid, e), file=sys.stderr)
        try:
            self.close_db()
        finally:
            if self.server is not None:
                self.server.close()
            if not any(is_mounted(m.path) for m in self.mounts):
                shutil.rmtree(self.dir, ignore_errors=True)
            else:
                print('%s: left %s: still mounted' % (self.name, self.dir), file=sys.stderr)


def ack_haves(path, cat, n, on_have):
    """The client side of a channel benchmark: open n channels of path,
    want cat on each, then until stdin closes ack every `have` at once
    (`wait` lines aside) and call on_have(fd, tid, mono, wall, t_ack).

    mono and wall are time.monotonic() and time.time() as poll(2) returned
    with the line, t_ack time.time() after the ack was written: the
    benchmarks time from there, so nothing else runs in between."""
    fds = [os.open(path, os.O_RDWR | os.O_NONBLOCK) for _ in range(n)]
    p = select.poll()
    p.register(0, select.POLLIN)
    for fd in fds:
        p.register(fd, select.POLLIN)
        os.write(fd, b'want %s\n' % cat.encode())
    bufs = dict.fromkeys(fds, b'')
    while True:
        events = p.poll(1000)
        mono, wall = time.monotonic(), time.time()
        for fd, _ in events:
            if fd == 0:
                if not os.read(0, 100):
                    return
                continue
            try:
                data = os.read(fd, 1 << 20)
            except BlockingIOError:
                continue
            if not data:
                raise RuntimeError('client: EOF on %s' % path)
            *lines, bufs[fd] = (bufs[fd] + data).split(b'\n')
            for line in lines:
                words = line.decode('ascii').split(' ')
                if words[0] != 'have':
                    raise RuntimeError('client: unexpected reply %r' % line)
                if words[2:] == ['wait']:
                    continue
                os.write(fd, b'ack\n')
                on_have(fd, words[1], mono, wall, time.time())


class ClientProcess:
    """A client process (argv), with a line reader of its stdout that never
    blocks for good; stop() closes its stdin and waits for it."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._buf = b''

    def line(self, timeout):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b'\n' not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise RuntimeError('client %d: nothing within %s s' % (self.proc.pid, timeout))
            data = os.read(fd, 4096)
            if not data:
                raise RuntimeError('client %d exited with %s' % (self.proc.pid, self.proc.wait()))
            self._buf += data
        line, _, self._buf = self._buf.partition(b'\n')
        return line.decode()

    def stop(self, timeout=10):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
