"""One bad record costs only its own file, quickly (issue 15, item 2).

A database writer may store any bytes as any object. Every record has a
largest size for its kind (a BTree node, the ZBigFile object, a block's
record: man wcfs(8), "Database records"), checked on its length before a
byte of it is decoded, and on PostgreSQL, where no cache holds the record,
before it is even sent; the scan before the unpickler is one bounded pass
(MAX_OPS opcodes, memo indices below MAX_OPS), never a slow walk of a huge
record; large records that need the unpickler decode one at a time. wcfs's
ZEO client receives a big record in one join (ZEO's own receive is
quadratic in the message's size).

First without a mount (zformat, the ZEO receive, a bounded load), then
through a real mount on both databases: a 32 MiB record of NONE opcodes
without STOP as one file's blktab breaks that file (EIO, refused by its
size, logged once) and another file follows the next commit; a block record
whose memo index is just under its length is refused.
"""

import errno
import io
import os
import pickle
import random
import struct
import threading

import BTrees.LOBTree
import pytest
import zodbpickle.pickle
import ZEO.asyncio.smp
from ZODB.POSException import POSKeyError
from ZODB.utils import p64, u64

from devtools.records import raw_store
from scenes import BS, randbytes
from wcfs_lib.zodb import zformat, zstorage
from wcfs_lib.zodb.zstorage import zeo_receive
from zhelp import assert_read_eio, MiB, Writer, block_bytes, read_bytes, wait_head

AT = 0x0285cbac258bf266         # the one revision of the records of the unit tests
Z = 'wendelin.bigfile.file_zodb.'
LOBTREE, LOBUCKET = 'BTrees.LOBTree.LOBTree', 'BTrees.LOBTree.LOBucket'


def record(klass, state, protocol=3):
    """A raw ZODB record of class `klass` and `state`; zformat.Ref in state
    are pickled as persistent references (oid, class) as ZODB does (the
    class: LOBTree, whatever the object's)."""
    module, _, name = klass.rpartition('.')
    f = io.BytesIO()
    f.write(b'\x80\x03c%s\n%s\nq\x00.' % (module.encode(), name.encode()))
    p = zodbpickle.pickle.Pickler(f, protocol)
    p.persistent_id = lambda obj: ((p64(obj.oid), BTrees.LOBTree.LOBTree)
                                   if isinstance(obj, zformat.Ref) else None)
    p.dump(state)
    return f.getvalue()


def class_pickle(klass):
    return record(klass, None)[:-len(b'\x80\x03N.')]


class OneRevision:
    """A storage of one revision, for ZLoader: {oid: raw record}."""

    def __init__(self, records):
        self.records = records

    def loadBefore(self, oid, tid):
        data = self.records.get(u64(oid))
        if data is None:
            raise POSKeyError(oid)
        return data, p64(AT), None


def loader_of(records):
    return zformat.ZLoader(zstorage.Records(OneRevision(records)))


R = zformat.Ref
BUCKET = record(LOBUCKET, ((0, R(10), 1, R(11)),))
ZBIGFILE = record(Z + 'ZBigFile', (BS, R(2)))


# ---- the scan before the unpickler: one pass, bounded ----

def test_record_without_stop_is_refused_within_the_opcode_bound():
    data = class_pickle(LOBTREE) + b'N' * (4 * MiB)
    with pytest.raises(ValueError, match='over %d opcodes' % zformat.MAX_OPS):
        zformat.decode_record(data)


def test_record_of_many_small_objects_is_refused_within_the_opcode_bound():
    # each `]` is a new list: a few MiB of them would be hundreds of MiB decoded
    data = class_pickle(LOBTREE) + b'\x80\x03(' + b']' * (4 * MiB) + b'l.'
    with pytest.raises(ValueError, match='over %d opcodes' % zformat.MAX_OPS):
        zformat.decode_record(data)


def test_memo_index_just_under_the_record_length_is_refused():
    pad = MiB
    head = class_pickle(LOBTREE) + b'\x80\x03Nr'
    index = len(head) + 4 + 1 + pad - 8        # just under the record's length
    data = head + struct.pack('<I', index) + b'.' + bytes(pad)
    with pytest.raises(ValueError, match='memo index %d' % index):
        zformat.decode_record(data)


@pytest.mark.parametrize('put', [b'q\xff', b'r\xff\xff\x00\x00', b'p65535\n'])
def test_memo_index_under_the_bound_is_decoded(put):
    data = class_pickle(LOBTREE) + b'\x80\x03N' + put + b'.'
    assert zformat.decode_record(data) == (LOBTREE, None)


def test_unknown_opcode_is_refused_where_it_is():
    data = class_pickle(LOBTREE) + b'\x80\x03N\xff.'
    with pytest.raises(ValueError, match='opcode 0xff at byte'):
        zformat.decode_record(data)


def _tree_node(children, protocol):
    flat = [R(1 << 40)]
    for i in range(1, children):
        flat += [(1 << 60) + i, R((1 << 40) + i)]
    return record(LOBTREE, (tuple(flat),), protocol)


def _bucket(entries, protocol):
    flat = []
    for i in range(entries):
        flat += [(1 << 60) + i, R((1 << 40) + i)]
    return record(LOBUCKET, (tuple(flat),), protocol)


@pytest.mark.parametrize('protocol', [2, 3])
def test_largest_nodes_BTrees_write_decode_within_the_bounds(protocol):
    """LOBTree and IOBTree hold at most 500 children a tree node and 60
    entries a bucket; five times that still decodes, with big keys and oids,
    also as protocol 2 pickles them on Python 3 (each oid through codecs)."""
    for data, kind in ((_tree_node(2500, protocol), zformat.Tree),
                       (_bucket(300, protocol), zformat.Bucket)):
        assert len(data) <= zformat.MAX_NODE_RECORD
        node = zformat.parse_node(*zformat.decode_record(data), zformat.LOBTREE)
        assert isinstance(node, kind)


# ---- the largest record of each kind, checked before decoding ----

def test_node_record_over_its_bound_is_refused_before_decoding():
    # a sound bucket, then bytes the unpickler would never look at
    loader = loader_of({3: BUCKET + bytes(zformat.MAX_NODE_RECORD)})
    with pytest.raises(zformat.FormatError, match='record of %d bytes refused'
                       % (len(BUCKET) + zformat.MAX_NODE_RECORD)):
        loader.node(3, AT)
    assert loader_of({3: BUCKET}).node(3, AT)[0].keys.tolist() == [0, 1]


def test_zbigfile_record_over_its_bound_is_refused_before_decoding():
    loader = loader_of({1: ZBIGFILE + bytes(zformat.MAX_ZBIGFILE_RECORD)})
    with pytest.raises(zformat.FormatError, match='record of .* bytes refused'):
        loader.zbigfile(1, AT)
    assert loader_of({1: ZBIGFILE}).zbigfile(1, AT).blksize == BS


def test_block_record_over_its_bound_is_refused_before_decoding():
    block = record(Z + 'ZBlk0', b'x' * 100)
    limit = zformat.max_block_record(BS)
    at_bound = block + bytes(limit - len(block))
    data, _ = block_bytes(loader_of({10: at_bound}), 10, AT, BS)
    assert data == b'x' * 100 + bytes(BS - 100)
    with pytest.raises(zformat.FormatError, match='record of %d bytes refused' % (limit + 1)):
        block_bytes(loader_of({10: at_bound + b'\0'}), 10, AT, BS)


def test_block_as_latin1_text_of_twice_its_size_is_within_the_bound():
    """Python 3's protocol 2 pickles bytes as latin-1 text: two bytes a byte over 0x7f."""
    data = b'\xff' * BS
    block = class_pickle(Z + 'ZBlk0') + pickle.dumps(data, 2)
    assert len(block) > 2 * BS
    assert block_bytes(loader_of({10: block}), 10, AT, BS)[0] == data


# ---- large records through the unpickler: one at a time ----

def test_large_records_through_the_unpickler_decode_one_at_a_time():
    data = bytes(range(256)) * (2 * MiB // 256)
    block = class_pickle(Z + 'ZBlk0') + pickle.dumps(data, 2)     # not a plain byte string
    assert len(block) > zformat.LARGE_RECORD
    loader = loader_of({10: block})
    out = []
    reader = threading.Thread(target=lambda: out.append(block_bytes(loader, 10, AT, 2 * MiB)))
    with loader._large_decode_lock:
        reader.start()
        reader.join(0.5)
        assert reader.is_alive(), 'a large record was decoded beside another'
    reader.join(20)
    assert out[0][0] == data


# ---- a big record arrives in one join over ZEO ----

class Transport:
    """What a sized message protocol writes to; nothing is sent here."""

    def writelines(self, data):
        pass

    def close(self):
        pass


def receive_all(protocol_class, stream, pieces):
    """Feed `stream` to a protocol_class in pieces of the given sizes;
    -> the messages it handed on."""
    got = []
    p = protocol_class(got.append)
    p.connection_made(Transport())
    at = 0
    for n in pieces:
        p.data_received(stream[at:at + n])
        at += n
    p.data_received(stream[at:])
    return got


@pytest.mark.parametrize('seed', range(8))
def test_zeo_messages_are_received_as_ZEO_receives_them(seed):
    rnd = random.Random(seed)
    messages = [rnd.randbytes(rnd.choice([1, 3, 4, 5, 100, 70000, 300000]))
                for _ in range(rnd.randint(1, 12))]
    stream = b''.join(struct.pack('>I', len(m)) + m for m in messages)
    pieces = [rnd.choice([1, 2, 3, 5, 4096, 65536, 262144])
              for _ in range(len(stream) // 1000 + 20)]
    got = receive_all(zeo_receive.SizedMessages, stream, pieces)
    assert got == messages
    assert got == receive_all(ZEO.asyncio.smp.SizedMessageProtocol, stream, pieces)


def test_zeo_receive_stops_at_close():
    got = []
    p = zeo_receive.SizedMessages(lambda m: (got.append(m), p.close()))
    p.connection_made(Transport())
    p.data_received(b''.join(struct.pack('>I', 3) + m for m in (b'one', b'two')))
    assert got == [b'one']


# ---- a record over its bound, not even sent where the database can tell ----

def test_bounded_load_is_refused_before_the_record_is_sent_on_postgres(database):
    w = Writer(database.db())
    f, _oid, tid = w.new_file(BS, {0: b'x' * 1000})
    zblk = u64(f.blktab[0]._p_oid)
    opened = zstorage.open_database(database.zurl, 10)
    try:
        records = zstorage.Records(opened)
        data = records.record(zblk, tid, cache=False)[0]
        assert records.record(zblk, tid, cache=False, max_size=len(data))[0] == data
        if database.zurl.startswith('postgres://'):
            with pytest.raises(zstorage.RecordTooLarge) as e:
                records.record(zblk, tid, cache=False, max_size=len(data) - 1)
            assert e.value.size == len(data)
        else:       # ZEO cannot tell a size before it sends the record
            assert records.record(zblk, tid, cache=False, max_size=len(data) - 1)[0] == data
    finally:
        opened.close()


# ==== through a real mount ====

# Big enough to show it (the old guard walked it for seconds on the watcher
# thread, ZEO's receive took seconds more), small enough to store quickly:
# bench_bad_record.py measures 100 MiB.
NONE_WITHOUT_STOP = 32 * MiB


@pytest.mark.timeout(300)
def test_huge_blktab_record_breaks_only_its_file_and_others_follow(serve):
    s = serve(nfiles=2, nblk=2)
    bad, good = s.files
    good_data = os.path.join(s.dirs[1], 'head', 'data')
    assert read_bytes(good_data) == s.content[1][s.tid]
    huge = class_pickle(LOBTREE) + b'N' * NONE_WITHOUT_STOP
    size = len(huge)
    tid = raw_store(s.w.db.storage, {u64(bad.blktab._p_oid): huge})
    del huge                                    # and never in an assertion's message
    s.w.tm.abort()
    block = randbytes(BS)
    good.write_block(0, block, 'ZBlk0')        # not s.touch: it would read the bad file
    newer = s.w.commit()
    wait_head(s.dirs[1], newer, timeout=120)
    assert read_bytes(good_data)[:BS] == block
    wait_head(s.dirs[0], newer)
    assert_read_eio(os.path.join(s.dirs[0], 'head', 'data'))
    assert s.mnt.proc.poll() is None
    broken = [line for line in s.mnt.log().splitlines() if 'cannot serve it any more' in line]
    assert len(broken) == 1, broken
    assert '@%016x' % tid in broken[0]
    assert 'record of %d bytes refused' % size in broken[0], broken[0]


@pytest.mark.timeout(300)
def test_block_record_with_memo_index_just_under_its_length_is_refused(serve):
    blksize = 4 * MiB
    s = serve(nfiles=1, nblk=2, blksize=blksize)
    f = s.files[0]
    head = class_pickle(Z + 'ZBlk0') + b'\x80\x03Nr'
    tail = b'0B' + struct.pack('<I', blksize) + randbytes(blksize) + b'.'  # POP, the bytes
    index = len(head) + 4 + len(tail) - 1
    zblk = f.blktab[0]._p_oid
    s.w.tm.abort()
    tid = raw_store(s.w.db.storage, {u64(zblk): head + struct.pack('<I', index) + tail})
    wait_head(s.dir, tid, timeout=60)
    fd = os.open(os.path.join(s.dir, 'head', 'data'), os.O_RDONLY)
    try:
        with pytest.raises(OSError) as e:
            os.pread(fd, 4096, 0)
        assert e.value.errno == errno.EIO
        assert os.pread(fd, 4096, blksize) == s.content[0][s.tid][blksize:blksize + 4096]
    finally:
        os.close(fd)
    assert 'memo index %d' % index in s.mnt.log()
