"""Robustness (issue 5): each scenario provoked for real, through real mounts,
real ZEO servers and real client processes.

1. The database goes away (SPEC §3 errors table, DESIGN "Following the
   database"): runzeo is stopped while wcfs serves; cached pages still read,
   reads that need the database give EIO after --db-timeout, stats say
   `database: unreachable`. Commits are made while wcfs is away (through a
   second runzeo on the same Data.fs, so that they land before wcfs can
   reconnect, a few of them or more than ZEO's invalidation queue keeps) or
   right as runzeo comes back; wcfs reconnects by itself, tells its
   subscribed client exactly the blocks that changed, drops exactly them
   from the page cache, and serves the new data.
2. A ZBigFile object changes (SPEC §4.3): new blksize or blktab is one
   whole-file range for that file only; another file keeps serving and keeps
   its page cache. A ZBigFile deleted by a pack: its reads answer EIO, the
   other files serve on.
3. wcfs is SIGKILLed while client processes read data, are blocked in a read
   that waits for the database, or hold up an update: they get an error
   (ENOTCONN), never hang; wcfs started again over the stale mount serves
   the right data.
4. A mount with `-o allow_other` by root, used by `nobody`: modes as
   `ls -l` shows them (SPEC §3), reads, mkdir, a channel; only the process
   that wrote `want` and still holds that channel is ever killed (SPEC §4.4).
5. Names of any length and bytes in mkdir and lookups give the errno of the
   errors table; wcfs serves on, with no traceback in its log.

Processes started here (runzeo, wcfs, clients and their children) are ended
by their pids; mounts made here are unmounted.
"""

import errno
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from chanhelp import Chan, Client, ranges_of
from devtools.procs import is_mounted, wait_for
from devtools.zeoserver import ZEOServer
from scenes import BS, SAFE, Scene, randbytes
from wcfs_lib.files.prefetch import AHEAD_BLOCKS
from wcfs_lib.service.server import READ_AHEAD_KB
from zhelp import (AS_NOBODY, NOBODY_PYTHON, KiB, Holder, Writer, assert_serving, cached, debug_knobs,
                   expected_modes, head_at, hex16, process_state, read_bytes, run_as_nobody,
                   stat_int, stats, wait_head)

RECONNECT = 60                      # seconds wcfs may take to find the database again


def errno_of(fn, *args):
    """The errno name of the OSError fn(*args) raises; fails if it raises none."""
    try:
        fn(*args)
    except OSError as e:
        return errno.errorcode.get(e.errno, e.errno)
    raise AssertionError('%s%r did not fail' % (getattr(fn, '__name__', fn), args))


def timed_errno(fn, *args):
    """-> (errno name of fn(*args), seconds it took)."""
    t0 = time.monotonic()
    name = errno_of(fn, *args)
    return name, time.monotonic() - t0


def alive(pid):
    return process_state(pid) not in (None, 'Z')


# ---- client processes ----

CLIENT_MARK = 'wcfs-robustness-client'

# A client of one channel, run as `python -c _CLIENT MARK PATH CAT MODE`. It
# writes `want CAT`, prints the reply, acks it and prints `acked`. Then:
#   ack            acks every `have` without wait that follows, printing it and `acked`
#   noack          never acks again; serves commands on stdin (below)
#   fork-keep      forks a child that inherits the channel; the child serves
#                  the commands, the parent keeps the channel and never acks
#   fork-close     the same, but the parent then closes its descriptor and lives on
#   other-channel  like fork-close, but the parent also has a second channel of
#                  the same file open (made before the fork; the child closes it)
#   handoff        the same, but the parent exits after the fork
# The parent prints `child PID` after a fork, `closed` after closing.
# Commands (stdin) to the process that serves them:
#   io     try a non-blocking read and a write of `ack`: `io read=R write=W`
#          (R: `ok`, `EAGAIN`, `EIO`, ...)
#   block  a blocking read: `block <what it read>` or `block error=ERRNO`
_CLIENT = textwrap.dedent(r'''
    import errno, fcntl, os, sys, time

    def say(*words):
        print(*words, flush=True)

    def ename(e):
        return errno.errorcode.get(e.errno, str(e.errno))

    def set_nonblock(fd, on):
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK if on else fl & ~os.O_NONBLOCK)

    def serve(fd):
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == 'io':
                out = []
                set_nonblock(fd, True)
                for what, op in (('read', lambda: os.read(fd, 4096)),
                                 ('write', lambda: os.write(fd, b'ack\n'))):
                    try:
                        op()
                        out.append(what + '=ok')
                    except OSError as e:
                        out.append('%s=%s' % (what, ename(e)))
                set_nonblock(fd, False)
                say('io', *out)
            elif cmd == 'block':
                try:
                    data = os.read(fd, 4096)
                    say('block', data.decode('ascii', 'replace').strip() or 'EOF')
                except OSError as e:
                    say('block error=' + ename(e))
        os._exit(0)

    def lines(fd):
        buf = b''
        while True:
            while b'\n' not in buf:
                data = os.read(fd, 4096)
                if not data:
                    raise EOFError(path)
                buf += data
            line, _, buf = buf.partition(b'\n')
            yield line.decode('ascii')

    _mark, path, cat, mode = sys.argv[1:5]
    fd = os.open(path, os.O_RDWR)
    other = os.open(path, os.O_RDWR) if mode == 'other-channel' else None
    replies = lines(fd)
    os.write(fd, b'want %s\n' % cat.encode())
    say(next(replies))
    os.write(fd, b'ack\n')
    say('acked')
    if mode == 'ack':
        for reply in replies:
            say(reply)
            if reply.startswith('have ') and not reply.endswith(' wait'):
                os.write(fd, b'ack\n')
                say('acked')
    if mode == 'noack':
        serve(fd)
    pid = os.fork()
    if pid == 0:
        if other is not None:
            os.close(other)
        serve(fd)
    say('child', pid)
    if mode == 'handoff':
        os._exit(0)
    if mode in ('fork-close', 'other-channel'):
        os.close(fd)
        say('closed')
    while True:
        time.sleep(3600)
''')

# Holds head/data and a channel of a file open (no want), and does nothing.
_BYSTANDER = textwrap.dedent('''
    import os, sys, time
    fds = [os.open(sys.argv[2], os.O_RDONLY), os.open(sys.argv[3], os.O_RDWR)]
    print('open', flush=True)
    time.sleep(3600)
''')

class ProcClient(Client):
    """A client process running _CLIENT (see above), as root or as nobody;
    chanhelp.Client's expect/tell/alive. stop() also ends its child."""

    def __init__(self, fdir, cat, mode, nobody=False):
        path = os.path.join(fdir, 'head', 'invalidations')
        self.proc = subprocess.Popen(
            [NOBODY_PYTHON if nobody else sys.executable, '-c', _CLIENT, CLIENT_MARK, path,
             '%016x' % cat, mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, **(AS_NOBODY if nobody else {}))
        self.pid = self.proc.pid
        self._buf = b''
        self.child = None

    def start(self, cat):
        """Wait until the client subscribed at cat (and acked)."""
        self.expect('have %016x' % cat)
        self.expect('acked')

    def forked(self):
        """-> the pid of the child the client forked."""
        self.child = int(self.expect('child ').split()[1])
        return self.child

    def stop(self):
        if self.child is not None and alive(self.child) and is_ours(self.child):
            os.kill(self.child, signal.SIGKILL)
        return super().stop()


def is_ours(pid):
    """Is pid a client process started by this module?"""
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return CLIENT_MARK.encode() in f.read().split(b'\0')
    except OSError:
        return False


# ---- the database ----

def other_server(zeo):
    """A second runzeo on the Data.fs of the zeo fixture, on another port,
    while the fixture's server is stopped: what it commits lands before any
    client of the fixture's port can reconnect. The caller closes it."""
    other = ZEOServer(zeo.dir, path=zeo.path, logpath=zeo.logpath)
    try:
        other.start()
    except BaseException:
        other.close()
        raise
    return other


# ==== 1. the database goes away ====

OUTAGE_COMMITS = {
    'commit-while-away': 3,         # a few transactions, ZEO's quick cache verification
    'many-commits-while-away': 150,  # past ZEO's invalidation queue (100): resync by comparing
    'commit-as-it-comes-back': 1,   # a fresh client commits the moment runzeo accepts again
}


# A second server on the same data exists for ZEO only: PostgreSQL takes no
# commits while it is away, so on it the commit comes as it comes back.
OUTAGE_CASES = [('zeo', how) for how in sorted(OUTAGE_COMMITS)] + \
    [('postgres', 'commit-as-it-comes-back')]


@pytest.mark.slow
@pytest.mark.parametrize('database, how', OUTAGE_CASES, indirect=['database'])
def test_database_outage_then_reconnect_with_commits_made_meanwhile(database, wcfs_mount, how):
    zeo = database
    s = Scene(zeo, a=(8, BS), c=(4, BS))
    mnt = wcfs_mount(zeo.zurl, '--db-timeout', '2', *SAFE)
    adir, cdir = mnt.bigfile(s.oid['a']), mnt.bigfile(s.oid['c'])
    adata, cdata = (os.path.join(d, 'head', 'data') for d in (adir, cdir))
    old = s.tid
    old_a = s.f['a'].read()
    with Holder(adata), Chan(adir) as ch:       # every page of a is cached; c never read
        assert ch.subscribe(old).ranges == []
        assert cached(adata, BS) == (set(range(8)), set())
        zeo.stop()

        # while the database is away
        fd = os.open(cdata, os.O_RDONLY)
        try:
            name, took = timed_errno(os.pread, fd, BS, 0)
        finally:
            os.close(fd)
        assert name == 'EIO'
        assert 1.8 <= took < 12, 'EIO after %.1f s with --db-timeout 2' % took
        wait_for(lambda: stats(mnt)['database'] == 'unreachable', 10,
                 'stats to say database: unreachable')
        assert read_bytes(adata) == old_a       # the page cache serves on
        assert head_at(adir) == old
        assert 'unreachable' in mnt.log()
        ch.expect_nothing()

        # commits the first time wcfs can see
        if how == 'commit-as-it-comes-back':
            zeo.start()
            db = zeo.new_db()
            try:
                w = Writer(db)
                f = w.root['a']
                for blk in (1, 3, 9):           # block 8 appears as a hole
                    f.write_block(blk, randbytes(BS), 'ZBlk1' if blk == 3 else 'ZBlk0')
                new = w.commit()
                new_a = f.read()
            finally:
                db.close()
        else:
            other = other_server(zeo)
            try:
                w = Writer(other.db())
                f = w.root['a']
                changes = [(1, 'ZBlk0'), (3, 'ZBlk1'), (9, 'ZBlk0')]
                for i in range(OUTAGE_COMMITS[how]):
                    if i % 50 == 0 and changes:
                        blk, kind = changes.pop(0)
                        f.write_block(blk, randbytes(BS), kind)
                        w.commit()
                    else:
                        w.touch_other()
                for blk, kind in changes:
                    f.write_block(blk, randbytes(BS), kind)
                new = w.commit()
                new_a = f.read()
            finally:
                other.close()
            assert stats(mnt)['database'] == 'unreachable'
            assert head_at(adir) == old
            zeo.start()

        # wcfs is back: it tells the subscribed client what changed meanwhile
        h = ch.have(timeout=RECONNECT)
        assert (h.tid, h.wait, h.ranges) == (new, False, ranges_of({1, 3, 8, 9}, BS))
        assert head_at(adir) == old, 'head moved before the ack'
        ch.ack()
        wait_head(adir, new)
        assert cached(adata, BS) == ({0, 2, 4, 5, 6, 7}, {1, 3, 8, 9})
        before = stat_int(mnt, 'blocks_loaded')
        assert read_bytes(adata) == new_a
        assert stat_int(mnt, 'blocks_loaded') - before == 3     # 1, 3, 9; 8 is a hole
        assert os.stat(adata).st_size == 10 * BS
        assert read_bytes(cdata) == s.f['c'].read()
        wait_for(lambda: stats(mnt)['database'] == 'connected', 10,
                 'stats to say database: connected')
        assert stats(mnt)['zhead'] == hex16(new)
        assert head_at(cdir) == new
        ch.expect_nothing()
    assert_serving(mnt)


def test_outage_each_read_gets_EIO_after_db_timeout(database, wcfs_mount):
    zeo = database
    # Eight readers need the database at once: the read(2) of each fails with
    # EIO once --db-timeout has passed (SPEC §3: the errno a client sees),
    # none hangs, and the mount answers other requests meanwhile.
    s = Scene(zeo, a=(64, BS))
    want_a = s.f['a'].read()        # before the outage, which the writer's client sees too
    mnt = wcfs_mount(zeo.zurl, '--db-timeout', '2')
    adata = os.path.join(mnt.bigfile(s.oid['a']), 'head', 'data')
    zeo.stop()
    script = textwrap.dedent('''
        import errno, os, sys, time
        fd = os.open(sys.argv[1], os.O_RDONLY)
        t0 = time.monotonic()
        try:
            os.pread(fd, 65536, int(sys.argv[2]))
            print('ok', flush=True)
        except OSError as e:
            print(errno.errorcode[e.errno], round(time.monotonic() - t0, 1), flush=True)
    ''')
    readers = [subprocess.Popen([sys.executable, '-c', script, adata, str(blk * 8 * BS)],
                                stdout=subprocess.PIPE, text=True) for blk in range(8)]
    try:
        time.sleep(1)                           # every reader is waiting inside wcfs now
        t0 = time.monotonic()
        assert stats(mnt)['database'] == 'unreachable'
        assert read_bytes(os.path.join(mnt.path, '.wcfs', 'zurl')) == (zeo.shown_zurl + '\n').encode()
        assert time.monotonic() - t0 < 1, 'the mount stalls while reads wait for the database'
        outs = [r.communicate(timeout=30)[0].split() for r in readers]
    finally:
        for r in readers:
            if r.poll() is None:
                r.kill()
                r.wait()
    assert [o[0] for o in outs] == ['EIO'] * 8, outs
    assert all(1.8 <= float(o[1]) < 2 + 1.5 for o in outs), \
        'seconds each read took, with --db-timeout 2: %s' % [o[1] for o in outs]
    zeo.start()
    wait_for(lambda: stats(mnt)['database'] == 'connected', RECONNECT,
             'stats to say database: connected')
    assert read_bytes(adata) == want_a
    assert_serving(mnt)


def test_outage_requests_that_need_the_database_fail_cleanly(database, wcfs_mount):
    zeo = database
    # mkdir and `want` need the database too (mkdir asks it for its last
    # transaction, want checks Cat): during an outage mkdir fails with EIO,
    # a `want` is answered on the channel (SPEC §4.5: write accepts every
    # byte), in bounded time; the channel works once the database is back.
    s = Scene(zeo, a=(2, BS), b=(2, BS))
    mnt = wcfs_mount(zeo.zurl, '--db-timeout', '2', *SAFE)
    adir = mnt.bigfile(s.oid['a'])
    zeo.stop()
    wait_for(lambda: stats(mnt)['database'] == 'unreachable', 10,
             'stats to say database: unreachable')
    bdir = os.path.join(mnt.path, 'bigfile', hex16(s.oid['b']))
    for path in (bdir, os.path.join(adir, '@' + hex16(s.tid))):
        name, took = timed_errno(os.mkdir, path)
        assert (name, took < 12) == ('EIO', True), 'mkdir %s: %s after %.1f s' % (path, name, took)
    with Chan(adir) as ch:
        t0 = time.monotonic()
        ch.send('want ' + hex16(s.tid))
        reply = ch.readline(timeout=12)
        assert reply.startswith(('have ', 'error ')), reply
        assert time.monotonic() - t0 < 12
        zeo.start()
        wait_for(lambda: stats(mnt)['database'] == 'connected', RECONNECT,
                 'stats to say database: connected')
        if reply.startswith('have '):
            ch.ack()
        else:
            h = ch.want(s.tid)
            assert (h.tid, h.wait, h.ranges) == (s.tid, False, [])
            ch.ack()
    os.mkdir(bdir)
    assert read_bytes(os.path.join(bdir, 'head', 'data')) == s.f['b'].read()
    assert_serving(mnt)


# ==== 2. a ZBigFile object changes ====

ZCHANGES = ['set_blksize-larger', 'set_blksize-4096', 'replace_blktab-shrunk']


@pytest.mark.parametrize('change', ZCHANGES)
def test_change_of_a_zbigfile_object_moves_only_that_file(zeo, wcfs_mount, change):
    s = Scene(zeo, a=(5, BS), b=(8, BS))
    mnt = wcfs_mount(zeo.zurl, *SAFE)
    adir, bdir = mnt.bigfile(s.oid['a']), mnt.bigfile(s.oid['b'])
    adata, bdata = (os.path.join(d, 'head', 'data') for d in (adir, bdir))
    old = s.tid
    fa, fb = s.f['a'], s.f['b']
    with Holder(bdata), Holder(adata), Chan(adir) as cha, Chan(bdir) as chb:
        cha.subscribe(old)
        chb.subscribe(old)
        if change == 'set_blksize-larger':
            fa.set_blksize(3 * BS)              # 320 KiB in 2 blocks of 192 KiB: 384 KiB
        elif change == 'set_blksize-4096':
            fa.set_blksize(4096)                # 320 KiB in 80 blocks
        else:
            fa.replace_blktab()
            fa.truncate(2 * BS)                 # 320 KiB -> 128 KiB
        new = s.commit()
        size = max(5 * BS, fa.size())
        h = cha.have()
        assert (h.tid, h.wait, h.ranges) == (new, False, [(0, size)])
        chb.expect_nothing()
        wait_head(bdir, new)                    # b's head moves at once, a's waits for its ack
        assert head_at(adir) == old
        assert read_bytes(bdata) == fb.read()
        cha.ack()
        wait_head(adir, new)
        before = stat_int(mnt, 'blocks_loaded')
        assert read_bytes(adata) == fa.read()
        assert os.stat(adata).st_size == fa.size()
        assert cached(bdata, BS) == (set(range(8)), set())
        assert read_bytes(bdata) == fb.read()
        assert stat_int(mnt, 'blocks_loaded') - before == len(fa.blktab)   # none of b
        # both files follow later commits as usual
        fb.write_block(2, randbytes(BS))
        fa.write_block(0, randbytes(fa.blksize))
        newer = s.commit()
        h = cha.have()
        assert (h.tid, h.ranges) == (newer, [(0, fa.blksize)])
        cha.ack()
        h = chb.have()
        assert (h.tid, h.ranges) == (newer, ranges_of({2}, BS))
        chb.ack()
        wait_head(adir, newer)
        wait_head(bdir, newer)
        assert (read_bytes(adata), read_bytes(bdata)) == (fa.read(), fb.read())
    assert_serving(mnt)


# a block far past what reading blocks 0-7 loads: the kernel's readahead
# (server.READ_AHEAD_KB), then the prefetch after that run (prefetch.AHEAD_BLOCKS)
FAR = 8 + 2 * (READ_AHEAD_KB * KiB // BS) + AHEAD_BLOCKS + 16


def packed_away(zeo, wcfs_mount):
    """Files a (blocks 0-7 and FAR) and b (0-7) served, blocks 0-7 of both read;
    then a is made unreachable from the root and the database is packed.
    -> (Scene, mount, a's dir, b's dir, the tid of the commit that dropped a)."""
    s = Scene(zeo, a=(8, BS), b=(8, BS))
    s.f['a'].write_block(FAR, randbytes(BS))
    s.commit()
    mnt = wcfs_mount(zeo.zurl, '--db-timeout', '5', *SAFE)
    adir, bdir = mnt.bigfile(s.oid['a']), mnt.bigfile(s.oid['b'])
    with open(os.path.join(adir, 'head', 'data'), 'rb') as f:
        assert os.pread(f.fileno(), 8 * BS, 0) == s.f['a'].read()[:8 * BS]
    assert read_bytes(os.path.join(bdir, 'head', 'data')) == s.f['b'].read()
    del s.w.root['a']                           # a is unreachable from the root ...
    gone = s.commit()
    wait_head(adir, gone)
    wait_head(bdir, gone)
    zeo.db().pack()                             # ... and the pack removes it
    return s, mnt, adir, bdir, gone


def test_zbigfile_deleted_by_a_pack_answers_EIO_and_other_files_serve(database, wcfs_mount, monkeypatch):
    zeo = database
    monkeypatch.setenv('WCFS_DEBUG', debug_knobs('pack-check-interval=0.5'))   # PostgreSQL tells of no pack
    s, mnt, adir, bdir, gone = packed_away(zeo, wcfs_mount)
    bdata = os.path.join(bdir, 'head', 'data')
    fd = os.open(os.path.join(adir, 'head', 'data'), os.O_RDONLY)
    try:
        # PostgreSQL tells of no pack: wcfs finds it on its timer
        def far_block():
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)     # not from the page cache
            try:
                os.pread(fd, BS, FAR * BS)
            except OSError as e:
                return e.errno == errno.EIO
            return False

        wait_for(far_block, 20, 'a read of a block of a packed-away ZBigFile to answer EIO')
        name, took = timed_errno(os.pread, fd, BS, FAR * BS)
    finally:
        os.close(fd)
    assert name == 'EIO', 'read of a block of a packed-away ZBigFile'
    assert took < 10
    assert hex16(s.oid['a']) in mnt.log()
    # b serves on, from the page cache and from the database, and follows commits
    with Holder(bdata), Chan(bdir) as chb:
        chb.subscribe(gone)
        assert read_bytes(bdata) == s.f['b'].read()
        s.f['b'].write_block(3, randbytes(BS))
        new = s.commit()
        h = chb.have()
        assert (h.tid, h.ranges) == (new, ranges_of({3}, BS))
        chb.ack()
        wait_head(bdir, new)
        assert cached(bdata, BS) == (set(range(8)) - {3}, {3})
        assert read_bytes(bdata) == s.f['b'].read()
    assert_serving(mnt)


def test_zbigfile_deleted_by_a_pack_is_gone_as_a_whole(database, wcfs_mount, monkeypatch):
    zeo = database
    monkeypatch.setenv('WCFS_DEBUG', debug_knobs('pack-check-interval=0.5'))   # PostgreSQL tells of no pack
    # SPEC: a ZBigFile deleted by a pack: "its files answer EIO", also where
    # wcfs read the blocks before the pack; mkdir @<tid> whose record was
    # packed away is ENOENT. ZEO sends no invalidation for a pack (only new
    # size statistics to every client), so wcfs has to find out by itself.
    s, mnt, adir, bdir, gone = packed_away(zeo, wcfs_mount)
    adata = os.path.join(adir, 'head', 'data')

    def block0():
        fd = os.open(adata, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.pread(fd, BS, 0)
            return None
        except OSError as e:
            return errno.errorcode.get(e.errno)
        finally:
            os.close(fd)

    assert wait_for(block0, 20, 'block 0 of a packed-away ZBigFile to answer EIO') == 'EIO'
    assert errno_of(os.mkdir, os.path.join(adir, '@' + hex16(gone))) == 'ENOENT'
    assert read_bytes(os.path.join(bdir, 'head', 'data')) == s.f['b'].read()
    assert_serving(mnt)


# ==== 3. crashes ====

_READER = textwrap.dedent('''
    import errno, os, sys
    data, at, mode, off = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    def say(*words):
        print(*words, flush=True)

    def ename(e):
        return errno.errorcode.get(e.errno, str(e.errno))

    fd = os.open(data, os.O_RDONLY)
    size = os.fstat(fd).st_size
    try:
        if mode == 'blocked':
            say('reading')
            os.pread(fd, 65536, off)
            say('read returned')
        else:
            rounds = 0
            while True:                 # every round goes to wcfs: the cache is dropped first
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                pos = 0
                while pos < size:
                    pos += len(os.pread(fd, 1 << 20, pos)) or size
                with open(at, 'rb') as f:
                    f.read()
                rounds += 1
                if rounds == 3:
                    say('reading')
    except OSError as e:
        say('error', ename(e))
    after = []
    for what, op in (('open', lambda: os.open(data, os.O_RDONLY)),
                     ('stat', lambda: os.stat(at))):
        try:
            op()
            after.append(what + '=ok')
        except OSError as e:
            after.append('%s=%s' % (what, ename(e)))
    say('after', *after)
''')

CRASH_ERRNOS = {'ENOTCONN', 'ECONNABORTED'}


class ProcReader(Client):
    """A process running _READER; chanhelp.Client's expect/stop."""

    def __init__(self, fdir, mode, off=0):
        self.proc = subprocess.Popen(
            [sys.executable, '-c', _READER, os.path.join(fdir, 'head', 'data'),
             os.path.join(fdir, 'head', 'at'), mode, str(off)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pid = self.proc.pid
        self._buf = b''


def kill_wcfs(mnt):
    os.kill(mnt.pid, signal.SIGKILL)
    mnt.proc.wait(10)
    assert is_mounted(mnt.path), 'a killed wcfs leaves its mount behind (stale)'
    assert errno_of(os.stat, mnt.path) == 'ENOTCONN'


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['streaming', 'blocked'])
def test_sigkill_during_reads_gives_ENOTCONN_then_restart_serves(zeo, wcfs_mount, mount_at,
                                                                 mode):
    s = Scene(zeo, a=(64, BS))                  # 4 MiB
    mnt = wcfs_mount(zeo.zurl, '--db-timeout', '30')
    adir = mnt.bigfile(s.oid['a'])
    if mode == 'blocked':                       # the read waits inside wcfs for the database
        zeo.stop()
    reader = ProcReader(adir, mode, off=40 * BS)
    try:
        reader.expect('reading', timeout=15)
        if mode == 'streaming':             # its reads go to wcfs right now
            before = stat_int(mnt, 'bytes_read')
            wait_for(lambda: stat_int(mnt, 'bytes_read') > before + 8 * BS, 10,
                     'the reader to read through wcfs')
        else:
            time.sleep(1)
        assert reader.proc.poll() is None
        kill_wcfs(mnt)
        name = reader.expect('error ', timeout=10).split()[1]
        assert name in CRASH_ERRNOS, 'the read of a reader when wcfs died: %s' % name
        after = reader.expect('after ', timeout=10).split()[1:]
        assert after == ['open=ENOTCONN', 'stat=ENOTCONN']
        reader.proc.wait(10)
    finally:
        reader.stop()
    if mode == 'blocked':
        zeo.start()
        wait_for(s.w.db.storage.is_connected, RECONNECT, 'the writer to reconnect')
    s.f['a'].write_block(5, randbytes(BS))      # a commit while no wcfs runs
    new = s.commit()
    again = mount_at(zeo.zurl, mnt.path)
    adir = again.bigfile(s.oid['a'])
    assert head_at(adir) == new
    assert read_bytes(os.path.join(adir, 'head', 'data')) == s.f['a'].read()
    assert 'stale' in again.log()
    assert_serving(again)


@pytest.mark.slow
def test_sigkill_while_an_update_waits_for_an_ack(zeo, wcfs_mount, mount_at):
    s = Scene(zeo, a=(8, BS))
    mnt = wcfs_mount(zeo.zurl, *SAFE)
    adir = mnt.bigfile(s.oid['a'])
    old = s.tid
    c = ProcClient(adir, old, 'noack')
    holder = Holder(os.path.join(adir, 'head', 'data'))
    try:
        c.start(old)
        s.f['a'].write_block(2, randbytes(BS))
        new = s.commit()
        c.tell('block')
        assert c.expect('block ') == 'block have %016x %d-%d' % (new, 2 * BS, 3 * BS)
        time.sleep(0.5)
        assert head_at(adir) == old
        c.tell('block')                         # blocked in read when wcfs dies
        time.sleep(0.5)
        kill_wcfs(mnt)
        name = c.expect('block error=', timeout=10).split('=')[1]
        assert name in CRASH_ERRNOS, 'a blocked channel read when wcfs died: %s' % name
        c.tell('io')
        assert c.expect('io ', timeout=10) == 'io read=ENOTCONN write=ENOTCONN'
        assert c.alive()
    finally:
        c.stop()
        holder.close()
    again = mount_at(zeo.zurl, mnt.path, *SAFE)
    adir = again.bigfile(s.oid['a'])
    assert head_at(adir) == new
    assert read_bytes(os.path.join(adir, 'head', 'data')) == s.f['a'].read()
    with Chan(adir) as ch:
        h = ch.want(old)
        assert (h.tid, h.ranges) == (new, ranges_of({2}, BS))
        ch.ack()
    assert_serving(again)


# ==== 4. multi-user mounts ====

@pytest.fixture
def shared(zeo, public_dir, mount_at):
    """A mount with -o allow_other (by root) in a directory nobody can reach,
    kill timeout 2 s; file 'a' made visible, 'b' committed but not made."""
    s = Scene(zeo, a=(4, BS), b=(2, BS))
    path = public_dir / 'mnt'
    path.mkdir()
    s.mnt = mount_at(zeo.zurl, path, '-o', 'allow_other', '--kill-timeout', '2')
    s.dir = s.mnt.bigfile(s.oid['a'])
    return s


def modes_by_ls(paths):
    """`ls -ld` of paths, run as nobody -> {path: mode string}."""
    r = run_as_nobody(['ls', '-ld', '--', *paths])
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.splitlines():
        words = line.split()
        out[words[-1]] = words[0][:10]
    return out


def test_allow_other_modes_as_ls_shows_them_to_nobody(shared):
    s = shared
    rd = os.path.join(s.dir, '@' + hex16(s.tid))
    os.mkdir(rd)
    p = s.mnt.path
    want = expected_modes(p, s.dir, rd)
    assert modes_by_ls(sorted(want)) == want
    # the listings as nobody: every entry is there with its mode
    for d in (p, p + '/.wcfs', p + '/bigfile', s.dir, s.dir + '/head', rd):
        r = run_as_nobody(['ls', '-la', '--', d])
        assert r.returncode == 0, r.stderr
        got = {line.split()[-1]: line.split()[0][:10] for line in r.stdout.splitlines()[1:]}
        assert got.pop('.') == want[d]
        del got['..']
        assert got == {name: want[os.path.join(d, name)] for name in got}
        assert sorted(got) == sorted(name for name in os.listdir(d))


_NOBODY_USES = textwrap.dedent('''
    import errno, hashlib, os, sys
    mnt, a, b, tid = sys.argv[1:5]

    def res(fn, *args):
        try:
            out = fn(*args)
            return 'ok' if out is None or isinstance(out, int) else out
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))

    def sha1(path):
        with open(path, 'rb') as f:
            return hashlib.sha1(f.read()).hexdigest()

    def readall(path):
        with open(path, 'rb') as f:
            return f.read().decode().strip()

    adir = os.path.join(mnt, 'bigfile', a)
    bdir = os.path.join(mnt, 'bigfile', b)
    rd = os.path.join(adir, '@' + tid)
    out = [
        ('a data', res(sha1, os.path.join(adir, 'head', 'data'))),
        ('a at', res(readall, os.path.join(adir, 'head', 'at'))),
        ('zurl', res(readall, os.path.join(mnt, '.wcfs', 'zurl'))),
        ('mkdir b', res(os.mkdir, bdir)),
        ('b data', res(sha1, os.path.join(bdir, 'head', 'data'))),
        ('mkdir @tid', res(os.mkdir, rd)),
        ('@tid data', res(sha1, os.path.join(rd, 'data'))),
        ('write data', res(os.open, os.path.join(adir, 'head', 'data'), os.O_WRONLY)),
        ('rdwr data', res(os.open, os.path.join(adir, 'head', 'data'), os.O_RDWR)),
        ('write @tid data', res(os.open, os.path.join(rd, 'data'), os.O_WRONLY)),
        ('write at', res(os.open, os.path.join(adir, 'head', 'at'), os.O_WRONLY)),
        ('write stats', res(os.open, os.path.join(mnt, '.wcfs', 'stats'), os.O_WRONLY)),
        ('mkdir in head', res(os.mkdir, os.path.join(adir, 'head', 'x'))),
        ('rmdir b', res(os.rmdir, bdir)),
        ('unlink data', res(os.unlink, os.path.join(adir, 'head', 'data'))),
        ('chmod data', res(os.chmod, os.path.join(adir, 'head', 'data'), 0o666)),
    ]
    for k, v in out:
        print('%s: %s' % (k, v))
''')


def test_allow_other_nobody_reads_makes_directories_and_cannot_write(shared):
    s = shared
    r = subprocess.run([NOBODY_PYTHON, '-c', _NOBODY_USES, s.mnt.path, hex16(s.oid['a']),
                        hex16(s.oid['b']), hex16(s.tid)],
                       capture_output=True, text=True, timeout=60, **AS_NOBODY)
    assert r.returncode == 0, r.stderr
    got = dict(line.split(': ', 1) for line in r.stdout.splitlines())
    sha1 = lambda f: hashlib.sha1(f.read()).hexdigest()    # noqa: E731
    assert got == {
        'a data': sha1(s.f['a']),
        'a at': hex16(s.tid),
        'zurl': s.zeo.zurl,
        'mkdir b': 'ok',
        'b data': sha1(s.f['b']),
        'mkdir @tid': 'ok',
        '@tid data': sha1(s.f['a']),
        'write data': 'EACCES',
        'rdwr data': 'EACCES',
        'write @tid data': 'EACCES',
        'write at': 'EACCES',
        'write stats': 'EACCES',
        'mkdir in head': 'EPERM',
        'rmdir b': 'EPERM',
        'unlink data': 'EPERM',
        'chmod data': 'EPERM',
    }
    assert sorted(os.listdir(os.path.join(s.mnt.path, 'bigfile'))) == \
        sorted(hex16(s.oid[n]) for n in 'ab')
    assert_serving(s.mnt)


def test_allow_other_nobody_uses_a_channel_and_is_killed_when_it_never_acks(shared):
    s = shared
    old = s.tid
    good = ProcClient(s.dir, old, 'ack', nobody=True)
    bad = ProcClient(s.dir, old, 'noack', nobody=True)
    bystander = subprocess.Popen(
        [NOBODY_PYTHON, '-c', _BYSTANDER, CLIENT_MARK, os.path.join(s.dir, 'head', 'data'),
         os.path.join(s.dir, 'head', 'invalidations')], stdout=subprocess.PIPE, **AS_NOBODY)
    try:
        assert bystander.stdout.readline() == b'open\n'
        for c in (good, bad):
            c.start(old)
        s.f['a'].write_block(1, randbytes(BS))
        new = s.commit()
        good.expect('have %016x %d-%d' % (new, BS, 2 * BS))
        good.expect('acked')
        bad.proc.wait(20)
        assert bad.proc.returncode == -signal.SIGKILL
        wait_head(s.dir, new)
        assert good.alive() and bystander.poll() is None
        assert stat_int(s.mnt, 'clients_killed') == 1
        assert re.search(r'\b%d\b' % bad.pid, s.mnt.log()), 'the kill is not logged with its pid'
        assert read_bytes(os.path.join(s.dir, 'head', 'data')) == s.f['a'].read()
        s.f['a'].write_block(3, randbytes(BS))
        newer = s.commit()
        good.expect('have %016x %d-%d' % (newer, 3 * BS, 4 * BS))
        good.expect('acked')
        wait_head(s.dir, newer)
    finally:
        good.stop()
        bad.stop()
        bystander.kill()
        bystander.wait()


# mode -> is the process that wrote `want` killed? (the child never is)
NOT_THE_WRITER = {
    'fork-keep': True,          # the writer still holds the channel: it is killed
    'fork-close': False,        # the writer closed it: a child holds it
    'handoff': False,           # the writer exited: a child holds it
    'other-channel': False,     # the writer closed it, holds another channel of the file
}


@pytest.mark.slow
@pytest.mark.parametrize('mode', sorted(NOT_THE_WRITER))
def test_allow_other_only_the_writer_of_want_holding_the_channel_is_killed(shared, mode):
    s = shared
    old = s.tid
    c = ProcClient(s.dir, old, mode, nobody=True)
    try:
        c.start(old)
        child = c.forked()
        if mode in ('fork-close', 'other-channel'):
            c.expect('closed')
        if mode == 'handoff':
            c.proc.wait(10)
        s.f['a'].write_block(2, randbytes(BS))
        new = s.commit()
        wait_head(s.dir, new, timeout=20)       # after the kill timeout, 2 s
        writer_killed = c.proc.poll() == -signal.SIGKILL
        assert writer_killed == NOT_THE_WRITER[mode], \
            'the process that wrote want (pid %d): killed %s' % (c.pid, writer_killed)
        assert alive(child), 'the child holding the channel was killed'
        assert stat_int(s.mnt, 'clients_killed') == int(NOT_THE_WRITER[mode])
        c.tell('io')
        assert c.expect('io ') == 'io read=EIO write=EIO'
        assert read_bytes(os.path.join(s.dir, 'head', 'data')) == s.f['a'].read()
    finally:
        c.stop()


# ==== 5. names of any length and bytes ====

def name_errnos(mnt, fdir, rd, name):
    """-> {what: errno name} of mkdir and lookups of the name (bytes) everywhere."""
    root = os.fsencode(mnt.path)
    fdir, rd = os.fsencode(fdir), os.fsencode(rd)
    places = {
        'root': root, '.wcfs': root + b'/.wcfs', 'bigfile': root + b'/bigfile',
        'fdir': fdir, 'head': fdir + b'/head', 'rd': rd,
    }
    out = {}
    for where, d in places.items():
        path = d + b'/' + name
        out['mkdir ' + where] = errno_of(os.mkdir, path)
        out['stat ' + where] = errno_of(os.stat, path)
        out['open ' + where] = errno_of(os.open, path, os.O_RDONLY)
    out['create fdir'] = errno_of(os.open, fdir + b'/' + name, os.O_CREAT | os.O_WRONLY, 0o644)
    return out


def expected_errnos(name):
    """What the errors table says for mkdir and lookups of name everywhere."""
    hex16 = re.fullmatch(rb'[0-9a-f]{16}', name) is not None
    assert not hex16 and not re.fullmatch(rb'@[0-9a-f]{16}', name)
    out = {}
    for where in ('root', '.wcfs', 'bigfile', 'fdir', 'head', 'rd'):
        out['mkdir ' + where] = 'EPERM'
        out['stat ' + where] = 'ENOENT'
        out['open ' + where] = 'ENOENT'
    out['mkdir bigfile'] = 'EINVAL'
    out['mkdir fdir'] = 'EINVAL' if name.startswith(b'@') else 'EPERM'
    out['create fdir'] = 'EPERM'
    return out


def check_name(mnt, fdir, rd, name):
    got = name_errnos(mnt, fdir, rd, name)
    want = expected_errnos(name)
    if len(name) > 255:                         # past NAME_MAX: the kernel may refuse it first
        got = {k: want[k] if v == 'ENAMETOOLONG' else v for k, v in got.items()}
    assert got == want, name


NAMES = [
    b'a', b'x' * 255, b'@' * 255, b'@' + b'0' * 254, b'0' * 255, b'f' * 15, b'f' * 17,
    b'0000000000000001\n', b'@0000000000000001 ', b' 0000000000000001', b'000000000000000A',
    b'@000000000000000A', b'@', b'@@', b'...', b'.hidden', b'-', b'*', b'\\', b'\n', b'\t\r',
    b'\xff', b'\xff\xfe', b'\xc3\x28', b'\xed\xa0\x80', b'\xf4\x90\x80\x80', b'\x80' * 255,
    '\u00e9t\u00e9'.encode(), '\U0001f600'.encode() * 63, b'@' + '\u00e9'.encode() * 8,
    b'x' * 256, b'x' * 1024, b'x' * 1025, b'@' * 4000,
    bytes(range(1, 47)) + bytes(range(48, 256)),            # every byte but NUL and '/'
]


@pytest.fixture
def named(zeo, wcfs_mount):
    s = Scene(zeo, a=(2, BS))
    s.mnt = wcfs_mount(zeo.zurl)
    s.dir = s.mnt.bigfile(s.oid['a'])
    s.rd = os.path.join(s.dir, '@' + hex16(s.tid))
    os.mkdir(s.rd)
    return s


def assert_still_serves(s):
    assert_serving(s.mnt)
    assert read_bytes(os.path.join(s.dir, 'head', 'data')) == s.f['a'].read()
    assert read_bytes(os.path.join(s.rd, 'data')) == s.f['a'].read()
    assert os.listdir(os.path.join(s.mnt.path, 'bigfile')) == [hex16(s.oid['a'])]
    assert sorted(os.listdir(s.dir)) == ['@' + hex16(s.tid), 'head']
    assert stats(s.mnt)['bigfiles'] == '1'


@pytest.mark.parametrize('name', NAMES, ids=range(len(NAMES)))
def test_names_of_any_bytes_and_length(named, name):
    check_name(named.mnt, named.dir, named.rd, name)
    assert_still_serves(named)


def is_unmade_name(name):
    """A name no directory of the test mount holds and that names no object
    or revision: every place answers it as the errors table says."""
    return (b'/' not in name and b'\0' not in name and name not in (b'.', b'..')
            and not re.fullmatch(rb'@?[0-9a-f]{16}', name))


NAME_BYTES = st.binary(min_size=1, max_size=300)


@pytest.mark.slow
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.one_of(NAME_BYTES, NAME_BYTES.map(lambda b: b'@' + b[:254]),
                      st.text('0123456789abcdefABCDEF@', min_size=14, max_size=18)
                      .map(str.encode)).filter(is_unmade_name))
def test_random_names_never_crash_wcfs(named, name):
    check_name(named.mnt, named.dir, named.rd, name)
    assert named.mnt.proc.poll() is None


def test_after_random_names_wcfs_serves(named):
    rng = random.Random(5)
    alphabet = [b for b in range(1, 256) if b != ord('/')]
    for _ in range(300):
        name = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 255)))
        if is_unmade_name(name):
            check_name(named.mnt, named.dir, named.rd, name)
    assert_still_serves(named)
