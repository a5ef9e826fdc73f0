"""Shutdown is one path (wcfs_lib/service/server.py stop()): whatever asked for it
(SIGTERM, a failure of the timer loop), wcfs unmounts, ends every thread it
started (FUSE, watcher, movers, prefetch, poller) and closes the database.

- wcfs.py with a prefetch under way and a mover waiting for an ack: after
  SIGTERM it exits 0, the mount is gone, and its log names no thread left;
- an in-process Server whose timer task raises still unmounts, joins its
  threads and closes the database (serve() -> 1).
"""

import os
import threading

import pytest

import wcfs
from chanhelp import Chan
from devtools.procs import is_mounted, wait_for
from wcfs_lib.service import server
from zhelp import KiB, Writer, read_bytes

BS = 64 * KiB
NBLK = 64


def file_being_served(database):
    """A file of NBLK blocks; -> (writer, f, oid, tid)."""
    w = Writer(database.db())
    f, oid, tid = w.new_file(BS, {blk: bytes([blk]) * BS for blk in range(NBLK)})
    return w, f, oid, tid


def busy(mnt_path, w, f, oid, tid):
    """Start a prefetch (a sequential read) and a mover that waits for an
    ack that never comes; -> the channel (to close)."""
    fdir = os.path.join(mnt_path, 'bigfile', '%016x' % oid)
    os.mkdir(fdir)
    ch = Chan(fdir)
    ch.subscribe(tid)
    assert read_bytes(os.path.join(fdir, 'head', 'data')) == b''.join(
        bytes([blk]) * BS for blk in range(NBLK))
    f.write_block(0, b'new')
    new = w.commit()
    assert ch.have().tid == new         # never acked: the mover waits
    return ch


def close_quietly(ch):
    """Close a channel of a mount that may be gone (ENOTCONN)."""
    try:
        ch.close()
    except OSError:
        pass


@pytest.mark.timeout(120)
def test_sigterm_leaves_no_thread_and_no_mount(database, wcfs_mount):
    w, f, oid, tid = file_being_served(database)
    mnt = wcfs_mount(database.zurl, '--kill-timeout', '1000')
    ch = busy(mnt.path, w, f, oid, tid)
    try:
        assert mnt.stop() == 0
    finally:
        close_quietly(ch)
    log = mnt.log()
    assert 'unmounted' in log, log
    assert 'threads still running' not in log, log
    assert not is_mounted(mnt.path)


WCFS_THREADS = ('fuse', 'watcher', 'mover-', 'prefetch-', 'poller')


def wcfs_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith(WCFS_THREADS)]


class TimerFailure(Exception):
    pass


def failing():
    raise TimerFailure('a timer task failed')


@pytest.mark.timeout(120)
def test_failing_timer_task_still_unmounts_joins_and_closes(zeo, tmp_path):
    w, f, oid, tid = file_being_served(zeo)
    path = tmp_path / 'mnt'
    path.mkdir()
    srv = server.Server(wcfs.parse_args(['--kill-timeout', '1000', zeo.zurl, str(path)]))
    srv.start()
    ch = None
    try:
        ch = busy(srv.mountpoint, w, f, oid, tid)
        assert any(n.startswith('mover-') for n in wcfs_threads()), wcfs_threads()
        srv.malloc.trim = failing       # the next tick fails
        assert srv.serve() == 1
        assert not is_mounted(path)
        assert wcfs_threads() == []
        assert not srv.records.connected()      # the database is closed
    finally:
        if ch is not None:
            close_quietly(ch)
        if is_mounted(path):
            srv.stop()
    wait_for(lambda: not is_mounted(path), 10, 'the mount to go')
