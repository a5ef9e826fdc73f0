"""The client library (wcfs_lib/client/views.py) against a real wcfs and ZEO server:
a view shows its file as of its tid whatever is committed after, resync
moves it, and the library answers wcfs's updates in time by itself.

Every content is compared with what the writer recorded for that tid.
"""

import hashlib
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from devtools.procs import wait_for
from wcfs_lib import client, zbig
from zhelp import Child, KiB, Writer, hex16, read_bytes, stat_int, wait_head

BS = 64 * KiB
CLIENT_LOG = 'wcfs.client'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def randbytes(seed, n):
    return random.Random(seed).randbytes(n)


class Recorded:
    """A ZBigFile committed to the zeo fixture, with its content as of every tid.

    content: {tid: bytes}; tid: the last tid; then a wcfs on the database
    (mnt; args: its extra arguments), dir: bigfile/<oid>.
    """

    def __init__(self, zeo, wcfs_mount, nblk=8, kind='ZBlk0', args=(), blocks=None):
        self.w = Writer(zeo.db())
        self.kind = kind
        if blocks is None:
            blocks = {blk: randbytes(blk, BS) for blk in range(nblk)}
        self.f, self.oid, self.tid = self.w.new_file(BS, blocks, kind)
        self.content = {self.tid: self.f.read()}
        self.mnt = wcfs_mount(zeo.zurl, *args)
        self.dir = self.mnt.bigfile(self.oid)
        self.data = os.path.join(self.dir, 'head', 'data')

    def commit(self, wait=True):
        """Commit, record the content; wait until head/data is as of the new tid; -> tid."""
        self.tid = self.w.commit()
        self.content[self.tid] = self.f.read()
        if wait:
            wait_head(self.dir, self.tid)
        return self.tid

    def change(self, step):
        """Change a few blocks, as the step number says, in the file's kind; same size."""
        rng = random.Random(step)
        for _ in range(rng.randint(1, 3)):
            n = rng.randint(1, 3 * 4096)
            self.f.write(rng.randrange(self.f.size() - n), randbytes(step, n), self.kind)


def mapped(path):
    """Lines of /proc/self/maps that map something under path."""
    with open('/proc/self/maps') as f:
        return [line for line in f if path in line]


def test_view_shows_the_file_as_of_its_tid(zeo, wcfs_mount):
    s = Recorded(zeo, wcfs_mount)
    with client.connect(s.mnt.path) as wc:
        view = wc.open(s.oid, at=s.tid)
        assert (view.oid, view.at, view.size) == (s.oid, s.tid, 8 * BS)
        a = view.ndarray()
        assert a.dtype == 'uint8' and a.shape == (8 * BS,)
        assert a.tobytes() == s.content[s.tid]


@pytest.mark.parametrize('kind', ['ZBlk0', 'ZBlk1'])
def test_view_at_old_tid_keeps_its_data_after_commits(zeo, wcfs_mount, kind):
    s = Recorded(zeo, wcfs_mount, kind=kind)
    tid0 = s.tid
    with client.connect(s.mnt.path) as wc:
        view = wc.open(s.oid, at=tid0)
        a = view.ndarray()
        for step in range(20):
            s.change(step)
            tid = s.commit()                # head moves only once the view acked
            assert read_bytes(s.data) == s.content[tid], 'step %d: head did not move' % step
            assert a.tobytes() == s.content[tid0], 'step %d' % step
        assert view.at == tid0
        assert stat_int(s.mnt, 'clients_killed') == 0


def test_view_opened_at_an_old_tid_after_commits(zeo, wcfs_mount):
    # δR of the first want is not empty; tid0 is older than wcfs's history of
    # the file (it was committed before the mount), so wcfs compares revisions.
    w = Writer(zeo.db())
    f, oid, tid0 = w.new_file(BS, {blk: randbytes(blk, BS) for blk in range(6)}, 'ZBlk1')
    old = f.read()
    f.write(BS + 100, b'one change', 'ZBlk1')
    f.write_block(4, b'another')
    w.commit()
    mnt = wcfs_mount(zeo.zurl)
    f.write_block(2, b'and one after the mount', 'ZBlk1')
    tid2 = w.commit()
    wait_head(mnt.bigfile(oid), tid2)
    with client.connect(mnt.path) as wc, wc.open(oid, at=tid0) as view:
        assert view.ndarray().tobytes() == old


def test_resync_moves_the_view(zeo, wcfs_mount):
    s = Recorded(zeo, wcfs_mount, kind='ZBlk1')
    tids = [s.tid]
    for step in range(6):
        s.change(step)
        tids.append(s.commit())
    with client.connect(s.mnt.path) as wc, wc.open(s.oid, at=tids[0]) as view:
        a = view.ndarray()
        for tid in tids[1:] + [tids[3], tids[0], tids[-1]]:    # forward, then back
            view.resync(tid)
            assert view.at == tid
            assert a.tobytes() == s.content[tid], hex16(tid)   # the same array follows
            assert view.ndarray().tobytes() == s.content[tid]
        view.resync(view.at)
        assert a.tobytes() == s.content[tids[-1]]


def test_resync_keeps_isolation_at_the_new_tid(zeo, wcfs_mount):
    s = Recorded(zeo, wcfs_mount)
    with client.connect(s.mnt.path) as wc, wc.open(s.oid, at=s.tid) as view:
        a = view.ndarray()
        for step in range(5):
            s.change(step)
            tid = s.commit()
            view.resync(tid)
            s.change(100 + step)
            s.commit()                      # after the resync: not seen
            assert a.tobytes() == s.content[tid], 'step %d' % step


def test_resync_right_after_commit_waits_for_wcfs(zeo, wcfs_mount, caplog):
    # Resync to a tid just committed: wcfs may not have seen it yet and
    # answers `have <Sat> wait` first; the view still ends as of that tid.
    caplog.set_level(logging.DEBUG, CLIENT_LOG)
    s = Recorded(zeo, wcfs_mount)
    with client.connect(s.mnt.path) as wc, wc.open(s.oid, at=s.tid) as view:
        a = view.ndarray()
        for step in range(30):
            s.change(step)
            tid = s.commit(wait=False)
            view.resync(tid)
            assert a.tobytes() == s.content[tid], 'step %d' % step
    waits = sum(m.endswith(' wait') for m in caplog.messages)
    print('resyncs answered with wait first: %d of 30' % waits)


CHILD = textwrap.dedent('''
    import hashlib, sys
    sys.path.insert(0, sys.argv[1])
    from wcfs_lib import client
    wc = client.connect(sys.argv[2])
    view, arrays = None, []
    for line in sys.stdin:
        cmd, *args = line.split()
        try:
            if cmd == 'open':
                view = wc.open(int(args[0], 16), at=int(args[1], 16))
                out = view.size
            elif cmd == 'resync':
                view.resync(int(args[0], 16))
                out = view.size
            elif cmd == 'array':
                arrays.append(view.ndarray())
                out = len(arrays) - 1
            elif cmd == 'sha1':
                out = hashlib.sha1(arrays[int(args[0])]).hexdigest()
            print('ok', out, flush=True)
        except Exception as e:
            print('error', repr(e).replace('\\n', ' '), flush=True)
    wc.close()
''')


class ChildClient(Child):
    """Another process with one view, driven line by line (open, resync,
    array, sha1). A view that faults (SIGBUS: a page of head/data past its
    end, not overlaid) fails the test instead of killing pytest."""

    def __init__(self, mnt):
        self.proc = subprocess.Popen([sys.executable, '-c', CHILD, ROOT, mnt.path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def call(self, *words):
        self.proc.stdin.write(' '.join(str(w) for w in words) + '\n')
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            how = 'signal %s' % signal.Signals(-rc).name if rc < 0 else 'status %d' % rc
            raise AssertionError('the client process died (%s) on %s' % (how, words))
        status, _, out = line.rstrip('\n').partition(' ')
        assert status == 'ok', '%s: %s' % (words, out)
        return out

    def open(self, oid, tid):
        return int(self.call('open', hex16(oid), hex16(tid)))

    def resync(self, tid):
        return int(self.call('resync', hex16(tid)))

    def array(self):
        return int(self.call('array'))

    def sha1(self, array):
        return self.call('sha1', array)


def sha1(data):
    return hashlib.sha1(data).hexdigest()


def test_file_grows_and_shrinks(zeo, wcfs_mount):
    s = Recorded(zeo, wcfs_mount, nblk=4)
    tid4 = s.tid
    with ChildClient(s.mnt) as c:
        assert c.open(s.oid, tid4) == 4 * BS
        a = c.array()
        s.f.write_block(9, randbytes(9, BS))
        tid10 = s.commit()
        assert c.sha1(a) == sha1(s.content[tid4])
        assert c.resync(tid10) == 10 * BS
        big = c.array()
        assert c.sha1(big) == sha1(s.content[tid10])
        assert c.sha1(a) == sha1(s.content[tid10][:4 * BS])    # the same memory

        s.f.truncate(2 * BS)
        tid2 = s.commit()
        assert c.sha1(big) == sha1(s.content[tid10])
        assert c.resync(tid2) == 2 * BS
        assert c.sha1(c.array()) == sha1(s.content[tid2])
        assert c.sha1(big) == sha1(s.content[tid2] + bytes(8 * BS))   # past the size: zeros

        s.f.write_block(6, b'back again')  # within the old size: zeros, not old data
        tid7 = s.commit()
        assert c.resync(tid7) == 7 * BS
        assert c.sha1(c.array()) == sha1(s.content[tid7])
        assert c.sha1(big) == sha1(s.content[tid7] + bytes(3 * BS))
        assert c.resync(tid4) == 4 * BS
        assert c.sha1(big) == sha1(s.content[tid4] + bytes(6 * BS))


def test_resync_past_the_reserve_fails_and_the_view_stays(zeo, wcfs_mount):
    s = Recorded(zeo, wcfs_mount, nblk=4)
    tid4 = s.tid
    with client.connect(s.mnt.path) as wc, wc.open(s.oid, at=tid4, reserve=5 * BS) as view:
        s.f.write_block(5, b'past the reserve')
        tid6 = s.commit()
        with pytest.raises(client.WCFSError, match='grew to %d bytes, past the %d bytes'
                           % (6 * BS, 5 * BS)):
            view.resync(tid6)
        assert view.at == tid4
        assert view.ndarray().tobytes() == s.content[tid4]
        s.f.truncate(5 * BS)
        tid5 = s.commit()
        view.resync(tid5)
        assert view.ndarray().tobytes() == s.content[tid5]


@pytest.mark.parametrize('holes', [False, True], ids=['no-holes', 'holes'])
def test_view_of_shrunk_file_keeps_the_blocks_gone_from_head(zeo, wcfs_mount, holes):
    # The blocks past the new end of head/data count as changed (SPEC 4.2),
    # holes among them too: the view overlays them all, or reading them is SIGBUS.
    blocks = {blk: randbytes(blk, BS) for blk in ((0, 1, 7) if holes else range(8))}
    s = Recorded(zeo, wcfs_mount, blocks=blocks)
    tid8 = s.tid
    with ChildClient(s.mnt) as c:
        c.open(s.oid, tid8)
        a = c.array()
        s.f.truncate(BS)
        s.commit()
        assert os.stat(s.data).st_size == BS
        assert c.sha1(a) == sha1(s.content[tid8])
        s.f.truncate(0)
        s.commit()
        assert os.stat(s.data).st_size == 0
        assert c.sha1(a) == sha1(s.content[tid8])


@pytest.mark.parametrize('holes', [False, True], ids=['no-holes', 'holes'])
def test_view_opened_at_a_tid_when_the_file_was_bigger(zeo, wcfs_mount, holes):
    blocks = {blk: randbytes(blk, BS) for blk in ((0, 7) if holes else range(8))}
    s = Recorded(zeo, wcfs_mount, blocks=blocks)
    tid8 = s.tid
    s.f.truncate(BS)
    s.commit()
    with ChildClient(s.mnt) as c:
        assert c.open(s.oid, tid8) == 8 * BS
        assert c.sha1(c.array()) == sha1(s.content[tid8])


def test_file_of_size_0(zeo, wcfs_mount):
    s = Recorded(zeo, wcfs_mount, blocks={})
    tid0 = s.tid
    with client.connect(s.mnt.path) as wc, wc.open(s.oid, at=tid0) as view:
        assert view.size == 0
        a = view.ndarray()
        assert a.shape == (0,)
        assert view.ndarray('float64', (0, 3)).shape == (0, 3)
        s.f.write_block(2, b'grown')
        tid = s.commit()
        assert view.ndarray().tobytes() == b''
        view.resync(tid)
        assert view.ndarray().tobytes() == s.content[tid]
        view.resync(tid0)
        assert view.size == 0


def test_ndarray_of_dtype_shape_offset(zeo, wcfs_mount):
    import numpy

    s = Recorded(zeo, wcfs_mount, nblk=4)
    want = numpy.frombuffer(s.content[s.tid], 'float64')
    with client.connect(s.mnt.path) as wc, wc.open(s.oid, at=s.tid) as view:
        a = view.ndarray('float64', (4, BS // 8))
        assert numpy.array_equal(a.ravel(), want, equal_nan=True)
        f = view.ndarray('float64', (BS // 8, 4), order='F')
        assert numpy.array_equal(f.ravel(order='F'), want, equal_nan=True)
        tail = view.ndarray('uint32', None, offset=3 * BS)
        assert tail.tobytes() == s.content[s.tid][3 * BS:]
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a[0, 0] = 1
        with pytest.raises(ValueError):
            a.flags.writeable = True
        with pytest.raises(ValueError, match='does not fit'):
            view.ndarray('uint8', 4 * BS + 1)
        with pytest.raises(ValueError, match='does not fit'):
            view.ndarray('uint8', 8, offset=4 * BS - 4)
        with pytest.raises(ValueError, match='outside'):
            view.ndarray('uint8', 1, offset=-1)


def test_zblk1_and_zblk0_blocks_mixed(zeo, wcfs_mount):
    s = Recorded(zeo, wcfs_mount, kind='ZBlk1')
    tid0 = s.tid
    with client.connect(s.mnt.path) as wc, wc.open(s.oid, at=tid0) as view:
        a = view.ndarray()
        s.f.write_block(1, randbytes(101, BS), 'ZBlk0')   # ZBlk1 -> ZBlk0
        s.f.write(5 * BS + 4096, b'chunk', 'ZBlk1')      # one chunk of a ZBlk1
        s.f.delete_block(3)                              # a hole
        tid1 = s.commit()
        s.f.write_block(1, randbytes(102, BS), 'ZBlk1')   # ZBlk0 -> ZBlk1
        s.f.set_blksize(2 * BS)                          # the ZBigFile object itself
        tid2 = s.commit()
        assert a.tobytes() == s.content[tid0]
        for tid in (tid1, tid2, tid0):
            view.resync(tid)
            assert a.tobytes() == s.content[tid]


def test_two_views_of_different_tids_in_one_process(zeo, wcfs_mount):
    s = Recorded(zeo, wcfs_mount)
    other = zbig.ZBigFile(BS)
    other.write_block(0, b'another file')
    other_oid, _ = s.w.add(other)
    tids = [s.tid]
    with client.connect(s.mnt.path) as wc:
        v0 = wc.open(s.oid, at=tids[0])
        s.change(1)
        tids.append(s.commit())
        v1 = wc.open(s.oid, at=tids[1])
        v2 = wc.open(other_oid)
        a0, a1, a2 = v0.ndarray(), v1.ndarray(), v2.ndarray()
        want2 = other.read()
        for step in range(2, 12):
            s.change(step)
            other.write_block(step % 3, b'step %d' % step)
            tids.append(s.commit())
            assert a0.tobytes() == s.content[tids[0]]
            assert a1.tobytes() == s.content[tids[1]]
            assert a2.tobytes() == want2
        v0.resync(tids[-1])
        assert a0.tobytes() == s.content[tids[-1]]
        assert a1.tobytes() == s.content[tids[1]]
        assert stat_int(s.mnt, 'subscribed') == 3


def test_close_unmaps_everything_and_closes_the_channel(zeo, wcfs_mount):
    s = Recorded(zeo, wcfs_mount)
    wc = client.connect(s.mnt.path)
    views = [wc.open(s.oid, at=s.tid) for _ in range(3)]
    s.change(1)
    tid = s.commit()
    views[1].resync(tid)
    assert mapped(s.mnt.path)
    assert stat_int(s.mnt, 'channels') == 3
    views[0].close()
    views[0].close()                        # a second close does nothing
    with pytest.raises(client.WCFSError, match='closed'):
        views[0].ndarray()
    with pytest.raises(client.WCFSError, match='closed'):
        views[0].resync(tid)
    wc.close()                              # closes the other views
    assert mapped(s.mnt.path) == []
    wait_for(lambda: stat_int(s.mnt, 'channels') == 0, what='wcfs to see the channels closed')
    assert stat_int(s.mnt, 'subscribed') == 0
    assert not [t for t in threading.enumerate() if t.name.startswith('wcfs-client')]
    with pytest.raises(client.WCFSError, match='closed'):
        wc.open(s.oid)
    s.change(2)
    s.commit()                              # head moves: nobody is subscribed any more


def test_ndarray_past_the_end_reads_zeros_and_follows_growth(zeo, wcfs_mount):
    # a ZBigArray may be longer than its file: its tail reads zeros
    s = Recorded(zeo, wcfs_mount, nblk=2)
    tid2 = s.tid
    with client.connect(s.mnt.path) as wc, wc.open(s.oid, at=tid2, reserve=8 * BS) as view:
        with pytest.raises(ValueError, match='does not fit'):
            view.ndarray(shape=5 * BS)
        a = view.ndarray(shape=5 * BS, zeros_past_end=True)
        assert a.tobytes() == s.content[tid2] + bytes(3 * BS)
        s.f.write_block(3, randbytes(3, BS))
        tid4 = s.commit()
        view.resync(tid4)
        assert a.tobytes() == s.content[tid4] + bytes(BS)
        s.f.truncate(BS)
        view.resync(s.commit())
        assert a.tobytes() == s.content[s.tid] + bytes(4 * BS)
        with pytest.raises(ValueError, match='reserved'):
            view.ndarray(shape=9 * BS, zeros_past_end=True)


def test_release_closes_the_channel_and_keeps_the_arrays_as_of_at(zeo, wcfs_mount):
    s = Recorded(zeo, wcfs_mount, nblk=4)
    old = s.tid
    wc = client.connect(s.mnt.path)
    try:
        view = wc.open(s.oid, at=old)
        a = view.ndarray()
        view.release()
        wait_for(lambda: stat_int(s.mnt, 'channels') == 0, what='wcfs to see the channel closed')
        with pytest.raises(client.WCFSError, match='closed'):
            view.resync(old)
        s.f.truncate(BS)                    # head shrinks under the array: no SIGBUS
        s.commit()
        assert a.tobytes() == s.content[old]
        assert mapped(s.mnt.path)
        del view, a
        wait_for(lambda: not mapped(s.mnt.path), what='the memory unmapped with its last array')
    finally:
        wc.close()


def test_open_at_head_by_default(zeo, wcfs_mount):
    s = Recorded(zeo, wcfs_mount)
    s.change(1)
    tid = s.commit()
    with client.connect(s.mnt.path) as wc:
        assert wc.head_at(s.oid) == tid
        with wc.open(s.oid) as view:
            assert view.at == tid
            assert view.ndarray().tobytes() == s.content[tid]


def test_errors_name_what_failed(zeo, wcfs_mount, tmp_path, monkeypatch):
    s = Recorded(zeo, wcfs_mount)
    before = s.w.touch_other()
    with pytest.raises(client.WCFSError, match='not a wcfs mount point'):
        client.connect(str(tmp_path))
    with client.connect(s.mnt.path) as wc:
        with pytest.raises(client.WCFSError, match='bigfile/000000007fff0000: no such object'):
            wc.open(0x7fff0000)
        root_oid = 0
        with pytest.raises(client.WCFSError, match='bigfile/0000000000000000: not a ZBigFile'):
            wc.open(root_oid)
        f2, oid2, tid2 = s.w.new_file(BS, {0: b'later'})
        with pytest.raises(client.WCFSError,
                           match='bigfile/%016x/@%016x: no such revision' % (oid2, before)):
            wc.open(oid2, at=before)
        with pytest.raises(client.WCFSError, match='@ffffffffffffff00: no such revision'):
            wc.open(s.oid, at=0xffffffffffffff00)
        assert mapped(s.mnt.path) == []     # nothing left of the failed opens

        # wcfs's `error` line: a want for a tid after the last transaction,
        # while @<tid>/data of a valid tid is at hand.
        at = s.tid
        view = wc.open(s.oid, at=at)
        real_open_rev = client.View._open_rev
        monkeypatch.setattr(client.View, '_open_rev',
                            lambda self, tid: real_open_rev(self, at))
        future = 0xffffffffffffff00
        with pytest.raises(client.WCFSError) as e:
            view.resync(future)
        assert str(e.value).startswith('bigfile/%016x: want %016x: ' % (s.oid, future))
        assert 'after the last transaction' in str(e.value)
        monkeypatch.undo()
        assert view.at == at                # the view stays as it was, and keeps working
        s.change(1)
        tid = s.commit()
        assert view.ndarray().tobytes() == s.content[at]
        view.resync(tid)
        assert view.ndarray().tobytes() == s.content[tid]


ACKER = textwrap.dedent('''
    import hashlib, sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from wcfs_lib import client
    mnt, oid, at = sys.argv[2], int(sys.argv[3], 16), int(sys.argv[4], 16)
    with client.connect(mnt) as wc, wc.open(oid, at=at) as view:
        a = view.ndarray()
        print('ready', hashlib.sha1(a).hexdigest(), flush=True)
        # the main thread keeps the GIL busy in pure Python until told to stop
        stop = []
        threading.Thread(target=lambda: stop.append(sys.stdin.readline()), daemon=True).start()
        n = 0
        while not stop:
            n = (n * 31 + 7) % 1000003
        print('done', hashlib.sha1(a).hexdigest(), flush=True)
''')


def test_reader_acks_in_time_so_the_client_is_never_killed(zeo, wcfs_mount):
    # The client is another process (were it killed, pytest would not be):
    # its main thread never calls the library after open, and its reader
    # thread must answer every update within wcfs's --kill-timeout.
    s = Recorded(zeo, wcfs_mount, args=('--kill-timeout', '2'))
    tid0 = s.tid
    proc = subprocess.Popen([sys.executable, '-c', ACKER, ROOT, s.mnt.path, hex16(s.oid),
                             hex16(tid0)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        want = sha1(s.content[tid0])
        assert proc.stdout.readline().split() == ['ready', want]
        for step in range(60):
            s.change(step)
            s.commit()                      # waits for head/at, which waits for the ack
        assert proc.poll() is None, 'the client exited with %s' % proc.returncode
        proc.stdin.write('stop\n')
        proc.stdin.flush()
        assert proc.stdout.readline().split() == ['done', want]
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert stat_int(s.mnt, 'clients_killed') == 0
    assert 'killed' not in s.mnt.log()
