"""Shared-mount safety (issue 8): what one client, one channel or one database
record does never costs another file a transaction, another client its
update, or another process its life. Each case is provoked for real, through
a real mount, a real ZEO server and real client processes.

A  an update waits only for the channels subscribed when it started; a `want`
   during an update gets `have <Sat> wait` and its answer once it is done;
C  a file that grows sparsely is one range, and costs wcfs no memory per block;
D  blksize over 64 MiB is refused, and the memory wcfs spends on blocks is
   bounded in bytes whatever the blksize;
E  one write of many requests asks the database a bounded number of times,
   and is not processed further once its channel is dropped;
H  a malformed blktab record breaks only its own file: every other file
   still gets that transaction;
J  a `want` that got `error` makes nobody the owner of the subscription;
   mkdir of a file while the watcher tells the kernel about another file does
   not deadlock.
"""

import errno
import os
import struct
import subprocess
import sys
import textwrap
import threading

import pytest
from ZODB.utils import u64

from chanhelp import Client
from devtools.procs import wait_for
from devtools.records import raw_store
from scenes import BS, randbytes
from wcfs_lib import zbig
from zhelp import (KiB, MiB, assert_read_eio, head_at, process_state, read_bytes, stat_int,
                   vmrss, wait_head)

ZMODULE = b'wendelin.bigfile.file_zodb'


def vmhwm(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) * KiB
    raise AssertionError('no VmHWM for pid %d' % pid)


# ---- A: updates end within the kill timeout, whatever clients do ----

@pytest.mark.timeout(90)
def test_update_is_not_held_up_by_channels_that_subscribe_during_it(serve):
    s = serve(args=('--kill-timeout', '3'))
    old = s.tid
    stuck = Client(s.dir, old, 'noack')        # acks its first have, never an update
    stop = threading.Event()
    opened = []

    def subscribe_again_and_again():
        # a new channel every 0.3 s that wants the head and never acks
        while not stop.is_set():
            ch = s.chan()
            opened.append(ch)
            ch.send('want %016x' % head_at(s.dir))
            stop.wait(0.3)

    attacker = threading.Thread(target=subscribe_again_and_again, daemon=True)
    try:
        stuck.expect('have %016x' % old)
        stuck.expect('acked')
        attacker.start()
        new = s.touch(1)
        stuck.expect('have %016x' % new)
        wait_head(s.dir, new, timeout=20)       # kill timeout 3 s, plus slack
        assert attacker.is_alive(), 'the attacker stopped before the head moved'
        assert s.data() == s.content[0][new]
    finally:
        stop.set()
        attacker.join(10)
        stuck.stop()


def test_want_during_an_update_waits_until_it_is_done(serve):
    s = serve()
    slow, old = s.subscribed()
    new = s.touch(2)
    assert slow.have().tid == new                  # the update; not acked yet
    late = s.chan()
    late.send('want %016x' % old)
    h = late.have()
    assert (h.tid, h.wait) == (old, True), 'a want during an update must wait: %r' % h
    late.expect_nothing(within=0.3)
    assert head_at(s.dir) == old
    slow.ack()
    h = late.have()
    assert (h.tid, h.wait, h.ranges) == (new, False, s.delta(old, new))
    wait_head(s.dir, new)
    # the late channel is subscribed from the answer on: the next update waits for it
    newer = s.touch(3)
    assert slow.have().tid == newer
    late.ack()
    assert late.have().tid == newer
    slow.ack()
    assert head_at(s.dir) == new, 'the head moved before the late channel acked'
    late.ack()
    wait_head(s.dir, newer)


# ---- C: sparse growth is one range ----

@pytest.mark.timeout(120)
def test_sparse_growth_is_one_range_and_costs_no_memory_per_block(serve):
    s = serve(nblk=1, blksize=4 * KiB)
    ch = s.chan()
    ch.subscribe(s.tid)
    hwm = vmhwm(s.mnt.pid)
    far = 3000000
    s.files[0].write_block(far, b'x', 'ZBlk0')
    new = s.w.commit()                          # not s.touch: the test would read 12 GB
    h = ch.have(timeout=30)
    assert h.tid == new
    assert h.ranges == [(4 * KiB, (far + 1) * 4 * KiB)], h.ranges[:4]
    ch.ack()
    wait_head(s.dir, new)
    grown = vmhwm(s.mnt.pid) - hwm
    assert grown < 64 * MiB, 'peak RSS grew by %d MiB for one new block' % (grown // MiB)
    assert os.stat(os.path.join(s.dir, 'head', 'data')).st_size == (far + 1) * 4 * KiB


# ---- D: blksize bound, block memory bounded in bytes ----

def test_blksize_over_64MiB_is_EINVAL(zeo, wcfs_mount):
    w = serve_writer(zeo)
    _, too_big, _ = w.new_file(128 * MiB, {0: b'x'})
    _, biggest, _ = w.new_file(64 * MiB, {0: b'x'})
    mnt = wcfs_mount(zeo.zurl)
    with pytest.raises(OSError) as e:
        os.mkdir(os.path.join(mnt.path, 'bigfile', '%016x' % too_big))
    assert e.value.errno == errno.EINVAL
    path = mnt.bigfile(biggest)
    with open(os.path.join(path, 'head', 'data'), 'rb') as f:
        assert f.read(2) == b'x\0'


def serve_writer(zeo):
    from zhelp import Writer
    return Writer(zeo.db())


@pytest.mark.timeout(120)
def test_block_memory_stays_bounded_with_64MiB_blocks(zeo, wcfs_mount):
    w = serve_writer(zeo)
    nblk = 10
    _, oid, _ = w.new_file(64 * MiB, {blk: b'%d' % blk for blk in range(nblk)})
    mnt = wcfs_mount(zeo.zurl)
    data = os.path.join(mnt.bigfile(oid), 'head', 'data')

    def read_blocks(blks):
        with open(data, 'rb', buffering=0) as f:
            for blk in blks:
                f.seek(blk * 64 * MiB)
                assert f.read(1) == b'%d' % blk
                f.seek(blk * 64 * MiB + 32 * MiB)
                assert f.read(4096) == bytes(4096)

    readers = [threading.Thread(target=read_blocks, args=(range(i, nblk, 3),)) for i in range(3)]
    for t in readers:
        t.start()
    for t in readers:
        t.join(100)
    assert not any(t.is_alive() for t in readers)
    # the cache keeps at most one 64 MiB block; the timer gives freed memory back
    wait_for(lambda: vmrss(mnt.pid) < 256 * MiB, 20,
             'wcfs RSS to go under 256 MiB (it is %d MiB)' % (vmrss(mnt.pid) // MiB))


# ---- E: one write, a bounded number of round trips ----

@pytest.mark.timeout(120)
def test_one_write_of_many_wants_asks_the_database_a_bounded_number_of_times(serve):
    s = serve()
    before = stat_int(s.mnt, 'db_requests')
    ch = s.chan()
    lines = b'want ffffffffffffffff\n' * (MiB // 22)
    try:
        ch.write(lines)
    except OSError as e:
        assert e.errno == errno.EIO         # dropped: its replies were never read
    asked = stat_int(s.mnt, 'db_requests') - before
    assert asked <= 64, '%d requests to the database for one write' % asked
    with pytest.raises(OSError) as e:
        for _ in range(100):                # the error replies pass 64 KiB: dropped
            os.read(ch.fd, 1 << 16)
    assert e.value.errno == errno.EIO
    assert s.chan().want(s.tid).tid == s.tid    # others are served


# ---- H: one bad record, one broken file ----

def nested_bucket_tree(depth):
    """A LOBTree record with one inline bucket {0: a list nested `depth` deep}."""
    nested = b']' * depth + b'a' * (depth - 1)
    state = b'\x80\x03J\x00\x00\x00\x00' + nested + b'\x86\x85\x85\x85.'
    return b'\x80\x03cBTrees.LOBTree\nLOBTree\nq\x00.' + state


def zblk0(data):
    return (b'\x80\x03c' + ZMODULE + b'\nZBlk0\nq\x00.' +
            b'\x80\x03B' + struct.pack('<I', len(data)) + data + b'.')


@pytest.mark.timeout(120)
def test_malformed_blktab_record_breaks_only_its_file(serve):
    s = serve(nfiles=2, nblk=2)
    bad, good = s.files
    good_data = os.path.join(s.dirs[1], 'head', 'data')
    assert read_bytes(good_data) == s.content[1][s.tid]     # cached now
    block = randbytes(BS)
    tid = raw_store(s.w.db.storage, {
        u64(bad.blktab._p_oid): nested_bucket_tree(100000),
        u64(good.blktab[0]._p_oid): zblk0(block),
    })
    wait_head(s.dirs[1], tid)
    assert read_bytes(good_data)[:BS] == block
    wait_head(s.dirs[0], tid)
    assert_read_eio(os.path.join(s.dirs[0], 'head', 'data'))
    assert s.mnt.proc.poll() is None
    # the next transaction reaches the good file too
    s.w.tm.abort()
    block1 = randbytes(BS)
    good.write_block(1, block1, 'ZBlk0')
    newer = s.w.commit()
    wait_head(s.dirs[1], newer)
    assert read_bytes(good_data) == block + block1
    broken = [line for line in s.mnt.log().splitlines() if 'cannot serve it any more' in line]
    assert len(broken) == 1, broken


# ---- J: only the writer of the subscribing want owns it ----

PARENT_AND_CHILD = textwrap.dedent('''
    import os, sys, time
    path, cat, bad = sys.argv[1:]
    fd = os.open(path, os.O_RDWR)

    def line():
        out = b''
        while not out.endswith(b'\\n'):
            out += os.read(fd, 1)
        return out.decode().strip()

    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        # the child makes the subscription and never acks an update
        os.write(fd, ('want %s\\n' % cat).encode())
        have = line()
        os.write(fd, b'ack\\n')
        os.write(w, (have + '\\n').encode())
        time.sleep(3600)
        os._exit(0)
    print('child', child, os.read(r, 100).decode().strip(), flush=True)
    # the parent, which opened the channel, writes a want that is refused
    os.write(fd, ('want %s\\n' % bad).encode())
    print('parent', line(), flush=True)
    time.sleep(3600)
''')


@pytest.mark.timeout(90)
def test_want_that_got_error_makes_nobody_the_owner(serve):
    s = serve(args=('--kill-timeout', '2'))
    path = os.path.join(s.dir, 'head', 'invalidations')
    proc = subprocess.Popen([sys.executable, '-c', PARENT_AND_CHILD, path, '%016x' % s.tid,
                             'ffffffffffffffff'], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        first = proc.stdout.readline().split()
        child = int(first[1])
        assert first[2:4] == ['have', '%016x' % s.tid], first
        assert proc.stdout.readline().startswith('parent error '), 'the bad want was not refused'
        new = s.touch(1)
        wait_head(s.dir, new, timeout=20)
        assert proc.poll() is None, 'the process whose want got error was killed'
        assert stat_int(s.mnt, 'clients_killed') == 0
    finally:
        for pid in (child, proc.pid):
            if pid is not None and process_state(pid) not in (None, 'Z'):
                os.kill(pid, 9)
        proc.wait(10)
        proc.stdout.close()


# ---- mkdir beside the watcher's kernel notifications ----

@pytest.mark.timeout(180)
def test_mkdir_while_the_watcher_notifies_the_kernel_does_not_deadlock(serve):
    s = serve(nblk=2)
    big = []
    for _ in range(6):
        f = zbig.ZBigFile(4 * KiB)
        for blk in range(0, 20000, 7):
            f.write_block(blk, b'x', 'ZBlk0')
        big.append(s.w.add(f)[0])
    s._record()
    stop = threading.Event()

    def commit_to_the_visible_file():
        while not stop.is_set():
            s.touch(0)
            read_bytes(os.path.join(s.dir, 'head', 'data'))

    writer = threading.Thread(target=commit_to_the_visible_file, daemon=True)
    writer.start()
    try:
        for oid in big:
            with open('/proc/sys/vm/drop_caches', 'w') as f:
                f.write('2')            # dentries: the watcher's stat must look up again
            done = threading.Thread(target=s.mnt.bigfile, args=(oid,), daemon=True)
            done.start()
            done.join(60)
            assert not done.is_alive(), 'mkdir bigfile/%016x hangs' % oid
    finally:
        stop.set()
        writer.join(60)
    assert not writer.is_alive(), 'the writer hangs: reads of the visible file are stuck'
    tid = s.touch(1)
    wait_head(s.dir, tid)
