"""Helpers shared by the mount tests: write ZBigFiles through a database fixture,
read what wcfs shows of them, and ask the kernel which pages it caches.

Writer       one ZODB connection (with its own transaction manager) to the
             zeo fixture's database: add ZBigFiles, commit, get tids.
stats        `.wcfs/stats` of a mount as a dict.
head_at      `head/at` of a file as an int; wait_head waits until it is a tid.
resident     which pages of a file the kernel page cache holds (mincore).
Holder       another real process that keeps a file mmapped, every page touched.
assert_serving, cached, expected_modes, vmrss
             what a mount test checks of a wcfs: alive without a traceback,
             blocks in the page cache, modes as SPEC §3 says, a process's RSS.
AS_NOBODY    how to run a process as the user nobody (subprocess arguments).
"""

import ctypes
import errno
import ctypes.util
import mmap
import os
import pwd
import subprocess
import sys
import textwrap
import time

import transaction
from ZODB.TimeStamp import TimeStamp
from ZODB.utils import p64, u64

from devtools.pgcluster import last_transaction
from devtools.procs import wait_for
from devtools.wcfsproc import WCFS
from devtools.py2str import zbigfile as py2str_zbigfile
from wcfs_lib.zodb import zformat

PAGE = mmap.PAGESIZE
KiB = 1 << 10
MiB = 1 << 20


class Writer:
    """Commits to the zeo fixture's database through a connection of its own."""

    def __init__(self, db):
        self.db = db
        self.tm = transaction.TransactionManager()
        self.conn = db.open(self.tm)
        self.root = self.conn.root()

    def commit(self):
        """Commit what was changed; -> the tid of the database's last transaction."""
        self.tm.commit()
        return u64(last_transaction(self.db))

    def add(self, obj, name=None):
        """Store obj under the root and commit; -> (oid, tid)."""
        self.root[name or 'obj%d' % len(self.root)] = obj
        tid = self.commit()
        return u64(obj._p_oid), tid

    def new_file(self, blksize, blocks=(), kind='ZBlk0', py2str=False):
        """A ZBigFile with blocks {blk: data} (or [(blk, data)]), committed; -> (f, oid, tid)."""
        f = py2str_zbigfile(blksize, py2str)
        for blk, data in dict(blocks).items():
            f.write_block(blk, data, kind)
        oid, tid = self.add(f)
        return f, oid, tid

    def touch_other(self):
        """Commit a transaction that changes no ZBigFile; -> its tid."""
        self.root['counter'] = self.root.get('counter', 0) + 1
        return self.commit()


class LaunchedWCFS(WCFS):
    """wcfs on a fresh mount point under tmp_path, run by a test's own
    launcher: `python SCRIPT ARGS... ZURL MOUNTPOINT` (a launcher changes wcfs
    in its own process only, to widen a race); always unmounted."""

    def __init__(self, script_args, zurl, tmp_path):
        super().__init__(zurl, tmp_path / 'mnt', tmp_path / 'wcfs.log', launcher=script_args)
        try:
            self.wait_serving()
        except BaseException:
            self.close()
            raise

    def close(self):
        self.cleanup()
        print('--- wcfs log:\n%s' % self.log())


def close_child(proc, timeout=10):
    """Close a child's stdin (its cue to end) and wait for it; kill it past timeout."""
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def assert_one_line_error(run, status, *names):
    """A process (CompletedProcess, or what has returncode and stderr text)
    exited with status, with one line on stderr that names each of names."""
    lines = run.stderr.splitlines()
    assert run.returncode == status, run.stderr
    assert 'Traceback' not in run.stderr, run.stderr
    assert len(lines) == 1, run.stderr
    for name in names:
        assert name in lines[0], run.stderr


def assert_read_eio(path):
    """Reading the file at path fails with EIO."""
    try:
        read_bytes(path)
    except OSError as e:
        assert e.errno == errno.EIO, '%s: %s' % (path, e)
    else:
        raise AssertionError('%s: read, EIO expected' % path)


class Child:
    """A child process driven through its stdin (`proc`); closing its stdin
    ends it (close_child). A context manager."""

    proc = None

    def close(self):
        if self.proc is not None:
            close_child(self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def debug_knobs(*knobs):
    """WCFS_DEBUG with `knobs` added to the suite's own (conftest.py)."""
    return ','.join(filter(None, [os.environ.get('WCFS_DEBUG', '')] + list(knobs)))


def block_bytes(loader, zblk, at, blksize):
    """-> (block `zblk` as of `at` as blksize bytes, the oids it is made of)."""
    data, oids = loader.load_block_data(zblk, at, blksize)
    return bytes(data.view()).ljust(blksize, b'\0'), oids


def index_mapping(index):
    """-> {blk: ZBlk oid} of a whole file from its FileIndex's nodes."""
    out = {}
    for node in index.nodes.values():
        if isinstance(node, zformat.Bucket):
            out.update(zip(node.keys, node.oids))
    return out


def tid_time(tid):
    return TimeStamp(p64(tid)).timeTime()


def hex16(n):
    return '%016x' % n


def read_bytes(path):
    with open(path, 'rb') as f:
        return f.read()


def read_head(mountpoint, oid):
    """mkdir bigfile/<oid> (unless there) and read its head/data."""
    d = os.path.join(mountpoint, 'bigfile', '%016x' % oid)
    if not os.path.isdir(d):
        os.mkdir(d)
    with open(os.path.join(d, 'head', 'data'), 'rb') as f:
        return f.read()


def process_state(pid):
    """The state letter of process pid (R, S, Z, ...), or None if it is gone."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0]
    except FileNotFoundError:
        return None


def vmrss(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * KiB
    raise AssertionError('no VmRSS for pid %d' % pid)


def cached(path, blksize):
    """Blocks of path fully in the page cache, and blocks of it not at all."""
    res = resident_blocks(path, blksize)
    return ({blk for blk, r in res.items() if r == 'all'},
            {blk for blk, r in res.items() if r == 'none'})


def assert_serving(mnt):
    """wcfs runs, and its log holds no traceback (errors it answered are
    logged in one line each)."""
    assert mnt.proc.poll() is None, 'wcfs exited with %s' % mnt.proc.returncode
    log = mnt.log()
    assert 'Traceback' not in log and 'Logging error' not in log, log[-4000:]


def expected_modes(mountpoint, fdir, revdir):
    """{path: mode as `ls -l` shows it} of every kind of path of a mount (SPEC §3)."""
    p = mountpoint
    return {
        p: 'dr-xr-xr-x',
        p + '/.wcfs': 'dr-xr-xr-x',
        p + '/.wcfs/zurl': '-r--r--r--',
        p + '/.wcfs/stats': '-r--r--r--',
        p + '/.wcfs/metrics': '-r--r--r--',
        p + '/bigfile': 'drwxrwxrwt',
        fdir: 'drwxrwxrwt',
        fdir + '/head': 'dr-xr-xr-x',
        fdir + '/head/data': '-r--r--r--',
        fdir + '/head/at': '-r--r--r--',
        fdir + '/head/invalidations': '-rw-rw-rw-',
        revdir: 'dr-xr-xr-x',
        revdir + '/data': '-r--r--r--',
    }


def stats(mnt):
    """`.wcfs/stats` of mount mnt -> {name: value (str)}."""
    out = {}
    for line in read_bytes(os.path.join(mnt.path, '.wcfs', 'stats')).decode().splitlines():
        name, sep, value = line.partition(': ')
        assert sep, 'stats line without ": ": %r' % line
        out[name] = value
    return out


def stat_int(mnt, name):
    return int(stats(mnt)[name])


def head_at(fdir):
    """head/at of the file directory fdir, as an int."""
    text = read_bytes(os.path.join(fdir, 'head', 'at')).decode()
    assert text.endswith('\n') and len(text) == 17, repr(text)
    return int(text, 16)


def wait_head(fdir, tid, timeout=10, spin=False):
    """Wait until head/at of fdir is tid.

    spin: read head/at again and again without sleeping in between, to act
    the very moment it moves.
    """
    what = '%s/head/at to become %016x' % (fdir, tid)
    if not spin:
        wait_for(lambda: head_at(fdir) == tid, timeout, what)
        return
    deadline = time.monotonic() + timeout
    while head_at(fdir) != tid:
        if time.monotonic() > deadline:
            raise AssertionError('timed out after %s s waiting for %s' % (timeout, what))


# ---- the kernel page cache ----

_libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_MAP_FAILED = ctypes.c_void_p(-1).value


def resident(path):
    """-> list of bools, one a page of file path: is it in the kernel page cache?

    Maps the file (MAP_SHARED, PROT_READ) without touching it and asks mincore.
    """
    with open(path, 'rb') as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return []
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        if addr == _MAP_FAILED:
            e = ctypes.get_errno()
            raise OSError(e, 'mmap %s: %s' % (path, os.strerror(e)))
        try:
            npages = -(-size // PAGE)
            vec = (ctypes.c_ubyte * npages)()
            if _libc.mincore(addr, size, vec) != 0:
                e = ctypes.get_errno()
                raise OSError(e, 'mincore %s: %s' % (path, os.strerror(e)))
            return [bool(b & 1) for b in vec]
        finally:
            _libc.munmap(addr, size)


def resident_blocks(path, blksize):
    """-> {blk: 'all' | 'none' | 'some'}: how much of each block the page cache holds."""
    pages = resident(path)
    per = blksize // PAGE
    out = {}
    for blk in range(-(-len(pages) // per)):
        got = pages[blk * per:(blk + 1) * per]
        out[blk] = 'all' if all(got) else 'none' if not any(got) else 'some'
    return out


_HOLDER = textwrap.dedent('''
    import hashlib, mmap, os, sys
    f = open(sys.argv[1], 'rb')
    m = mmap.mmap(f.fileno(), os.fstat(f.fileno()).st_size, mmap.MAP_SHARED, mmap.PROT_READ)
    total = sum(m[i] for i in range(0, len(m), mmap.PAGESIZE))
    print('ready', total, flush=True)
    for line in sys.stdin:
        if line.strip() == 'sha1':
            print(hashlib.sha1(m[:]).hexdigest(), flush=True)
''')


class Holder(Child):
    """Another process that mmaps a file (MAP_SHARED, PROT_READ), touches every
    page, and keeps it mapped until close(); .sha1() hashes what it maps now."""

    def __init__(self, path):
        self.proc = subprocess.Popen([sys.executable, '-c', _HOLDER, path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith('ready'):
            self.close()
            raise AssertionError('mmap holder for %s did not start: %r' % (path, line))

    def sha1(self):
        self.proc.stdin.write('sha1\n')
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()


# ---- another user: nobody ----

NOBODY = pwd.getpwnam('nobody')
AS_NOBODY = dict(user='nobody', group='nogroup', extra_groups=[], cwd='/')
# The clients run as nobody use only the standard library: run them with the
# system's python, since nobody may not reach the virtual environment (CI's
# clone sits in a directory only root can enter).
NOBODY_PYTHON = os.path.realpath(sys.executable)
SETPRIV_NOBODY = ['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups']


def run_as_nobody(argv, **kw):
    return subprocess.run(SETPRIV_NOBODY + [str(a) for a in argv], capture_output=True,
                          text=True, timeout=60, **kw)
