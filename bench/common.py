"""What every benchmark of bench/ shares: a database server, a ZBigFile, wcfs mounts.

    with Bench('warm read') as b:
        oid = b.write_bigfile(size)     # runzeo started on first use
        mnt = b.mount()                 # wcfs.py ZURL MNT, serving
        ...
        b.unmount(mnt)                  # or left to close()

The server is runzeo, or with Bench(name, db='postgres') a private PostgreSQL
cluster (wcfs_lib.localpg) with one RelStorage database; a script offers the
choice as --db (add_db_option), and measures its reference on the same one.

`Bench.close()` (the end of the `with`) always ends what was started, by pid:
every wcfs (SIGTERM, then SIGKILL; then `fusermount3 -u -z` if its mount is
still there), then the server, then removes the temporary directories.
"""

import argparse
import ctypes
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import transaction                                          # noqa: E402
import ZEO.ClientStorage                                    # noqa: E402
import ZODB                                                 # noqa: E402
import ZODB.FileStorage                                     # noqa: E402
from ZODB.utils import u64                                  # noqa: E402

from wcfs_lib.localpg import PostgresCluster, last_transaction  # noqa: E402
from wcfs_lib.localproc import free_port, is_mounted, terminate  # noqa: E402
from wcfs_lib import zbig  # noqa: E402

MiB = 1 << 20
BLKSIZE = 2 * MiB
CHUNK = 1 * MiB                 # read size of the benchmarks
RUNZEO = Path(sys.executable).parent / 'runzeo'
START_TIMEOUT = 30              # seconds for runzeo or wcfs to serve
STOP_TIMEOUT = 15               # seconds for a process to exit after SIGTERM
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


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError('timed out after %s s waiting for %s' % (timeout, what))
        time.sleep(0.02)


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


class Mount:
    """One wcfs.py process serving one mount point."""

    def __init__(self, zurl, path, logpath, args):
        self.path = str(path)
        self.logpath = logpath
        os.mkdir(self.path)
        with open(logpath, 'ab') as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / 'wcfs.py'), *args, zurl, self.path],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def log(self):
        try:
            return Path(self.logpath).read_text(errors='replace')
        except FileNotFoundError:
            return ''

    def serving(self):
        if self.proc.poll() is not None:
            raise RuntimeError('wcfs exited with %s:\n%s' % (self.proc.returncode, self.log()))
        try:
            with open(os.path.join(self.path, '.wcfs', 'zurl')) as f:
                return f.read() != ''
        except OSError:
            return False

    def bigfile(self, oid):
        """mkdir bigfile/<oid> unless it is there; -> its path."""
        path = os.path.join(self.path, 'bigfile', '%016x' % oid)
        if not os.path.isdir(path):
            os.mkdir(path)
        return path

    def stop(self):
        terminate(self.proc)
        if is_mounted(self.path):
            subprocess.run(['fusermount3', '-u', '-z', self.path], capture_output=True)


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
        self.addr = None
        self.zurl = None
        self.zeo = None
        self.cluster = None
        self._db = None
        self.mounts = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- the database ----

    def start_db(self):
        """Start the server of self.kind; -> its ZURL."""
        return self.start_postgres() if self.kind == 'postgres' else self.start_zeo()

    def start_postgres(self):
        self.cluster = PostgresCluster()
        self.cluster.start()
        self.cluster.create_database(PG_DBNAME)
        self.addr = (self.cluster.host, self.cluster.port)
        self.zurl = self.cluster.zurl(PG_DBNAME)
        return self.zurl

    def start_zeo(self):
        self.addr = ('127.0.0.1', free_port())
        self.zurl = 'zeo://%s:%d' % self.addr
        argv = [str(RUNZEO), '-a', '%s:%d' % self.addr, '-f', str(self.dir / 'Data.fs')]
        if self.zeo_options:
            argv = [str(RUNZEO), '-C', str(self._zeo_conf())]
        with open(self.dir / 'runzeo.log', 'ab') as log:
            self.zeo = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT)

        def accepting():
            if self.zeo.poll() is not None:
                raise RuntimeError('runzeo exited with %s' % self.zeo.returncode)
            try:
                socket.create_connection(self.addr, timeout=1).close()
            except OSError:
                return False
            return True

        wait_for(accepting, START_TIMEOUT, 'runzeo on %s' % self.zurl)
        return self.zurl

    def _zeo_conf(self):
        """runzeo's configuration: the address, zeo_options, the Data.fs."""
        path = self.dir / 'zeo.conf'
        keys = ''.join('  %s %s\n' % kv for kv in self.zeo_options.items())
        path.write_text('<zeo>\n  address %s:%d\n%s</zeo>\n<filestorage>\n  path %s\n'
                        '</filestorage>\n' % (*self.addr, keys, self.dir / 'Data.fs'))
        return path

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
        if self.cluster is not None:
            return ZODB.DB(self.cluster.storage(PG_DBNAME))
        return ZODB.DB(ZEO.ClientStorage.ClientStorage(self.addr))

    def file_db(self):
        """A ZODB.DB straight on the Data.fs that runzeo will serve: writing
        hundreds of thousands of objects is several times faster than through
        ZEO. Only before runzeo starts; the caller closes it first."""
        if self.kind != 'zeo':
            raise RuntimeError('%s: no Data.fs to write with --db %s' % (self.name, self.kind))
        if self.zeo is not None:
            raise RuntimeError('%s: runzeo already serves %s' % (self.name, self.dir / 'Data.fs'))
        return ZODB.DB(ZODB.FileStorage.FileStorage(str(self.dir / 'Data.fs')))

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
        """Start wcfs.py on a fresh mount point; -> Mount once it serves."""
        n = len(self.mounts)
        mnt = Mount(self.zurl, self.dir / ('mnt%d' % n), self.dir / ('wcfs%d.log' % n), args)
        self.mounts.append(mnt)
        wait_for(mnt.serving, START_TIMEOUT, 'wcfs to serve at %s' % mnt.path)
        return mnt

    def unmount(self, mnt):
        mnt.stop()

    # ---- the end ----

    def close(self):
        for mnt in self.mounts:
            try:
                mnt.stop()
            except Exception as e:
                print('%s: stopping wcfs %d: %s' % (self.name, mnt.proc.pid, e), file=sys.stderr)
        try:
            self.close_db()
        finally:
            if self.zeo is not None:
                terminate(self.zeo)
            if self.cluster is not None:
                self.cluster.destroy()
            if not any(is_mounted(m.path) for m in self.mounts):
                shutil.rmtree(self.dir, ignore_errors=True)
            else:
                print('%s: left %s: still mounted' % (self.name, self.dir), file=sys.stderr)


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
