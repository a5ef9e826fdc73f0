"""What zbig writes, zformat reads back: the same bytes for every block, as of every revision."""

import pytest
import ZODB
import ZODB.FileStorage

from devtools.py2str import zbigfile as py2str_zbigfile
from wcfs_lib import zbig
from wcfs_lib.zodb import zformat, zstorage
from mappingdb import db_with_connection
from zhelp import block_bytes
from zscripts import B, MiB, SCRIPTS, commit, oid, randbytes, store


@pytest.fixture
def db(tmp_path):
    yield from db_with_connection(ZODB.FileStorage.FileStorage(str(tmp_path / 'Data.fs')))


def snapshot(f):
    """(size, blocks) of f as its writer holds it now."""
    return f.size(), [f.read_block(blk) for blk in range(f.size() // f.blksize)]


def reader_snapshot(db, f, at):
    """(size, blocks) of f as zformat reads it as of at."""
    loader = zformat.ZLoader(zstorage.Records(db.storage))
    head = loader.zbigfile(oid(f), at)
    size = loader.size(head)
    blocks = []
    for blk in range(size // head.blksize):
        zblk = loader.lookup(head, blk)
        blocks.append(bytes(head.blksize) if zblk is None else
                      block_bytes(loader, zblk, at, head.blksize)[0])
    return size, blocks


PY2STR = pytest.mark.parametrize('py2str', [False, True], ids=['py3', 'py2str'])


@PY2STR
def test_block_kinds_holes_and_short_blocks(db, py2str):
    f = py2str_zbigfile(2 * B, py2str)
    f.write_block(0, b'\xff zblk0', kind='ZBlk0')
    f.write_block(2, b'\xfe zblk1'.rjust(B + 5, b'\0'), kind='ZBlk1')
    f.write_block(3, b'', kind='ZBlk0')
    f.write_block(5, bytes(2 * B), kind='ZBlk1')          # an empty chunk tree
    f.blktab[6] = zbig.ZBlk(b'old name')
    tid = store(db, f)
    assert reader_snapshot(db, f, tid) == snapshot(f)


@PY2STR
def test_btrees_with_several_buckets(db, py2str):
    f = py2str_zbigfile(2 * MiB, py2str)
    f.write_block(0, randbytes(2 * MiB), kind='ZBlk1')   # 512 chunks
    f.write_block(250, b'\x80last', kind='ZBlk0')
    for blk in range(1, 250, 3):
        f.write_block(blk, bytes([blk]) * 100, kind='ZBlk0')
    tid = store(db, f)
    assert reader_snapshot(db, f, tid) == snapshot(f)


@PY2STR
def test_zblk1_partial_change_reads_old_and_new(db, py2str):
    f = py2str_zbigfile(2 * MiB, py2str)
    data = bytearray(randbytes(2 * MiB))
    f.write_block(0, data, kind='ZBlk1')
    tid1 = store(db, f)
    before = snapshot(f)
    data[5 * 4096] ^= 0xff
    data[9 * 4096:10 * 4096] = bytes(4096)
    f.write_block(0, data, kind='ZBlk1')
    tid2 = commit(db)
    assert reader_snapshot(db, f, tid1) == before
    assert reader_snapshot(db, f, tid2) == snapshot(f)


@PY2STR
@pytest.mark.parametrize('script', SCRIPTS.values(), ids=SCRIPTS.keys())
def test_every_revision_of_a_script_reads_back(db, script, py2str):
    f = py2str_zbigfile(B, py2str)
    revisions = [(store(db, f), snapshot(f))]
    for op, *args in script:
        getattr(f, op)(*args)
        revisions.append((commit(db), snapshot(f)))
    for tid, expect in revisions:
        assert reader_snapshot(db, f, tid) == expect


MALFORMED = {
    'ZBlk0 longer than blksize': lambda: zbig.ZBlk0(b'x' * (B + 1)),
    'ZBlk0 state not bytes': lambda: zbig.ZBlk0('text'),
    'ZData in blktab': lambda: zbig.ZData(b'x'),
    'chunk past blksize': lambda: zblk1({B - 2: b'abc'}),
    'overlapping chunks': lambda: zblk1({0: b'x' * 100, 50: b'y'}),
    'chunk not ZData': lambda: zblk1({0: zbig.ZBlk0(b'x')}),
}


def zblk1(chunks):
    """A ZBlk1 holding chunks {offset: bytes or raw object} as given."""
    zblk = zbig.ZBlk1()
    for off, chunk in chunks.items():
        zblk.chunktab[off] = zbig.ZData(chunk) if isinstance(chunk, bytes) else chunk
    return zblk


@pytest.mark.parametrize('make', MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_block_is_FormatError(db, make):
    f = zbig.ZBigFile(B)
    f.write_block(0, b'fine')
    f.blktab[1] = make()
    tid = store(db, f)
    loader = zformat.ZLoader(zstorage.Records(db.storage))
    head = loader.zbigfile(oid(f), tid)
    assert block_bytes(loader, loader.lookup(head, 0), tid, B)[0] == f.read_block(0)
    with pytest.raises(zformat.FormatError):
        block_bytes(loader, loader.lookup(head, 1), tid, B)


def test_a_lookup_reads_each_node_once_per_revision(db):
    """Every lookup descends from the root: the nodes that one revision
    reads are asked of the database once, not once per block (on
    RelStorage, two round trips a node), and each revision reads its own."""
    f = zbig.ZBigFile(B)
    for blk in range(600):                  # a root and several buckets
        f.write_block(blk, bytes([blk % 256]) * 10)
    tid1 = store(db, f)
    loader = zformat.ZLoader(zstorage.Records(db.storage))
    head1 = loader.zbigfile(oid(f), tid1)
    first = [loader.lookup(head1, blk) for blk in range(600)]
    asked = loader.records.requests
    assert [loader.lookup(head1, blk) for blk in range(600)] == first
    assert loader.records.requests == asked, 'nodes asked again for the same revision'

    del f.blktab[7]                         # a hole now: its bucket changed
    tid2 = store(db, f)
    head2 = loader.zbigfile(oid(f), tid2)
    second = [loader.lookup(head2, blk) for blk in range(600)]
    assert second[7] is None and second[:7] + second[8:] == first[:7] + first[8:]
    assert [loader.lookup(head1, blk) for blk in range(600)] == first
