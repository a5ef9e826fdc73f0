"""zbig writes ZBigFiles in wendelin.core's format: checked on the raw records of a FileStorage."""

import io
import pickletools
import sys

import pytest
import transaction
import zodbpickle.pickle
import ZODB
import ZODB.FileStorage
from hypothesis import given, settings, strategies as st
from ZODB.POSException import StateLoadError
from ZODB.utils import p64, u64

from devtools.py2str import zbigfile as py2str_zbigfile
from wcfs_lib import zbig
from zscripts import B, MiB, SCRIPTS, commit, oid, randbytes, store

Z = 'wendelin.bigfile.file_zodb.'


@pytest.fixture
def db(tmp_path):
    """A ZODB.DB on a FileStorage, and a connection of its own transaction manager."""
    storage = ZODB.FileStorage.FileStorage(str(tmp_path / 'Data.fs'))
    db = ZODB.DB(storage)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    db.tm, db.conn = tm, conn
    yield db
    tm.abort()
    conn.close()
    db.close()


# ---- reading raw records ----

class Ref:
    """A persistent reference found in a record: oid and class name."""

    def __init__(self, oid, cls):
        self.oid, self.cls = oid, cls

    def __eq__(self, other):
        return isinstance(other, Ref) and (self.oid, self.cls) == (other.oid, other.cls)

    def __repr__(self):
        return 'Ref(%d, %s)' % (self.oid, self.cls)


class _Unpickler(zodbpickle.pickle.Unpickler):
    def find_class(self, module, name):
        return '%s.%s' % (module, name)

    def persistent_load(self, pid):
        oid, cls = pid
        return Ref(u64(oid), cls)


def raw(db, obj):
    """The raw record of a committed object."""
    return db.storage.load(obj._p_oid)[0]


def decode(record):
    """-> (class name, state) of a record, byte strings kept as bytes."""
    u = _Unpickler(io.BytesIO(record), encoding='bytes')
    return u.load(), u.load()


def state_opcodes(record):
    """Names of the opcodes of the state pickle (the second of a record)."""
    end = [pos for op, _, pos in pickletools.genops(record) if op.name == 'STOP'][0] + 1
    return [op.name for op, _, _ in pickletools.genops(record[end:])]


def serial(db, obj):
    return u64(db.storage.load(obj._p_oid)[1])


def buckets(tree):
    """The buckets of a BTree, first to last."""
    b, out = tree._firstbucket, []
    while b is not None:
        out.append(b)
        b = b._next
    return out


# ---- class names and state shapes ----

def test_classes_are_registered_under_wendelin_names():
    zbig.install()
    mod = sys.modules['wendelin.bigfile.file_zodb']
    for name in ('ZBigFile', 'ZBlk0', 'ZBlk', 'ZBlk1', 'ZData'):
        cls = getattr(mod, name)
        assert cls is getattr(zbig, name)
        assert (cls.__module__, cls.__qualname__) == ('wendelin.bigfile.file_zodb', name)
    assert sys.modules['wendelin'].bigfile.file_zodb is mod


def test_records_pickle_under_wendelin_class_names(db):
    f = zbig.ZBigFile(4096)
    f.write_block(0, b'abc', kind='ZBlk0')
    f.write_block(1, b'def', kind='ZBlk1')
    f.blktab[2] = zbig.ZBlk(b'old')
    store(db, f)
    zblk1 = f.blktab[1]
    expect = [
        (f, Z + 'ZBigFile', (4096, Ref(oid(f.blktab), 'BTrees.LOBTree.LOBTree'))),
        (f.blktab[0], Z + 'ZBlk0', b'abc'),
        (zblk1, Z + 'ZBlk1', Ref(oid(zblk1.chunktab), 'BTrees.IOBTree.IOBTree')),
        (zblk1.chunktab[0], Z + 'ZData', b'def'),
        (f.blktab[2], Z + 'ZBlk', b'old'),
    ]
    for obj, cls, state in expect:
        assert decode(raw(db, obj)) == (cls, state)
    cls, state = decode(raw(db, f.blktab))
    assert cls == 'BTrees.LOBTree.LOBTree'
    assert Ref(oid(zblk1), Z + 'ZBlk1') in state[0][0][0]


@pytest.mark.parametrize('kind, data, chunk, chunks', [
    ('ZBlk0', b'', 4096, None),
    ('ZBlk0', b'\0\0\0', 4096, None),
    ('ZBlk0', b'ab\0c\0\0\0', 4096, None),
    ('ZBlk0', b'\0' * 100 + b'z', 4096, None),
    ('ZBlk1', b'', 4096, {}),
    ('ZBlk1', b'ab\0\0', 4096, {0: b'ab'}),
    ('ZBlk1', b'x' * 8192, 4096, {0: b'x' * 4096, 4096: b'x' * 4096}),
    ('ZBlk1', b'\0' * 4096 + b'y\0', 4096, {4096: b'y'}),
    ('ZBlk1', b'a\0\0\0b\0\0\0\0\0\0\0c', 4, {0: b'a', 4: b'b', 12: b'c'}),
], ids=lambda v: repr(v)[:20])
def test_block_state_shapes(db, kind, data, chunk, chunks):
    f = zbig.ZBigFile(16384)
    f.write_block(0, data, kind=kind, chunk=chunk)
    store(db, f)
    zblk = f.blktab[0]
    cls, state = decode(raw(db, zblk))
    assert cls == Z + kind
    if kind == 'ZBlk0':
        assert state == data.rstrip(b'\0')          # trailing zeros stripped
    else:
        assert state == Ref(oid(zblk.chunktab), 'BTrees.IOBTree.IOBTree')
        stored = {off: decode(raw(db, zdata)) for off, zdata in zblk.chunktab.items()}
        assert stored == {off: (Z + 'ZData', c) for off, c in chunks.items()}
    assert f.read_block(0) == data.ljust(16384, b'\0')


# ---- reading back: holes, padding, size ----

def test_holes_short_blocks_and_size(db):
    f = zbig.ZBigFile(4096)
    assert (f.size(), f.read()) == (0, b'')
    f.write_block(1, b'one', kind='ZBlk0')
    f.write_block(4, b'four', kind='ZBlk1')
    store(db, f)
    assert list(f.blktab.keys()) == [1, 4]
    assert f.size() == 5 * 4096
    assert f.read_block(0) == f.read_block(2) == f.read_block(7) == bytes(4096)
    assert f.read_block(1) == b'one'.ljust(4096, b'\0')
    assert f.read() == b''.join([bytes(4096), b'one'.ljust(4096, b'\0'), bytes(8192),
                                 b'four'.ljust(4096, b'\0')])
    f.delete_block(4)
    f.delete_block(3)                                   # already a hole
    assert f.size() == 2 * 4096


@pytest.mark.parametrize('call', [
    lambda f: zbig.ZBigFile(0),
    lambda f: f.write_block(0, bytes(4097)),
    lambda f: f.write_block(-1, b'x'),
    lambda f: f.write_block(0, b'x', kind='ZBlk2'),
    lambda f: f.write_block(0, b'x', kind='ZBlk1', chunk=0),
    lambda f: f.write(-1, b'x'),
    lambda f: f.truncate(100),
    lambda f: f.set_blksize(-4096),
], ids=['blksize 0', 'block too long', 'negative blk', 'bad kind', 'chunk 0',
        'negative offset', 'truncate not a multiple', 'negative blksize'])
def test_bad_arguments_are_ValueError(call):
    with pytest.raises(ValueError):
        call(zbig.ZBigFile(4096))


# ---- BTrees with several buckets ----

def test_zblk1_of_512_chunks_has_several_buckets(db):
    f = zbig.ZBigFile(2 * MiB)
    data = randbytes(2 * MiB)
    f.write_block(0, data, kind='ZBlk1')
    store(db, f)
    chunktab = f.blktab[0].chunktab
    assert len(chunktab) == 512
    assert len(buckets(chunktab)) > 1
    cls, state = decode(raw(db, chunktab))     # a tree node over bucket records
    assert cls == 'BTrees.IOBTree.IOBTree'
    assert sum(isinstance(x, Ref) for x in state[0]) > 1
    assert f.read_block(0) == data


def test_blktab_of_250_blocks_has_several_buckets(db):
    f = zbig.ZBigFile(4096)
    model = randbytes(250 * 4096)
    for blk in range(250):
        f.write_block(blk, model[blk * 4096:(blk + 1) * 4096], kind=('ZBlk0', 'ZBlk1')[blk % 2])
    store(db, f)
    assert len(buckets(f.blktab)) > 1
    assert sum(isinstance(x, Ref) for x in decode(raw(db, f.blktab))[1][0]) > 1
    assert f.read() == model


# ---- ZBlk1 changes only what changed ----

def written_oids(db, tid):
    """oids of the objects transaction tid wrote."""
    for txn in db.storage.iterator(p64(tid), p64(tid)):
        return {u64(rec.oid) for rec in txn}
    return set()


def test_zblk1_partial_change_rewrites_only_changed_chunks(db):
    f = zbig.ZBigFile(2 * MiB)
    data = bytearray(randbytes(2 * MiB))
    f.write_block(0, data, kind='ZBlk1')
    store(db, f)
    zblk = f.blktab[0]
    zdata = dict(zblk.chunktab.items())
    serials = {off: serial(db, z) for off, z in zdata.items()}

    data[5 * 4096 + 7] ^= 0xff                          # chunk 5 changes
    data[9 * 4096:10 * 4096] = bytes(4096)              # chunk 9 becomes zeros
    f.write_block(0, data, kind='ZBlk1')
    tid = commit(db)

    assert f.blktab[0] is zblk
    assert 9 * 4096 not in zblk.chunktab
    assert f.read_block(0) == data
    changed = {off for off, z in zdata.items() if off in zblk.chunktab and serial(db, z) != serials[off]}
    assert changed == {5 * 4096}
    assert serial(db, zdata[5 * 4096]) == serial(db, zblk) == tid
    bucket_oids = {oid(b) for b in buckets(zblk.chunktab)}
    written = written_oids(db, tid)
    assert {oid(zblk), oid(zdata[5 * 4096])} <= written
    assert written - {oid(zblk), oid(zdata[5 * 4096])} <= bucket_oids   # the deletion
    assert oid(f) not in written and oid(f.blktab) not in written


def test_zblk1_same_content_writes_nothing(db):
    f = zbig.ZBigFile(8192)
    f.write_block(0, b'a' * 5000, kind='ZBlk1')
    tid = store(db, f)
    f.write_block(0, b'a' * 5000 + b'\0' * 10, kind='ZBlk1')
    assert commit(db) == tid


# ---- Python 2 str state ----

BINSTRINGS = {'SHORT_BINSTRING', 'BINSTRING'}
BINBYTES = {'SHORT_BINBYTES', 'BINBYTES', 'BINBYTES8'}


def data_records(db, f):
    """Records of every ZBlk0 and ZData of f."""
    for zblk in f.blktab.values():
        if isinstance(zblk, zbig.ZBlk1):
            yield from (raw(db, z) for z in zblk.chunktab.values())
        else:
            yield raw(db, zblk)


@pytest.mark.parametrize('kind', zbig.KINDS)
@pytest.mark.parametrize('data', [
    b'\xff\x80 short, not ascii',
    bytes(range(256)) * 2,                              # 512 bytes: BINSTRING
    b'ascii',
    b'',
], ids=['short', 'long', 'ascii', 'empty'])
def test_py2str_state_is_python2_str(db, kind, data):
    f = py2str_zbigfile(4096)
    f.write_block(0, data, kind=kind)
    f.write_block(1, bytes(range(1, 256)) * 16, kind=kind)   # 4080 bytes
    store(db, f)
    records = list(data_records(db, f))
    assert records
    for record in records:
        ops = set(state_opcodes(record))
        assert ops & BINSTRINGS and not ops & BINBYTES
        assert decode(record)[0] in (Z + 'ZBlk0', Z + 'ZData')
    assert [decode(r)[1] for r in data_records(db, f)] == \
        [x for x in (data.rstrip(b'\0'), bytes(range(1, 256)) * 16) if x or kind == 'ZBlk0']
    assert f.read_block(0) == data.ljust(4096, b'\0')


def test_py3_state_is_bytes(db):
    f = zbig.ZBigFile(4096)
    f.write_block(0, b'\xffshort', kind='ZBlk0')
    f.write_block(1, bytes(range(256)) * 4, kind='ZBlk1')
    store(db, f)
    for record in data_records(db, f):
        ops = set(state_opcodes(record))
        assert ops & BINBYTES and not ops & BINSTRINGS


def test_py2str_blocks_stay_readable_through_cache_gc(db):
    """ZODB on py3 cannot load non-ASCII py2 str state: the writer's objects stay in memory."""
    f = py2str_zbigfile(2 * MiB)
    data = randbytes(2 * MiB, seed=1)
    f.write_block(0, data, kind='ZBlk1')
    f.write_block(1, data, kind='ZBlk0')
    store(db, f)
    db.conn.cacheMinimize()
    assert f.blktab._p_status == 'ghost'
    assert f._p_status == f.blktab[0].chunktab[0]._p_status == f.blktab[1]._p_status == 'saved'
    assert f.read() == data + data
    f.write(10, b'\xfe')                                # still py2str after the gc
    commit(db)
    assert 'BINSTRING' in state_opcodes(raw(db, f.blktab[0]))


def test_py2str_state_as_python3_ZODB_loads_it(db):
    f = py2str_zbigfile(4096)
    f.write_block(0, b'ascii')
    f.write_block(1, b'\xff')
    store(db, f)
    other = db.open(transaction.TransactionManager())
    try:
        g = other.root()['f']
        assert g.read_block(0) == b'ascii'.ljust(4096, b'\0')
        assert type(g.blktab[0].data) is bytes          # what ZODB loads as str
        with pytest.raises(StateLoadError):
            g.read_block(1)
    finally:
        other.close()


# ---- whole-file operations against a model ----

class Model:
    """What a ZBigFile must read as: the blocks present, zero padded; others are holes."""

    def __init__(self, blksize):
        self.blksize = blksize
        self.blocks = {}

    def read_block(self, blk):
        return self.blocks.get(blk, bytes(self.blksize))

    def read(self):
        n = max(self.blocks) + 1 if self.blocks else 0
        return b''.join(self.read_block(blk) for blk in range(n))

    def write_block(self, blk, data, kind='ZBlk0', chunk=4096):
        self.blocks[blk] = data.ljust(self.blksize, b'\0')

    def write(self, offset, data, kind='ZBlk0'):
        bs = self.blksize
        end = offset + len(data)
        content = bytearray(self.read().ljust(-(-end // bs) * bs, b'\0'))
        content[offset:end] = data
        for blk in range(offset // bs, -(-end // bs)):
            self.blocks[blk] = bytes(content[blk * bs:(blk + 1) * bs])

    def delete_block(self, blk):
        self.blocks.pop(blk, None)

    def truncate(self, size):
        self.blocks = {blk: d for blk, d in self.blocks.items() if blk < size // self.blksize}

    def set_blksize(self, blksize, kind='ZBlk0'):
        content = self.read()
        self.blksize = blksize
        n = -(-len(content) // blksize)
        self.blocks = {}
        for blk in range(n):
            self.write_block(blk, content[blk * blksize:(blk + 1) * blksize])

    def replace_blktab(self):
        pass


@pytest.mark.parametrize('py2str', [False, True], ids=['py3', 'py2str'])
@pytest.mark.parametrize('script', SCRIPTS.values(), ids=SCRIPTS.keys())
def test_operations_keep_content_of_model(db, script, py2str):
    f = py2str_zbigfile(B, py2str)
    model = Model(B)
    store(db, f)
    for op, *args in script:
        getattr(f, op)(*args)
        getattr(model, op)(*args)
        commit(db)
        assert f.blksize == model.blksize
        assert f.read() == model.read()
        assert f.size() == len(model.read())
    if not py2str:                                      # py2 state may not load back: see above
        other = db.open(transaction.TransactionManager())
        try:
            assert other.root()['f'].read() == model.read()
        finally:
            other.close()


def test_set_blksize_rewrites_the_zbigfile_with_a_new_blktab(db):
    f = zbig.ZBigFile(B)
    f.write(0, b'x' * (3 * B))
    store(db, f)
    old = oid(f.blktab)
    f.set_blksize(2 * B)
    tid = commit(db)
    assert decode(raw(db, f)) == (Z + 'ZBigFile', (2 * B, Ref(oid(f.blktab), 'BTrees.LOBTree.LOBTree')))
    assert oid(f.blktab) != old and serial(db, f) == tid


def test_replace_blktab_makes_new_objects_of_the_same_kinds(db):
    f = zbig.ZBigFile(B)
    f.write_block(0, b'zero', kind='ZBlk0')
    f.write_block(1, b'one', kind='ZBlk1')
    store(db, f)
    before = {blk: (type(z), oid(z)) for blk, z in f.blktab.items()}
    old_blktab = oid(f.blktab)
    content = f.read()
    f.replace_blktab()
    commit(db)
    assert oid(f.blktab) != old_blktab
    for blk, z in f.blktab.items():
        assert type(z) is before[blk][0] and oid(z) != before[blk][1]
    assert f.read() == content


# ---- a random walk, without a database ----

@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just('write'), st.integers(0, 300), st.binary(max_size=80), st.sampled_from(zbig.KINDS)),
    st.tuples(st.just('write_block'), st.integers(0, 9), st.binary(max_size=32),
              st.sampled_from(zbig.KINDS), st.sampled_from([4, 8, 32])),
    st.tuples(st.just('delete_block'), st.integers(0, 9)),
    st.tuples(st.just('truncate'), st.integers(0, 10).map(lambda n: n * 32)),
    st.tuples(st.just('replace_blktab')),
), max_size=20))
def test_random_operations_match_model(ops):
    f = zbig.ZBigFile(32)
    model = Model(32)
    for op, *args in ops:
        getattr(f, op)(*args)
        getattr(model, op)(*args)
        assert f.read() == model.read()
