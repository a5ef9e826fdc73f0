"""Raw records of one revision, for the format decoder without a database:
pickled as ZODB stores them, served to zformat.ZLoader by a storage of
{oid: record}. SKELETON is a sound file made of them; BOMB_CASES are small
records that must not make the decoder take much memory or time (run in a
process of their own by test_fuzz).
"""

import io

import zodbpickle.pickle
from ZODB.POSException import POSKeyError
from ZODB.utils import p64, u64

from wcfs_lib.zodb import zformat, zstorage
from wcfs_lib.follow.fileindex import FileIndex
from wcfs_lib.follow.oidindex import OidIndex

Z = 'wendelin.bigfile.file_zodb.'
LOBTREE, LOBUCKET = 'BTrees.LOBTree.LOBTree', 'BTrees.LOBTree.LOBucket'
IOBTREE, IOBUCKET = 'BTrees.IOBTree.IOBTree', 'BTrees.IOBTree.IOBucket'

AT = 0x0285cbac258bf266         # the one revision of the records below


class Records:
    """A storage of one revision, for ZLoader: {oid: raw record}."""

    def __init__(self, records):
        self.records = dict(records)

    def loadBefore(self, oid, tid):
        assert u64(tid) == AT + 1
        data = self.records.get(u64(oid))
        if data is None:
            raise POSKeyError(oid)
        return data, p64(AT), None


def loader_of(storage):
    return zformat.ZLoader(zstorage.Records(storage))


def record(klass, state):
    """A raw ZODB record of class `klass` ('module.Name') and `state`;
    zformat.Ref in state are pickled as persistent references."""
    module, _, name = klass.rpartition('.')
    f = io.BytesIO()
    f.write(b'\x80\x03c%s\n%s\nq\x00.' % (module.encode(), name.encode()))
    p = zodbpickle.pickle.Pickler(f, 3)
    p.persistent_id = lambda obj: p64(obj.oid) if isinstance(obj, zformat.Ref) else None
    p.dump(state)
    return f.getvalue()


def R(oid):
    return zformat.Ref(oid)


# A sound file: blktab a tree of two buckets; blocks ZBlk0, ZBlk1, ZBlk.
BS = 8 << 10
SKELETON = {
    1: (Z + 'ZBigFile', (BS, R(2))),
    2: (LOBTREE, ((R(3), 2, R(4)), R(3))),
    3: (LOBUCKET, ((0, R(10), 1, R(11)), R(4))),
    4: (LOBUCKET, ((2, R(12), 4, R(13)),)),
    10: (Z + 'ZBlk0', b'block 0'),
    11: (Z + 'ZBlk1', R(20)),
    12: (Z + 'ZBlk', b'\xffblock 2'),
    13: (Z + 'ZBlk1', R(21)),
    20: (IOBTREE, ((((0, R(30), 4096, R(31)),),),)),
    21: (IOBTREE, ((R(22), 4096, R(23)),)),
    22: (IOBUCKET, ((0, R(32)), R(23))),
    23: (IOBUCKET, ((4096, R(33), 6000, R(34)),)),
    30: (Z + 'ZData', b'chunk 0'),
    31: (Z + 'ZData', b'\x00chunk 1'),
    32: (Z + 'ZData', b'c' * 4096),
    33: (Z + 'ZData', b'd' * 1000),
    34: (Z + 'ZData', b''),
}


def _dag(depth):
    """A blktab where every tree node has two children that are one node."""
    objs = {2: (LOBTREE, ((R(1000), 1, R(1000)),))}
    for i in range(1000, 1000 + depth):
        objs[i] = (LOBTREE, ((R(i + 1), 1, R(i + 1)),))
    objs[1000 + depth] = (LOBUCKET, ((0, R(10), 1, R(10)),))
    return objs


def _serve_file(loader):
    head = loader.zbigfile(1, AT)
    loader.size(head)
    FileIndex(loader, 1, AT, OidIndex())


def _load_block(loader):
    head = loader.zbigfile(1, AT)
    loader.load_block_data(loader.lookup(head, 0), AT, head.blksize)


def _skeleton_with(changes):
    """-> a function making the raw records of SKELETON with {oid: raw record} changed."""
    return lambda: {**{oid: record(*obj) for oid, obj in SKELETON.items()}, **changes}


_ZBLK0_META = record(Z + 'ZBlk0', None)[:-len(b'\x80\x03N.')]

# name -> (the records, what to do with a loader of them): each must end
# within seconds, in data or FormatError / NotZBigFile, growing the process
# by under 64 MiB.
BOMB_CASES = {
    # LONG_BINPUT far past the record's length: the C unpickler sizes its memo by it
    'memo index 2**26': (lambda: {1: b'\x80\x03Nr\x00\x00\x00\x04.' + b'\x80\x03N.'},
                         lambda loader: loader.decode(1, AT)),
    # after BTree entries, which the memo guard skips in one match
    'memo index 2**26 after bucket entries': (
        lambda: {1: b'\x80\x03N.\x80\x03(' + b''.join(
            b'K%cC\x08\x00\x00\x00\x00\x00\x00\x00\x05q\x01cm\nn\nq\x02\x86q\x03Q' % k
            for k in range(3)) + b'r\x00\x00\x00\x04t.'},
        lambda loader: loader.decode(1, AT)),
    'memo index 2**26 in a block': (
        _skeleton_with({10: _ZBLK0_META + b'\x80\x03C\x00r\x00\x00\x00\x04.'}),
        _load_block),
    # bytes(n) is one of the globals the decoder lets a pickle call
    'bytes(2**28) as ZBlk0 state': (
        _skeleton_with({10: _ZBLK0_META + b'\x80\x03c__builtin__\nbytes\nJ\x00\x00\x00\x10\x85R.'}),
        _load_block),
    'blksize 2**32': (_skeleton_with({1: record(Z + 'ZBigFile', (2 ** 32, R(2)))}), _load_block),
    # shared nodes: 2**40 paths through 40 nodes
    'blktab DAG of depth 40': (
        lambda: {oid: record(*obj) for oid, obj in {**SKELETON, **_dag(40)}.items()},
        _serve_file),
}
