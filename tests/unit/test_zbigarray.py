"""zbig's ZBigArray: wendelin.core's state exactly, and the array a numpy model says.

The model of a ZBigArray (zarrays.Model) is wendelin.core's: the bytes of a
file that only grows, and over it the ndarray of the current shape, dtype and
order at offset 0; resize() changes the shape only.
"""

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy
import pytest
import transaction
import zodbpickle.pickle
from ZODB.MappingStorage import MappingStorage
from ZODB.utils import u64
from hypothesis import given, settings, strategies as st

from wcfs_lib import zbig
from mappingdb import db_with_connection
from zarrays import Model, assert_reads

A = 'wendelin.bigarray.array_zodb.'
Z = 'wendelin.bigfile.file_zodb.'
MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db():
    """A ZODB.DB on a MappingStorage, with .conn, a connection of its own transaction manager."""
    yield from db_with_connection(MappingStorage())


def store(db, obj, name='a'):
    db.conn.root()[name] = obj
    db.tm.commit()


def loaded(db, name='a'):
    """The object as a new connection loads it: -> (object, connection to close)."""
    conn = db.open(transaction.TransactionManager())
    return conn.root()[name], conn


# ---- the state, exactly wendelin.core's ----

@pytest.mark.parametrize('order, shape, dtype, strides', [
    ('C', (4, 3, 2), 'int16', (12, 4, 2)),
    ('F', (4, 3, 2), 'int16', (2, 8, 24)),
    ('C', (5,), 'float64', (8,)),
    ('F', (5,), '>u4', (4,)),
    ('C', (0, 7), 'int8', (7, 1)),
])
def test_state_is_wendelin_cores(order, shape, dtype, strides):
    a = zbig.ZBigArray(shape, dtype, order=order)
    assert a.__getstate__() == ({'_dtype': numpy.dtype(dtype), '_shape': shape, '_order': order,
                                 '_stridev': strides}, {'zfile': a.zfile})
    state = a.__getstate__()[0]
    assert type(state['_shape']) is tuple and all(type(n) is int for n in state['_shape'])
    assert all(type(n) is int for n in state['_stridev'])
    assert (a.shape, a.dtype, a.strides, a.order) == (shape, numpy.dtype(dtype), strides, order)
    assert a.zfile.blksize == 2 * MiB and not a.zfile.blktab


def test_shape_given_as_int_or_numpy_ints_is_a_tuple_of_ints():
    assert zbig.ZBigArray(5, 'int8').__getstate__()[0]['_shape'] == (5,)
    shape = zbig.ZBigArray(numpy.array([2, 3]), 'int8').__getstate__()[0]['_shape']
    assert shape == (2, 3) and all(type(n) is int for n in shape)


class Ref:
    """A persistent reference in a record: its oid and class name."""

    def __init__(self, oid, cls):
        self.oid, self.cls = oid, cls

    def __eq__(self, other):
        return (self.oid, self.cls) == (other.oid, other.cls)

    def __repr__(self):
        return 'Ref(%d, %s)' % (self.oid, self.cls)


class _Unpickler(zodbpickle.pickle.Unpickler):
    """Classes by name, except numpy's (the dtype in the state is a real one)."""

    def find_class(self, module, name):
        if module.split('.')[0] == 'numpy':
            return super().find_class(module, name)
        return module + '.' + name

    def persistent_load(self, pid):
        oid, cls = pid
        return Ref(u64(oid), cls)


def decode(db, obj):
    """-> (class name, state) of obj's committed record."""
    u = _Unpickler(io.BytesIO(db.storage.load(obj._p_oid)[0]), encoding='bytes')
    return u.load(), u.load()


@pytest.mark.parametrize('order', ['C', 'F'])
def test_record_is_wendelin_cores(db, order):
    a = zbig.ZBigArray((3, 5), 'float32', order=order, blksize=4096)
    a[1] = 7
    store(db, a)
    cls, state = decode(db, a)
    assert cls == A + 'ZBigArray'
    assert state == ({'_dtype': numpy.dtype('float32'), '_shape': (3, 5), '_order': order,
                      '_stridev': a.strides},
                     {'zfile': Ref(u64(a.zfile._p_oid), Z + 'ZBigFile')})
    assert decode(db, a.zfile)[0] == Z + 'ZBigFile'
    assert decode(db, a.zfile.blktab[0])[0] == Z + 'ZBlk0'


def test_state_without_order_loads_as_C():
    """wendelin.core's first ZBigArrays stored no _order."""
    f = zbig.ZBigFile(4096)
    a = zbig.ZBigArray.__new__(zbig.ZBigArray)
    a.__setstate__(({'_dtype': numpy.dtype('int32'), '_shape': (2, 3), '_stridev': (12, 4)},
                    {'zfile': f}))
    assert (a.order, a.shape, a.zfile) == ('C', (2, 3), f)


# ---- writing and reading, C and F order ----

ORDERS = pytest.mark.parametrize('order', ['C', 'F'])


@ORDERS
def test_slices_ints_and_steps_write_what_numpy_writes(db, order):
    a = zbig.ZBigArray((6, 4), 'int32', order=order, blksize=16)
    m = Model((6, 4), 'int32', order)
    store(db, a)
    for idx, values in [
        ((slice(1, 3),), 5),
        ((slice(None), 1), numpy.arange(6)),
        ((-1, slice(None, None, -1)), [1, 2, 3, 4]),
        ((Ellipsis, 3), -7),
        ((slice(0, 6, 2), None, slice(1, 3)), numpy.full((3, 1, 2), 9)),
        ((2, 2), 42),
        ((slice(4, 2),), 1),                       # empty
    ]:
        a[idx] = values
        m[idx] = values
        db.tm.commit()
        assert_reads(a, m)
    assert a[2, 2] == 42 and type(a[2, 2]) is numpy.int32
    numpy.testing.assert_array_equal(a[1:4, ::-2], m.array()[1:4, ::-2])
    b, conn = loaded(db)
    try:
        assert (b.shape, b.order) == ((6, 4), order)
        assert_reads(b, m)
    finally:
        conn.close()


@ORDERS
def test_append_grows_the_major_axis(db, order):
    a = zbig.ZBigArray((3, 2), 'uint8', order=order, blksize=4)
    m = Model((3, 2), 'uint8', order)
    a[:] = m.array() + 1
    m[Ellipsis] = 1
    store(db, a)
    grown, more, tail = {
        'C': ((8, 2), numpy.arange(10, 20, dtype='uint8').reshape(5, 2), (slice(3, None),)),
        'F': ((3, 4), numpy.arange(10, 16, dtype='uint8').reshape(3, 2), (Ellipsis, slice(2, None))),
    }[order]
    a.append(more)
    m.resize(grown)
    m[tail] = more
    db.tm.commit()
    assert a.shape == grown and len(a) == (8 if order == 'C' else 4)
    assert_reads(a, m)
    b, conn = loaded(db)
    try:
        assert_reads(b, m)
    finally:
        conn.close()


def test_append_of_values_that_do_not_fit_changes_nothing():
    a = zbig.ZBigArray((2, 3), 'int8')
    with pytest.raises(ValueError, match=r'shape \(1, 4\).*\(2, 3\)'):
        a.append(numpy.zeros((1, 4)))
    with pytest.raises(ValueError):
        a.append(numpy.full((1, 3), 'x'))           # not a number: numpy refuses, shape restored
    assert a.shape == (2, 3) and not a.zfile.blktab


@ORDERS
def test_resize_changes_the_shape_only(db, order):
    """As wendelin.core's: the file keeps its bytes, a shrunk array that grows shows them again."""
    a = zbig.ZBigArray((4, 4), 'int16', order=order, blksize=8)
    m = Model((4, 4), 'int16', order)
    a[:] = m_values = numpy.arange(16).reshape(4, 4)
    m[Ellipsis] = m_values
    store(db, a)
    blocks = dict(a.zfile.blktab.items())
    for shape in [(2, 4), (2, 2), (4, 4), (3, 6), (0, 1), (4, 4)]:
        a.resize(shape)
        m.resize(shape)
        db.tm.commit()
        assert a.__getstate__()[0]['_shape'] == shape
        assert_reads(a, m)
    assert dict(a.zfile.blktab.items()) == blocks


# ---- which blocks an assignment writes, and their kind ----

def test_assignment_rewrites_every_block_it_covers_in_the_arrays_kind(db):
    a = zbig.ZBigArray((64,), 'uint8', blksize=8)
    a[:] = 1                                        # blocks 0..7, ZBlk0
    store(db, a)
    assert {type(z) for z in a.zfile.blktab.values()} == {zbig.ZBlk0}
    before = dict(a.zfile.blktab.items())
    a.kind = 'ZBlk1'
    a[20:27] = 2                                    # bytes 20..26: blocks 2 and 3
    db.tm.commit()
    now = dict(a.zfile.blktab.items())
    assert {blk for blk in now if now[blk] is not before[blk]} == {2, 3}
    assert type(now[2]) is type(now[3]) is zbig.ZBlk1
    assert a.zfile.read_block(3) == b'\x02' * 3 + b'\x01' * 5


def test_kind_is_chosen_at_creation_and_survives_a_ghost(db):
    a = zbig.ZBigArray((10,), 'int64', blksize=16, kind='ZBlk1')
    store(db, a)
    db.conn.cacheMinimize()
    assert a._p_status == 'ghost'
    assert a.kind == 'ZBlk1'
    a[0] = 3
    db.tm.commit()
    assert type(a.zfile.blktab[0]) is zbig.ZBlk1
    with pytest.raises(ValueError, match='ZBlk2'):
        a.kind = 'ZBlk2'


def test_a_loaded_array_writes_ZBlk0_as_wendelin_core_by_default(db):
    store(db, zbig.ZBigArray((4,), 'int32', blksize=8, kind='ZBlk1'))
    b, conn = loaded(db)
    try:
        assert b.kind == 'ZBlk0'
    finally:
        conn.close()


@pytest.mark.parametrize('idx', [[0, 1], numpy.array([1]), (slice(None), [0]), True,
                                 numpy.array([True, False, True, False])])
def test_advanced_indexing_is_IndexError(idx):
    a = zbig.ZBigArray((4, 2), 'int8')
    with pytest.raises(IndexError, match='basic indexing'):
        a[idx] = 1
    with pytest.raises(IndexError, match='basic indexing'):
        a[idx]


@pytest.mark.parametrize('make, error', [
    (lambda: zbig.ZBigArray((2, 2), 'int8', order='A'), ValueError),
    (lambda: zbig.ZBigArray((2, -1), 'int8'), ValueError),
    (lambda: zbig.ZBigArray((2,), object), TypeError),
    (lambda: zbig.ZBigArray((2,), 'int8', kind='ZBlk'), ValueError),
    (lambda: zbig.ZBigArray((2,), 'int8', blksize=0), ValueError),
    (lambda: numpy.asarray(zbig.ZBigArray((2,), 'int8'), copy=False), ValueError),
], ids=['order A', 'negative dim', 'object dtype', 'kind ZBlk', 'blksize 0', 'no copy'])
def test_bad_arguments(make, error):
    with pytest.raises(error):
        make()


# ---- a random walk against the model ----

def index_of(draw, shape):
    """A basic index of shape: an int or a slice (any step) per axis, maybe fewer axes."""
    idx = []
    for n in shape[:draw(st.integers(0, len(shape)))]:
        if n and draw(st.booleans()):
            idx.append(draw(st.integers(-n, n - 1)))
        else:
            start, stop = draw(st.integers(-n - 1, n + 1)), draw(st.integers(-n - 1, n + 1))
            idx.append(slice(start, stop, draw(st.sampled_from([1, 2, -1, -3]))))
    return tuple(idx)


@st.composite
def walks(draw):
    order = draw(st.sampled_from('CF'))
    shape = start = (draw(st.integers(0, 5)), draw(st.integers(0, 5)))
    ops = []
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(['set', 'append', 'resize']))
        if op == 'set':
            ops.append(('set', index_of(draw, shape), draw(st.integers(-100, 100))))
        elif op == 'append':
            n = draw(st.integers(0, 3))
            more = (n, shape[1]) if order == 'C' else (shape[0], n)
            ops.append(('append', more, draw(st.integers(-100, 100))))
            shape = (shape[0] + n, shape[1]) if order == 'C' else (shape[0], shape[1] + n)
        else:
            shape = (draw(st.integers(0, 6)), draw(st.integers(0, 6)))
            ops.append(('resize', shape))
    return order, start, draw(st.sampled_from([2, 6, 16])), draw(st.sampled_from(zbig.KINDS)), ops


@settings(max_examples=150, deadline=None)
@given(walks())
def test_random_walk_matches_model(walk):
    order, start, blksize, kind, ops = walk
    a = zbig.ZBigArray(start, 'int16', order=order, blksize=blksize, kind=kind)
    m = Model(start, 'int16', order)
    for op, *args in ops:
        if op == 'set':
            idx, v = args
            a[idx] = v
            m[idx] = v
        elif op == 'append':
            more, v = args
            values = numpy.full(more, v, 'int16')
            tail = (slice(m.shape[0], None),) if order == 'C' else (Ellipsis, slice(m.shape[1], None))
            a.append(values)
            m.resize((m.shape[0] + more[0], m.shape[1]) if order == 'C' else
                     (m.shape[0], m.shape[1] + more[1]))
            m[tail] = values
        else:
            a.resize(args[0])
            m.resize(args[0])
        assert_reads(a, m)
    assert {type(z).__name__ for z in a.zfile.blktab.values()} <= {kind}


# ---- install() ----

def test_install_is_idempotent_and_gives_zbigs_classes():
    z = zbig.install()
    assert zbig.install() is z
    assert not z.real
    assert (z.ZBigFile, z.ZBigArray, z.ZBlk0, z.ZBlk1, z.ZData, z.ZBlk) == \
        (zbig.ZBigFile, zbig.ZBigArray, zbig.ZBlk0, zbig.ZBlk1, zbig.ZData, zbig.ZBlk)
    assert sys.modules[A[:-1]].ZBigArray is zbig.ZBigArray
    assert sys.modules['wendelin'].bigarray.array_zodb is sys.modules[A[:-1]]
    assert sys.modules['wendelin.bigfile'].file_zodb.ZBigFile is zbig.ZBigFile


def run_python(code):
    """-> stdout of code run by this python in a fresh process, from the tree's root."""
    p = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_import_changes_nothing_and_install_patches_no_ZODB_class():
    out = run_python('''
        import sys
        import ZODB.Connection, ZODB.serialize
        writer = ZODB.Connection.ObjectWriter
        before = set(sys.modules)
        from wcfs_lib import zbig
        new = sorted(m for m in set(sys.modules) - before if m.split('.')[0] != 'wcfs_lib')
        print('import adds', [m for m in new if m.startswith('wendelin')])
        print('writer kept', ZODB.Connection.ObjectWriter is writer is ZODB.serialize.ObjectWriter)
        z = zbig.install()
        print('install', z is zbig.install(), z.real, sorted(m for m in sys.modules if m.startswith('wendelin')))
        print('writer kept', ZODB.Connection.ObjectWriter is writer)
    ''')
    assert out.splitlines() == [
        'import adds []',
        'writer kept True',
        "install True False ['wendelin', 'wendelin.bigarray', 'wendelin.bigarray.array_zodb', "
        "'wendelin.bigfile', 'wendelin.bigfile.file_zodb']",
        'writer kept True',
    ]


def test_without_install_a_zbig_object_cannot_be_written():
    """ZODB's pickler imports the class's module: install() is what makes it importable."""
    out = run_python('''
        import transaction, ZODB
        from ZODB.MappingStorage import MappingStorage
        from wcfs_lib import zbig
        conn = ZODB.DB(MappingStorage()).open()
        conn.root()['f'] = zbig.ZBigFile(4096)
        try:
            transaction.commit()
        except Exception as e:
            print('refused:', 'wendelin' in str(e))
        transaction.abort()
        zbig.install()
        conn.root()['f'] = zbig.ZBigFile(4096)
        transaction.commit()
        print('written')
    ''')
    assert out.splitlines() == ['refused: True', 'written']
