"""wcfs on RelStorage/PostgreSQL (issue 10): what only this kind of database
can get wrong. The layout, following, protocol and outage tests run on it
too, through the `database` fixture.

- A RelStorage instance answers from its snapshot: asked for a revision
  past it, it gives the old state silently. Reads of a revision right after
  its commit must never be stale.
- One instance is not thread-safe, and PostgreSQL allows 100 connections in
  all: many readers at once get the right data through at most
  --db-connections connections (plus the one that polls, and the one that
  opened the database).
- A history-free database cannot serve old revisions: refused at start.
- PostgreSQL restarted while wcfs serves: EIO while it is away, then wcfs
  follows again, nothing lost.
- Polling folds commits: several commits between two polls are one step,
  whose δ is the union of theirs.
"""

import errno
import os
import threading

import pytest

from ZODB.utils import u64

from zhelp import Writer, hex16, read_bytes, stats, wait_head
from chanhelp import Chan, ranges_of
from devtools.procs import wait_for

KiB = 1 << 10
BS = 64 * KiB


def block(tag, n=BS):
    return (b'%s.' % tag.encode()) * (n // (len(tag) + 1)) + b'\0' * (n % (len(tag) + 1))


def serves_and_follows(mnt, w, f, oid, blk):
    """mnt shows f, and f after a commit that changes block blk."""
    fdir = mnt.bigfile(oid)
    assert read_bytes(os.path.join(fdir, 'head', 'data')) == f.read()
    f.write_block(blk, block('changed %d' % blk))
    tid = w.commit()
    wait_head(fdir, tid)
    assert read_bytes(os.path.join(fdir, 'head', 'data')) == f.read()


def test_history_free_database_is_refused(postgres_history_free, wcfs_mount):
    mnt = wcfs_mount(postgres_history_free.zurl, expect_fail=True)
    assert mnt.proc.returncode == 1
    lines = [line for line in mnt.log().splitlines() if 'history-free' in line]
    assert lines, mnt.log()
    assert 'Traceback' not in mnt.log()


def test_revision_read_right_after_its_commit_is_never_stale(postgres, wcfs_mount):
    """One connection for loads, so that the one polled for a tid is the one
    that must answer for the next: as of the head the watcher moved to, and
    as of an @tid the watcher has not seen yet."""
    w = Writer(postgres.db())
    f, oid, tid = w.new_file(BS, {blk: block('v0 %d' % blk) for blk in range(4)})
    mnt = wcfs_mount(postgres.zurl, '--db-connections', '1', '--db-poll-interval', '0.2')
    fdir = mnt.bigfile(oid)
    head = os.path.join(fdir, 'head', 'data')
    assert read_bytes(head) == f.read()
    for step in range(1, 21):
        blk = step % 4
        f.write_block(blk, block('v%d %d' % (step, blk)))
        tid = w.commit()
        if step % 2:
            wait_head(fdir, tid)
            assert read_bytes(head) == f.read(), 'head, step %d' % step
        else:
            revdir = os.path.join(fdir, '@%s' % hex16(tid))
            os.mkdir(revdir)
            assert read_bytes(os.path.join(revdir, 'data')) == f.read(), '@tid, step %d' % step


def _connections(pid, port):
    """TCP connections of process `pid` to 127.0.0.1:`port`."""
    inodes = set()
    fddir = '/proc/%d/fd' % pid
    for fd in os.listdir(fddir):
        try:
            target = os.readlink(os.path.join(fddir, fd))
        except OSError:
            continue
        if target.startswith('socket:['):
            inodes.add(target[8:-1])
    n = 0
    with open('/proc/net/tcp') as f:
        next(f)
        for line in f:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if inode in inodes and int(remote.split(':')[1], 16) == port and state == '01':
                n += 1
    return n


def test_many_readers_at_once_share_a_bounded_pool(postgres, wcfs_mount):
    w = Writer(postgres.db())
    files = []
    for i in range(4):
        f, oid, _ = w.new_file(BS, {blk: block('f%d b%d' % (i, blk)) for blk in range(16)})
        files.append((f, oid))
    mnt = wcfs_mount(postgres.zurl, '--db-connections', '3')
    paths = [(f, os.path.join(mnt.bigfile(oid), 'head', 'data')) for f, oid in files]
    errors, most = [], [0]
    done = threading.Event()

    def reader(k):
        f, path = paths[k % len(paths)]
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                for blk in range(16):
                    blk = (blk + k) % 16
                    got = os.pread(fd, BS, blk * BS)
                    if got != f.read_block(blk):
                        errors.append('reader %d: block %d differs' % (k, blk))
            finally:
                os.close(fd)
        except OSError as e:
            errors.append('reader %d: %s' % (k, e))

    def watch():
        while not done.is_set():
            most[0] = max(most[0], _connections(mnt.pid, postgres.addr[1]))
            done.wait(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=reader, args=(k,)) for k in range(32)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), 'readers still blocked after 120 s'
    finally:
        done.set()
        watcher.join()
    assert errors == []
    # 3 for loads, 2 that poll, 1 the database was opened with
    assert 0 < most[0] <= 6, most[0]
    assert stats(mnt)['database'] == 'connected'


def test_postgresql_restart_while_serving(postgres, wcfs_mount):
    w = Writer(postgres.db())
    f, oid, tid = w.new_file(BS, {blk: block('a%d' % blk) for blk in range(4)})
    mnt = wcfs_mount(postgres.zurl, '--db-timeout', '2')
    fdir = mnt.bigfile(oid)
    data = os.path.join(fdir, 'head', 'data')
    with open(data, 'rb') as fh:
        assert fh.read(BS) == block('a0')               # block 0 in the page cache
    postgres.stop()
    try:
        wait_for(lambda: stats(mnt)['database'] == 'unreachable', 20, 'database: unreachable')
        with open(data, 'rb') as fh:
            assert fh.read(BS) == block('a0')           # cached pages still read
            fh.seek(2 * BS)
            with pytest.raises(OSError) as e:
                fh.read(BS)                             # needs the database
            assert e.value.errno == errno.EIO
    finally:
        postgres.start()
    wait_for(lambda: stats(mnt)['database'] == 'connected', 30, 'database: connected')
    f.write_block(2, block('b2'))
    tid = w.commit()
    wait_head(fdir, tid, timeout=30)
    assert read_bytes(data) == f.read()
    assert 'Traceback' not in mnt.log()


def test_commits_between_two_polls_are_one_step(postgres, wcfs_mount):
    w = Writer(postgres.db())
    f, oid, tid0 = w.new_file(BS, {blk: block('x%d' % blk) for blk in range(8)})
    mnt = wcfs_mount(postgres.zurl, '--db-poll-interval', '10')   # all three before the first poll
    fdir = mnt.bigfile(oid)
    with Chan(fdir) as ch:
        ch.subscribe(tid0)
        tids = []
        for blk in (1, 5, 6):
            f.write_block(blk, block('y%d' % blk))
            tids.append(w.commit())
        have = ch.have(timeout=30)
        assert have.tid == tids[-1], 'one step for all three commits: %r' % have
        assert have.ranges == ranges_of({1, 5, 6}, BS)
        ch.ack()
    wait_head(fdir, tids[-1], timeout=30)
    assert read_bytes(os.path.join(fdir, 'head', 'data')) == f.read()


def test_a_role_that_may_only_select_serves_and_the_database_is_left_as_it_was(postgres,
                                                                              wcfs_mount):
    """wcfs opens postgres:// read-only and without RelStorage's schema check,
    which would run DDL (CREATE SEQUENCE) that a reading role may not."""
    w = Writer(postgres.db())
    f, oid, tid = w.new_file(BS, {blk: block('r%d' % blk) for blk in range(3)})
    reader = postgres.cluster.add_reader(postgres.dbname)
    catalog = "SELECT relname, relkind FROM pg_class WHERE relnamespace = 'public'::regnamespace " \
              "ORDER BY relname"
    before = postgres.cluster.sql(catalog, dbname=postgres.dbname)
    serves_and_follows(wcfs_mount(postgres.cluster.zurl(postgres.dbname, user=reader)),
                       w, f, oid, 1)
    assert postgres.cluster.sql(catalog, dbname=postgres.dbname) == before
    assert 'permission denied' not in postgres.log


def test_prefetched_records_are_the_records_loadBefore_gives(postgres):
    """One query fetches many records as of a revision (a big file's index
    loads in batches); each must be what loadBefore answers, next revision
    included."""
    from ZODB.utils import p64
    from wcfs_lib.zodb import zstorage
    w = Writer(postgres.db())
    f, oid, _ = w.new_file(BS, {blk: block('p0 %d' % blk) for blk in range(6)})
    tids = []
    for step in range(1, 4):
        for blk in range(step, 6):
            f.write_block(blk, block('p%d %d' % (step, blk)))
        tids.append(w.commit())
    oids = [u64(f.blktab[blk]._p_oid) for blk in range(6)] + [oid, u64(f.blktab._p_oid)]
    database = zstorage.open_database(postgres.zurl, 10)
    try:
        for at in tids:
            want = {o: database.load(p64(o), p64(at + 1), True, True) for o in oids}
            database.prefetch(oids, at)
            got = {o: database._ahead.take(p64(o), p64(at + 1)) for o in oids}
            assert got == want, 'as of %016x' % at
    finally:
        database.close()


def test_zconfig_through_the_unix_socket_serves_and_follows(postgres, wcfs_mount):
    """zconfig:// reaches PostgreSQL where postgres:// cannot (a Unix socket);
    the storage it describes, not the scheme, makes wcfs poll it."""
    w = Writer(postgres.db())
    f, oid, tid = w.new_file(BS, {blk: block('z%d' % blk) for blk in range(3)})
    serves_and_follows(wcfs_mount(postgres.zconfig(socket=True, read_only=True)), w, f, oid, 2)


def test_history_free_database_through_zconfig_is_refused(postgres_history_free, wcfs_mount):
    mnt = wcfs_mount(postgres_history_free.zconfig(), expect_fail=True)
    assert mnt.proc.returncode == 1
    assert 'history-free' in mnt.log() and 'Traceback' not in mnt.log()
