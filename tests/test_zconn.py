"""numpy arrays of ZBigArrays that follow a ZODB connection
(wcfs_lib/client/zconn.py), against a real wcfs on ZEO and on PostgreSQL:
an array is its connection's snapshot, moves at the connection's boundaries
only, and other processes' commits never show through between them.

Every array is compared with what the writer recorded for that tid: the
ZBigFile's bytes, so that a shape past them reads zeros.
"""

import contextlib
import hashlib
import os
import random
import select
import subprocess
import sys

import numpy
import pytest
import transaction
from ZODB.utils import u64

from devtools import wendelin37
from devtools.procs import wait_for
from wcfs_lib import client, zbig
from wcfs_lib.client.zconn import snapshot_at
from zhelp import Child, hex16, stat_int

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, 'zconnchild.py')
BS = 64 * 1024
LINE_TIMEOUT = 60       # seconds a reader's next line may take


class ArrayWriter:
    """root['A'], a ZBigArray committed through db; model: {tid: (shape, the
    ZBigFile's bytes)} of every commit."""

    def __init__(self, db, shape, dtype, order='C'):
        zbig.install()
        self.conn = db.open()
        self.rng = random.Random(1)
        self.a = zbig.ZBigArray(shape, dtype, order=order, blksize=BS)
        self.a[:] = numpy.arange(numpy.prod(shape), dtype=dtype).reshape(shape, order=order)
        self.conn.root()['A'] = self.a
        self.model = {}
        self.commit()

    def commit(self):
        transaction.commit()
        self.tid = snapshot_at(self.conn)
        self.model[self.tid] = (tuple(self.a.shape), self.a.zfile.read())
        return self.tid

    def step(self):
        """One commit: a slice changed, or the array appended to or shrunk."""
        n = self.a.shape[0]
        kind = self.rng.choice(['set', 'set', 'append', 'shrink'])
        if kind == 'append':
            self.a.append(numpy.full(self.rng.randrange(1, 3 * BS // 4), n, self.a.dtype))
        elif kind == 'shrink' and n > BS:
            self.a.resize((n - self.rng.randrange(1, BS // 2),))
        else:
            i = self.rng.randrange(n)
            j = min(n, i + self.rng.randrange(1, 2 * BS))
            self.a[i:j] = self.rng.randrange(1 << 30)
        return self.commit()

    def image(self, tid, shape):
        """The bytes an array of shape shows as of tid: the file's, zeros past its end."""
        nbytes = int(numpy.prod(shape)) * self.a.dtype.itemsize
        return self.model[tid][1][:nbytes].ljust(nbytes, b'\0')

    def close(self):
        transaction.abort()
        self.conn.close()


@contextlib.contextmanager
def served_array(server, wcfs_mount, shape, dtype='int32', order='C'):
    """-> (ArrayWriter of root['A'] through server's db, a wcfs on it, a
    client Connection to that wcfs); the writer closed after."""
    w = ArrayWriter(server.db(), shape, dtype, order=order)
    try:
        mnt = wcfs_mount(server.zurl)
        with client.connect(mnt.path) as wc:
            yield w, mnt, wc
    finally:
        w.close()


class ReaderProcess(Child):
    """tests/zconnchild.py: a connection of its own, a line per boundary."""

    def __init__(self, zurl, mnt, at=None):
        argv = [sys.executable, CHILD, zurl, mnt.path] + (['at=' + hex16(at)] if at else [])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.line() == 'ready'

    def line(self):
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], LINE_TIMEOUT)[0]:
            raise AssertionError('the reader said nothing for %d s' % LINE_TIMEOUT)
        line = self.proc.stdout.readline()
        assert line, 'the reader exited with %s' % self.proc.wait()
        return line.rstrip('\n')

    def boundaries_until(self, tid):
        """-> the reader's lines, parsed, until it reports snapshot tid."""
        out = []
        while not out or out[-1][0] != tid:
            at, shape, h1, h2, fshape, fh = self.line().split()
            out.append((int(at, 16), _shape(shape), h1, h2, _shape(fshape), fh))
        return out


def _shape(text):
    return tuple(int(n) for n in text.split('x')) if text != '-' else ()


def sha1(data):
    return hashlib.sha1(data).hexdigest()


def check_boundaries(w, lines):
    """Each boundary's arrays are exactly the writer's model as of its snapshot."""
    assert lines
    for at, shape, h1, h2, fshape, fh in lines:
        assert at in w.model, 'snapshot %016x is none of the writer\'s commits' % at
        assert shape == w.model[at][0], 'array of the wrong shape at %016x' % at
        assert h1 == sha1(w.image(at, shape)), 'array differs from the model at %016x' % at
        assert h2 == h1, 'array changed inside the transaction at %016x' % at
        assert fh == sha1(w.image(at, fshape)), 'the first array did not follow to %016x' % at


@pytest.mark.timeout(300)
def test_arrays_are_the_connections_snapshot_at_every_boundary(database, wcfs_mount):
    w = ArrayWriter(database.db(), (BS,), 'int32')
    try:
        mnt = wcfs_mount(database.zurl)
        with ReaderProcess(database.zurl, mnt) as reader:
            first = reader.boundaries_until(w.tid)
            for _ in range(30):
                w.step()
            lines = first + reader.boundaries_until(w.tid)
        check_boundaries(w, lines)
        seen = {line[0] for line in lines}
        assert len(seen) > 2, 'the reader saw too few snapshots to test anything: %d' % len(seen)
    finally:
        w.close()


@pytest.mark.timeout(300)
def test_arrays_of_a_historical_connection_never_move(database, wcfs_mount):
    w = ArrayWriter(database.db(), (BS,), 'int32')
    try:
        old = w.tid
        w.step()
        mnt = wcfs_mount(database.zurl)
        with ReaderProcess(database.zurl, mnt, at=old) as reader:
            lines = reader.boundaries_until(old)
            for _ in range(5):
                w.step()
            lines += [reader.boundaries_until(old)[-1] for _ in range(5)]
        check_boundaries(w, lines)
        assert {line[0] for line in lines} == {old}
    finally:
        w.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize('order', ['C', 'F'])
def test_array_has_the_zbigarrays_dtype_shape_and_order(zeo, wcfs_mount, order):
    with served_array(zeo, wcfs_mount, (300, 7, 5), 'float64', order) as (_, _, wc):
        conn = zeo.db().open(transaction.TransactionManager())
        a = client.asarray(conn.root()['A'], wc=wc)
        expect = numpy.arange(300 * 7 * 5, dtype='float64').reshape((300, 7, 5), order=order)
        assert (a.dtype, a.shape) == (expect.dtype, expect.shape)
        assert a.flags.f_contiguous == (order == 'F')
        assert not a.flags.writeable
        assert (a == expect).all()
        conn.close()


@pytest.mark.timeout(120)
def test_own_changes_show_after_commit_not_before(zeo, wcfs_mount):
    with served_array(zeo, wcfs_mount, (BS,)) as (w, _, wc):
        a = client.asarray(w.a, wc=wc)          # the writer's own connection
        w.a[:10] = -1
        w.a.append(numpy.zeros(BS, 'int32'))
        assert a[:10].tolist() == list(range(10)), 'an uncommitted change shows'
        again = client.asarray(w.a, wc=wc)
        assert again.shape == (BS,), 'the shape of the uncommitted state'
        tid = w.commit()
        assert a[:10].tolist() == [-1] * 10, 'the commit does not show'
        assert client.asarray(w.a, wc=wc).shape == (2 * BS,)
        assert a.tobytes() == w.image(tid, (BS,))


@pytest.mark.timeout(120)
def test_one_channel_per_file_and_connection_released_at_close(zeo, wcfs_mount):
    with served_array(zeo, wcfs_mount, (BS,)) as (w, mnt, wc):
        tm1, tm2 = transaction.TransactionManager(), transaction.TransactionManager()
        c1, c2 = zeo.db().open(tm1), zeo.db().open(tm2)
        arrays = [client.asarray(c1.root()['A'], wc=wc) for _ in range(3)]
        assert stat_int(mnt, 'channels') == 1
        b = client.asarray(c2.root()['A'], wc=wc)
        assert stat_int(mnt, 'channels') == 2
        old = w.tid
        c1.close()
        wait_for(lambda: stat_int(mnt, 'channels') == 1, what='c1\'s channel closed')
        w.a.resize((BS // 2,))
        w.a.zfile.truncate(2 * BS)         # the file shrinks under c1's arrays
        w.commit()
        for a in arrays:                            # still there, as of c1's last snapshot
            assert a.tobytes() == w.image(old, (BS,))
        tm2.begin()
        assert b.tobytes() == w.image(w.tid, (BS,))
        c2.close()
        wait_for(lambda: stat_int(mnt, 'channels') == 0, what='c2\'s channel closed')


@pytest.mark.timeout(120)
def test_a_pooled_connection_opened_again_follows_from_its_new_snapshot(zeo, wcfs_mount):
    db = zeo.new_db()
    try:
        with served_array(zeo, wcfs_mount, (BS,)) as (w, mnt, wc):
            tm = transaction.TransactionManager()
            conn = db.open(tm)
            old = client.asarray(conn.root()['A'], wc=wc)
            conn.close()                            # back to the pool; old keeps its snapshot
            first = w.tid
            w.step()
            # db is a ZEO client of its own: it opens at w.tid once told of it
            wait_for(lambda: u64(db.storage.lastTransaction()) >= w.tid,
                     what='the commit reached the second client')
            again = db.open(tm)
            assert again is conn, 'the pool gave another connection: nothing to test'
            a = client.asarray(again.root()['A'], wc=wc)
            assert snapshot_at(again) == w.tid
            assert a.tobytes() == w.image(w.tid, a.shape)
            assert old.tobytes() == w.image(first, old.shape)
            w.step()
            tm.begin()
            assert a.tobytes() == w.image(w.tid, a.shape)
            assert stat_int(mnt, 'channels') == 1
            again.close()
    finally:
        db.close()


@pytest.mark.timeout(120)
def test_asarray_starts_the_wcfs_of_its_database_when_asked(zeo, runtime):
    db = zeo.new_db()       # of its own: asarray keeps the wcfs it found per DB
    try:
        w = ArrayWriter(db, (BS,), 'int32')
        try:
            conn = db.open(transaction.TransactionManager())
            with pytest.raises(client.WCFSError, match='no wcfs'):
                client.asarray(conn.root()['A'])
            a = client.asarray(conn.root()['A'], autostart=True)
            assert a.tobytes() == w.image(w.tid, (BS,))
            mounts = [m for m in (runtime / 'wcfs').glob('*/mnt') if os.path.ismount(m)]
            assert len(mounts) == 1, mounts
            conn.close()
        finally:
            w.close()
    finally:
        db.close()


@pytest.mark.timeout(120)
def test_a_sparse_16gib_array_costs_no_memory_until_touched(zeo, wcfs_mount):
    zbig.install()
    conn = zeo.db().open()
    try:
        a = zbig.ZBigArray((2 << 30,), 'int64')         # 16 GiB
        a[:4] = [1, 2, 3, 4]
        a[(2 << 30) - 4:] = [5, 6, 7, 8]
        conn.root()['A'] = a
        transaction.commit()
        mnt = wcfs_mount(zeo.zurl)
        with client.connect(mnt.path) as wc:
            rss = _vmrss()
            view = client.asarray(a, wc=wc)
            grown = _vmrss() - rss
            assert view.nbytes == 16 << 30
            assert grown < 10 << 20, 'RSS grew by %d MiB' % (grown >> 20)
            assert view[:4].tolist() == [1, 2, 3, 4] and view[-4:].tolist() == [5, 6, 7, 8]
            assert view[1 << 29] == 0
    finally:
        transaction.abort()
        conn.close()


def _vmrss():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    raise AssertionError('no VmRSS in /proc/self/status')


def test_an_object_not_in_the_database_is_refused(zeo):
    zbig.install()
    a = zbig.ZBigArray((10,), 'int32')
    with pytest.raises(client.WCFSError, match='not loaded through a ZODB connection'):
        client.asarray(a)
    conn = zeo.db().open()
    try:
        conn.root()['A'] = a
        conn.add(a)
        with pytest.raises(client.WCFSError, match='not committed yet'):
            client.asarray(a, wc=object())
    finally:
        transaction.abort()
        conn.close()


def test_snapshot_of_a_connection(zeo):
    db = zeo.db()
    conn = db.open(transaction.TransactionManager())
    try:
        last = int.from_bytes(zeo.last_transaction(), 'big')
        assert snapshot_at(conn) == last
        old = db.open(transaction.TransactionManager(), at=(last).to_bytes(8, 'big'))
        assert snapshot_at(old) == last
        old.close()
    finally:
        conn.close()


# wendelin.core 0.13 writes C and F arrays (assignment, then append along the
# major axis), in .venv37 (devtools/wendelin37.py)
WENDELIN_WRITES = '''
import numpy
import transaction
from wendelin.bigarray.array_zodb import ZBigArray
db = open_db()
conn = db.open()
for order in 'CF':
    a = conn.root()['w' + order] = ZBigArray((1000, 300), 'float64', order=order)
    transaction.commit()        # wendelin.core maps an array once its file has a connection
    a[:] = numpy.arange(300000, dtype='float64').reshape((1000, 300), order=order)
    a.append(numpy.full((500, 300) if order == 'C' else (1000, 200), -1.0))
    transaction.commit()
conn.close()
db.close()
'''


def _wendelin_expected(order):
    a = numpy.arange(300000, dtype='float64').reshape((1000, 300), order=order)
    tail = numpy.full((500, 300) if order == 'C' else (1000, 200), -1.0)
    return numpy.concatenate([a, tail], axis=0 if order == 'C' else 1)


@pytest.mark.timeout(300)
@pytest.mark.skipif(wendelin37.unavailable() is not None, reason=str(wendelin37.unavailable()))
@pytest.mark.parametrize('kind', [None, 'ZBlk1'], ids=['default kind', 'ZBlk1'])
def test_arrays_of_what_wendelin_core_wrote(zeo, wcfs_mount, kind):
    env = {'WENDELIN_CORE_ZBLK_FMT': kind} if kind else {}
    wendelin37.run(WENDELIN_WRITES, zeo.addr, env=env, timeout=300)
    mnt = wcfs_mount(zeo.zurl)
    db = zeo.new_db()
    try:
        with client.connect(mnt.path) as wc:
            conn = db.open(transaction.TransactionManager())
            for order in 'CF':
                a = client.asarray(conn.root()['w' + order], wc=wc)
                expect = _wendelin_expected(order)
                assert (a.shape, a.flags.f_contiguous) == (expect.shape, order == 'F')
                assert (a == expect).all(), 'order %s differs' % order
            conn.close()
    finally:
        db.close()
