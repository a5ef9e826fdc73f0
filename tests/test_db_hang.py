"""A database server that hangs (issue 15, item 3): SIGSTOPped, as a stuck
server or a network partition looks to wcfs. Its sockets stay open and the
kernel answers TCP keepalives for it, so only a deadline of wcfs's own ends
a request that waits for it (SPEC §3 errors table: EIO after --db-timeout).

The server processes are ones this test started (runzeo, or the session's
private PostgreSQL cluster: the postmaster and every child of it); they are
stopped by pid and always continued. The Watchdog that bounds a use of
PostgreSQL is tested alone at the end.
"""

import contextlib
import errno
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from devtools.procs import wait_for
from wcfs_lib.zodb.zstorage.mvcc import GaveUp, Watchdog
from zhelp import KiB, Writer, head_at, hex16, read_bytes, resident_blocks, stats, wait_head

BS = 64 * KiB
DB_TIMEOUT = 3          # --db-timeout of the mount: seconds
HUNG = 30               # seconds after which a request (or noticing) counts as hung
CAUGHT_UP = 60          # seconds for wcfs to follow the database again after it resumes


def children(pid):
    """The pids of the processes whose parent is pid."""
    out = []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % name) as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
        if ppid == pid:
            out.append(int(name))
    return out


@contextlib.contextmanager
def hung(database):
    """The server of the database fixture SIGSTOPped inside the block, and
    SIGCONTinued after it whatever happens."""
    if hasattr(database, 'cluster'):
        main = database.cluster.proc.pid           # the postmaster (setpriv execs it)
    else:
        main = database.proc.pid                   # runzeo
    stopped = []
    try:
        os.kill(main, signal.SIGSTOP)
        stopped.append(main)
        for pid in children(main):                 # the postmaster forks no more now
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield
    finally:
        for pid in reversed(stopped):
            os.kill(pid, signal.SIGCONT)


def errno_of(fn, *args):
    """The errno name of the OSError fn(*args) raises; 'ok' if none."""
    try:
        fn(*args)
    except OSError as e:
        return errno.errorcode[e.errno]
    return 'ok'


def test_hung_database_requests_get_EIO_and_head_catches_up_after(database, wcfs_mount):
    w = Writer(database.db())
    f, oid, tid0 = w.new_file(BS, {0: b'a' * BS, 1: b'b' * BS, 2: b'c' * BS})
    old = f.read()
    mnt = wcfs_mount(database.zurl, '--db-timeout', str(DB_TIMEOUT), '--kill-timeout', '1000')
    fdir = mnt.bigfile(oid)
    data = os.path.join(fdir, 'head', 'data')
    fd = os.open(data, os.O_RDONLY)
    try:
        # blocks 1 and 2 in the page cache: a transaction wcfs missed would leave them stale
        assert os.pread(fd, 2 * BS, BS) == old[BS:]
        assert resident_blocks(data, BS) == {0: 'none', 1: 'all', 2: 'all'}
        assert stats(mnt)['database'] == 'connected'

        with ThreadPoolExecutor(3) as pool, hung(database):
            # idle, wcfs notices by itself: its follower asks and gets no answer
            wait_for(lambda: stats(mnt)['database'] == 'unreachable', HUNG,
                     'stats to say database: unreachable')
            assert re.search(r'database \S+: unreachable', mnt.log()), mnt.log()[-3000:]

            # requests that need the database fail, while it still hangs
            read = pool.submit(errno_of, os.pread, fd, BS, 0)               # a cold block
            mkdir = pool.submit(errno_of, os.mkdir, os.path.join(fdir, '@' + hex16(tid0)))
            assert read.result(timeout=HUNG) == 'EIO'
            assert mkdir.result(timeout=HUNG) == 'EIO'
            assert stats(mnt)['database'] == 'unreachable'
            assert head_at(fdir) == tid0
            assert os.pread(fd, BS, BS) == old[BS:2 * BS]     # the page cache serves on

            # a commit that waits for the server and lands as it resumes
            def change_block_1():
                f.write_block(1, b'B' * BS)
                return w.commit()
            during = pool.submit(change_block_1)
        tid1 = during.result(timeout=CAUGHT_UP)

        f.write_block(2, b'C' * BS)
        tid2 = w.commit()
        wait_head(fdir, tid2, timeout=CAUGHT_UP)
        assert os.pread(fd, 3 * BS, 0) == b'a' * BS + b'B' * BS + b'C' * BS
        wait_for(lambda: stats(mnt)['database'] == 'connected', CAUGHT_UP,
                 'stats to say database: connected')
        for tid, want in ((tid0, old), (tid1, b'a' * BS + b'B' * BS + b'c' * BS)):
            rdir = os.path.join(fdir, '@' + hex16(tid))
            os.mkdir(rdir)
            assert read_bytes(os.path.join(rdir, 'data')) == want
    finally:
        os.close(fd)
    assert mnt.proc.poll() is None
    assert 'Traceback' not in mnt.log()


def test_requests_in_flight_as_the_database_hangs_get_EIO(database, wcfs_mount):
    # The requests reach the server before wcfs can know that it hangs: they
    # wait on connections that it then gives up on (ZEO: the ping that
    # aborts it; PostgreSQL: the deadline of each use).
    w = Writer(database.db())
    f, oid, tid0 = w.new_file(BS, {0: b'x' * BS, 1: b'y' * BS})
    mnt = wcfs_mount(database.zurl, '--db-timeout', str(DB_TIMEOUT))
    fdir = mnt.bigfile(oid)
    data = os.path.join(fdir, 'head', 'data')
    with ThreadPoolExecutor(2) as pool, hung(database):
        read = pool.submit(errno_of, read_bytes, data)
        mkdir = pool.submit(errno_of, os.mkdir, os.path.join(fdir, '@' + hex16(tid0)))
        assert read.result(timeout=HUNG) == 'EIO'
        assert mkdir.result(timeout=HUNG) == 'EIO'
        wait_for(lambda: stats(mnt)['database'] == 'unreachable', HUNG,
                 'stats to say database: unreachable')
    f.write_block(1, b'Y' * BS)
    tid1 = w.commit()
    wait_head(fdir, tid1, timeout=CAUGHT_UP)
    assert read_bytes(data) == b'x' * BS + b'Y' * BS
    os.mkdir(os.path.join(fdir, '@' + hex16(tid0)))
    assert read_bytes(os.path.join(fdir, '@' + hex16(tid0), 'data')) == b'x' * BS + b'y' * BS
    assert 'Traceback' not in mnt.log()


class Target:
    """What a Watchdog cuts: here it counts cuts, and says how long ago its
    connection last received data (`heard`: seconds, or None: cannot tell)."""

    def __init__(self, heard=None):
        self.cuts = 0
        self.was_cut = threading.Event()
        self.heard = heard

    def cut(self):
        self.cuts += 1
        self.was_cut.set()

    def silent_for(self):
        return self.heard


def test_watchdog_cuts_a_use_past_its_deadline_and_only_it():
    dog = Watchdog(0.5)
    try:
        quick, slow, late = Target(), Target(), Target()
        with dog.watching('quick', quick):
            pass
        with pytest.raises(GaveUp, match='slow: no answer from the database within 0.5 s'):
            with dog.watching('slow', slow) as use:
                assert slow.was_cut.wait(HUNG)
                dog.attach(use, late)           # taken after the deadline: cut at once
                assert late.cuts == 1
                raise OSError('the call fails once its socket is shut down')
        # an error of a use that was not cut is its own
        with pytest.raises(KeyError):
            with dog.watching('bad', Target()):
                raise KeyError('x')
        assert (quick.cuts, slow.cuts) == (0, 1)
    finally:
        dog.stop()


def test_watchdog_spares_a_use_whose_answer_is_arriving():
    # A long answer (a 64 MiB block over a slow link) is not a server that
    # hangs: while data came within the timeout, the use goes on; once the
    # connection is silent for the timeout, it is cut.
    dog = Watchdog(0.5)
    try:
        talking = Target(heard=0.1)
        with pytest.raises(GaveUp):
            with dog.watching('long answer', talking):
                deadline = time.monotonic() + 2     # four timeouts
                while time.monotonic() < deadline:
                    assert talking.cuts == 0
                    time.sleep(0.05)
                talking.heard = 0.6                 # silent for longer than the timeout
                assert talking.was_cut.wait(HUNG)
                raise OSError('cut')
    finally:
        dog.stop()
