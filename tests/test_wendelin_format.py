"""zbig's format both ways with the real wendelin.core 0.13, on one ZEO server.

What zbig writes (ZBigArrays in C and F order, after assignments, append and
resize, in either ZBlk kind; plain ZBigFiles with holes, both kinds and the
old name ZBlk), wendelin.core reads back equal; what wendelin.core writes
(the same operations, in its default kind and the other), zbig reads back
equal. wendelin.core runs on Python 3.7 in .venv37 (devtools/wendelin37.py);
these tests skip, saying why, where ./setup.sh could not make it.
"""

import json

import numpy
import pytest
import transaction

from devtools import wendelin37
from wcfs_lib import zbig
from zarrays import Model, assert_reads

pytestmark = pytest.mark.skipif(wendelin37.unavailable() is not None,
                                reason=str(wendelin37.unavailable()))

MiB = 1 << 20
BS = 2 * MiB            # wendelin.core maps a ZBigFile in pages of its blksize: 2 MiB


# The scenario, as source text: both processes run the same code (numpy 1.21
# there, this one here).
OPERATIONS = '''
import numpy

def operations(order):
    """-> (shape, [(op, *args)]): a ZBigArray of int64 over three 2 MiB blocks."""
    rows = numpy.arange(90000 * 4, dtype='int64').reshape(90000, 4)     # 2.7 MiB
    more = numpy.full((40000, 4), -5, dtype='int64')
    if order == 'F':
        rows, more = rows.T.copy(), more.T.copy()
    # no Ellipsis: wendelin.core 0.13 fails on it
    major = () if order == 'C' else (slice(None),)
    return rows.shape, [
        ('setitem', slice(None), rows),
        ('setitem', major + (slice(1000, 70000, 7),), 11),
        ('append', more),                                               # into a third block
        ('resize', (60000, 4) if order == 'C' else (4, 60000)),
        ('resize', (100000, 4) if order == 'C' else (4, 100000)),       # old bytes come back
        ('setitem', (-1,) if order == 'C' else (slice(None), -1), [1, 2, 3, 4]),
    ]


def play(target, ops):
    for op, *args in ops:
        if op == 'setitem':
            target[args[0]] = args[1]
        else:
            getattr(target, op)(*args)
'''
_scenario = {}
exec(OPERATIONS, _scenario)
operations, play = _scenario['operations'], _scenario['play']


def model_of(order):
    shape, ops = operations(order)
    m = Model(shape, 'int64', order)
    play(m, ops)
    return m


# ---- zbig writes, wendelin.core reads ----

# what each reading script runs first and last: it fills `out` for json
READ_OPEN = '''
db = open_db()
conn = db.open()
out = {}
'''
READ_CLOSE = '''
print(json.dumps(out))
conn.close()
db.close()
'''

READ_ARRAYS = '''
import json, numpy
''' + READ_OPEN + '''
for name in ARGS[1:]:
    a = conn.root()[name]
    # a copy: wendelin.core loads pages on faults, which a write() of the mapping would not take
    numpy.save('%s/%s.npy' % (ARGS[0], name), numpy.array(a[:]))
    out[name] = dict(shape=list(a.shape), order=a._order, strides=list(a._stridev),
                     dtype=a.dtype.str, kinds=sorted({type(z).__name__ for z in a.zfile.blktab.values()}))
''' + READ_CLOSE


@pytest.mark.parametrize('kind', zbig.KINDS)
def test_zbig_arrays_read_equal_in_wendelin_core(zeo, tmp_path, kind):
    z = zbig.install()
    db = zeo.db()
    conn = db.open()
    try:
        for order in 'CF':
            shape, ops = operations(order)
            a = conn.root()['a' + order] = z.ZBigArray(shape, 'int64', order=order, kind=kind)
            play(a, ops)
            transaction.commit()
    finally:
        conn.close()
    seen = json.loads(wendelin37.run(READ_ARRAYS, zeo.addr, tmp_path, 'aC', 'aF'))
    for order in 'CF':
        m = model_of(order)
        got = seen['a' + order]
        assert got == dict(shape=list(m.shape), order=order, dtype='<i8', kinds=[kind],
                           strides=list(zbig.ZBigArray(m.shape, 'int64', order=order).strides))
        assert_reads(numpy.load(tmp_path / ('a%s.npy' % order)), m)


READ_FILES = '''
import json
''' + READ_OPEN + '''
for name in ARGS[1:]:
    f = conn.root()[name]
    nblk = f.blktab.maxKey() + 1
    vma = f.fileh_open().mmap(0, nblk)
    with open('%s/%s.bin' % (ARGS[0], name), 'wb') as w:
        w.write(memoryview(vma).tobytes())
    out[name] = dict(blksize=f.blksize, blocks={blk: type(z).__name__ for blk, z in f.blktab.items()})
''' + READ_CLOSE


def test_zbig_files_read_equal_in_wendelin_core(zeo, tmp_path):
    z = zbig.install()
    conn = zeo.db().open()
    try:
        f = conn.root()['f'] = z.ZBigFile(BS)
        f.write_block(0, bytes(range(256)) * 8192, 'ZBlk0')      # a whole block
        f.write_block(2, b'\1\2\3' + bytes(5000) + b'\4', 'ZBlk1')  # chunks and zero chunks
        f.write_block(3, b'short', 'ZBlk0')                       # zero padded
        f.blktab[5] = z.ZBlk(b'old name')                         # blocks 1 and 4 are holes
        f.write_block(6, bytes(BS - 1) + b'\xff', 'ZBlk1')
        transaction.commit()
        content = f.read()
    finally:
        conn.close()
    seen = json.loads(wendelin37.run(READ_FILES, zeo.addr, tmp_path, 'f'))
    # wendelin.core 0.13 has ZBlk as another name of ZBlk0 itself
    assert seen == {'f': dict(blksize=BS, blocks={'0': 'ZBlk0', '2': 'ZBlk1', '3': 'ZBlk0',
                                                  '5': 'ZBlk0', '6': 'ZBlk1'})}
    assert len(content) == 7 * BS
    assert (tmp_path / 'f.bin').read_bytes() == content


# ---- wendelin.core writes, zbig reads ----

WRITE_ARRAYS = '''
import transaction
from wendelin.bigarray.array_zodb import ZBigArray
db = open_db()
conn = db.open()
for order in 'CF':
    shape, ops = operations(order)
    a = conn.root()['w' + order] = ZBigArray(shape, 'int64', order=order)
    transaction.commit()        # wendelin.core maps the array once its file has a connection
    play(a, ops)
    transaction.commit()
conn.close()
db.close()
'''


@pytest.mark.parametrize('kind', [None, 'ZBlk1'], ids=['default kind', 'ZBlk1'])
def test_wendelin_core_arrays_read_equal_in_zbig(zeo, kind):
    env = {'WENDELIN_CORE_ZBLK_FMT': kind} if kind else {}
    wendelin37.run(OPERATIONS + WRITE_ARRAYS, zeo.addr, env=env, timeout=300)
    z = zbig.install()
    db = zeo.new_db()
    try:
        conn = db.open()
        for order in 'CF':
            a = conn.root()['w' + order]
            assert type(a) is z.ZBigArray
            m = model_of(order)
            assert (a.shape, a.order, a.strides) == (m.shape, order, numpy.zeros(
                m.shape, 'int64', order=order).strides)
            assert {type(zblk).__name__ for zblk in a.zfile.blktab.values()} == {kind or 'ZBlk0'}
            assert_reads(a, m)
        conn.close()
    finally:
        db.close()


def test_install_in_a_process_with_wendelin_core_uses_it(zeo):
    out = wendelin37.run('''
import sys
sys.path.insert(0, ARGS[0])
from wcfs_lib import zbig
z = zbig.install()
import wendelin.bigarray.array_zodb as array_zodb, wendelin.bigfile.file_zodb as file_zodb
print(z.real, z is zbig.install(), z.ZBigArray is array_zodb.ZBigArray,
      z.ZBigFile is file_zodb.ZBigFile, z.ZBlk1 is file_zodb.ZBlk1, z.ZData is file_zodb.ZData)
''', zeo.addr, wendelin37.ROOT)
    assert out.split() == ['True'] * 6
