"""Reading ZBigFile data from raw ZODB records, without wendelin.core.

Contract (see shared/ZBIGFILE.md for the format itself):

- Every read is a pure function of (oid, at): records are fetched as of
  ``at`` (``loadBefore(oid, at+1)``), so a read as of one revision never sees
  another, whatever the watcher does meanwhile.
- Pickles are decoded with byte strings kept as bytes, so that state written by
  Python 2 (``str``) and by Python 3 (``bytes``) give the same block data.
  Classes are never imported: a pickled global becomes a `Global` name.
- Malformed data raises `FormatError` naming the oid and revision; an object
  that is not there at that revision raises `ObjectMissing`. The records come
  from zstorage.Records, which does the I/O (and raises its
  `DatabaseUnavailable`): this module only decodes.

BTree nodes are decoded once per (oid, serial) and kept in a bounded cache:
they make up the block index and are small. Block data is decoded and handed
back; keeping it is the caller's business (the kernel's page cache).

A record may hold anything a writer put there. Its length is checked
against the largest record of its kind (MAX_NODE_RECORD, MAX_ZBIGFILE_RECORD,
max_block_record) before a byte of it is decoded, and where no cache holds
it (a block's, a node a transaction just wrote) and the database can tell
its size first (RelStorage), before it is even sent. Its pickles are then
scanned in one pass of at most MAX_OPS opcodes, which bounds what the
unpickler may add to it (an object an opcode, a memo of at most MAX_OPS
entries); larger records that need the unpickler decode one at a time (man
wcfs(8), "Database records").
"""

import bisect
import codecs
import collections
import contextlib
import io
import pickletools
import re
import struct

from array import array

import zodbpickle.pickle
from ZODB.TimeStamp import TimeStamp
from ZODB.utils import p64, u64

from .. import locks
from .blockdata import HOLE, BlockData
from .zstorage import RecordTooLarge

ZMODULE = 'wendelin.bigfile.file_zodb'
ZBIGFILE = ZMODULE + '.ZBigFile'
ZBLK0 = (ZMODULE + '.ZBlk0', ZMODULE + '.ZBlk')
ZBLK1 = ZMODULE + '.ZBlk1'
ZDATA = ZMODULE + '.ZData'
LOBTREE = ('BTrees.LOBTree.LOBTree', 'BTrees.LOBTree.LOBucket')
IOBTREE = ('BTrees.IOBTree.IOBTree', 'BTrees.IOBTree.IOBucket')
PAGE_SIZE = 4096
MAX_BLKSIZE = 64 << 20      # ZBIGFILE.md: a block is decoded whole in memory
MAX_FILE_SIZE = 1 << 63     # st_size is a signed 64-bit integer
MAX_DEPTH = 64              # deeper BTrees are refused as malformed

# The largest record of each kind. BTrees' LOBTree and IOBTree hold at most
# 60 entries a bucket and 500 children a tree node: under 20 KiB pickled.
MAX_NODE_RECORD = 1 << 20       # a node of blktab or of a ZBlk1's chunk tree
MAX_ZBIGFILE_RECORD = 64 << 10  # the ZBigFile object, (blksize, blktab): some 100 bytes
RECORD_SLACK = 64 << 10         # what a block's record holds besides its data
# Opcodes a record may run, and the bound of its memo indices: the largest
# node BTrees write runs a few thousand; each opcode makes at most one object.
MAX_OPS = 1 << 16
LARGE_RECORD = 1 << 20          # larger records that need the unpickler: one at a time


def tid_time(tid):
    """The time of transaction `tid`, in seconds since the epoch."""
    return TimeStamp(p64(tid)).timeTime()


def max_block_record(blksize):
    """The largest record of a ZBlk0, ZBlk1 or ZData of a file of `blksize`:
    its data pickled as bytes, or as latin-1 text (Python 3's protocol 2),
    which takes up to two bytes a byte."""
    return 2 * blksize + RECORD_SLACK


def check_size(oid, at, data, limit, what):
    """FormatError if the record `data` is longer than `limit`."""
    if len(data) > limit:
        raise _too_large(oid, at, len(data), limit, what)


def _too_large(oid, at, size, limit, what):
    return FormatError(oid, at, 'record of %d bytes refused: %s takes at most %d'
                       % (size, what, limit))


class FormatError(Exception):
    """The database holds data that does not follow the ZBigFile format."""

    def __init__(self, oid, at, reason):
        super().__init__('oid %016x @%016x: %s' % (oid, at, reason))
        self.oid = oid
        self.at = at


class ObjectMissing(Exception):
    """The object does not exist as of that revision (or was packed away)."""

    def __init__(self, oid, at):
        super().__init__('oid %016x @%016x: no such object' % (oid, at))
        self.oid = oid
        self.at = at


class NotZBigFile(Exception):
    """The object exists but wcfs cannot serve it as a file."""


class Global:
    """A pickled reference to a class or function, kept by name only."""

    def __init__(self, module, name):
        self.name = '%s.%s' % (module, name)

    def __call__(self, *args):
        return Instance(self, args)

    def __repr__(self):
        return self.name


class Instance:
    """What calling a `Global` in a pickle gives: never a live object."""

    def __init__(self, klass, args):
        self.klass = klass
        self.args = args


class Ref:
    """A persistent reference: the oid of another object."""

    __slots__ = ('oid',)

    def __init__(self, oid):
        self.oid = oid

    def __repr__(self):
        return 'Ref(%016x)' % self.oid


def _bytes(*args):
    """bytes() as protocol 2 pickles an empty byte string; bytes(n) refused."""
    if args:
        raise ValueError('bytes() with %d arguments in a pickle' % len(args))
    return b''


# globals that byte strings are pickled through by protocol 2 on Python 3.
_SAFE_GLOBALS = {
    ('_codecs', 'encode'): codecs.encode,
    ('builtins', 'bytes'): _bytes,
    ('__builtin__', 'bytes'): _bytes,
}


class _Unpickler(zodbpickle.pickle.Unpickler):
    def find_class(self, module, name):
        return _SAFE_GLOBALS.get((module, name)) or Global(module, name)


def _persistent_load(pid):
    return Ref(_pid_oid(pid))


def _pid_oid(pid):
    """The oid of any of ZODB's persistent reference forms."""
    if type(pid) is tuple and pid and type(pid[0]) is bytes and len(pid[0]) == 8:
        return _U64(pid[0])[0]                      # (oid, klass): the usual one, first
    if isinstance(pid, bytes):
        return u64(pid)
    if isinstance(pid, tuple) and pid and isinstance(pid[0], bytes):
        return u64(pid[0])
    if isinstance(pid, list) and len(pid) == 2:     # [tag, args]
        tag, args = pid
        tag = tag.decode() if isinstance(tag, bytes) else tag
        idx = {'w': 0, 'n': 1, 'm': 1}.get(tag)
        if idx is not None and isinstance(args, tuple) and len(args) > idx:
            return u64(args[idx])
    if isinstance(pid, list) and len(pid) == 1 and isinstance(pid[0], bytes):
        return u64(pid[0])
    raise ValueError('unsupported persistent reference of type %s' % type(pid).__name__)


_MEMO_OPS = frozenset(('PUT', 'BINPUT', 'LONG_BINPUT', 'GET', 'BINGET', 'LONG_BINGET'))


def _opcode_tables():
    """From pickletools' own descriptions of the opcodes: -> ({opcode byte:
    length of its argument} for the plain ones, {opcode byte: (kind, how)}
    for the others: ('memo', n) a memo index of n bytes, ('lines', n) n lines,
    ('memo lines', 1), ('sized', struct of the size that comes first)."""
    sizes = {pickletools.TAKEN_FROM_ARGUMENT1: '<B', pickletools.TAKEN_FROM_ARGUMENT4: '<i',
             pickletools.TAKEN_FROM_ARGUMENT4U: '<I', pickletools.TAKEN_FROM_ARGUMENT8U: '<Q'}
    plain, other = {}, {}
    for op in pickletools.opcodes:
        code = op.code.encode('latin-1')[0]
        arg = op.arg
        memo = op.name in _MEMO_OPS
        if arg is None or (arg.n >= 0 and not memo):
            plain[code] = 0 if arg is None else arg.n
        elif arg.n >= 0:
            other[code] = ('memo', arg.n)
        elif arg.n == pickletools.UP_TO_NEWLINE:
            other[code] = ('memo lines', 1) if memo else \
                ('lines', 2 if arg.name.endswith('_pair') else 1)
        else:
            other[code] = ('sized', struct.Struct(sizes[arg.n]))
    return plain, other


_PLAIN_OPS, _OTHER_OPS = _opcode_tables()
_STOP = ord('.')
_NEWLINE = re.compile(b'\n').search      # bytes.find, for a memoryview too
_U64 = struct.Struct('>Q').unpack


# A run of BTree entries as ZODB pickles them: a key (BININT1, BININT2,
# BININT or LONG1), then a persistent reference to the value (SHORT_BINBYTES
# oid, its class by BINGET or GLOBAL, TUPLE2, BINPERSID) with BINPUTs between.
# Its memo indices are one byte: harmless. One C-level match skips a bucket's
# entries, which are most of a big file's index; an entry takes at least 20
# bytes for its 7 opcodes, so half its bytes count for more than its opcodes.
_BTREE_ENTRIES = re.compile(
    rb'(?:(?:K.|M..|J....|\x8a(?:\x01.|\x02..|\x03...|\x04....|\x05.{5}|\x06.{6}|'
    rb'\x07.{7}|\x08.{8}))'
    rb'C\x08.{8}q.(?:h.|c[^\n]{1,256}\n[^\n]{1,256}\nq.)\x86q.Q)+', re.DOTALL)
_KEY_OPS = frozenset(b'KMJ\x8a')


def _scan(data):
    """Walk the opcodes of both pickles of the record by table, in one pass,
    before the unpickler runs them. ValueError for a record that does not end
    within MAX_OPS opcodes (each makes at most an object: a byte of `]` is a
    list of 72 bytes), that names a memo index of MAX_OPS or more (the C
    unpickler sizes its memo by the largest index: 14 bytes would take
    gigabytes), or
    that the walk cannot follow (the unpickler would refuse it too).
    -> where the state pickle starts."""
    n = len(data)
    plain, other = _PLAIN_OPS, _OTHER_OPS
    entries, keys = _BTREE_ENTRIES.match, _KEY_OPS
    i = ops = 0
    first_end = None
    while True:
        if ops >= MAX_OPS:
            raise ValueError('pickle runs over %d opcodes' % MAX_OPS)
        if i >= n:
            raise ValueError('pickle ends at byte %d before its STOP' % n)
        op = data[i]
        if op in keys:
            m = entries(data, i)
            if m is not None:
                ops += (m.end() - i) >> 1
                i = m.end()
                continue
        ops += 1
        i += 1
        skip = plain.get(op)
        if skip is not None:
            i += skip
            if op == _STOP:
                if first_end is not None:
                    break
                first_end = i
            continue
        kind, how = other.get(op, (None, None))
        if kind == 'sized':
            if i + how.size > n:
                raise ValueError('pickle ends at byte %d inside an opcode' % n)
            size = how.unpack_from(data, i)[0]
            if size < 0:
                raise ValueError('negative size at byte %d' % i)
            i += how.size + size
        elif kind == 'memo':
            _check_memo_index(int.from_bytes(data[i:i + how], 'little'))
            i += how
        elif kind is not None:
            start = i
            for _ in range(how):
                m = _NEWLINE(data, i)
                if m is None:
                    raise ValueError('pickle ends at byte %d inside a line' % n)
                i = m.end()
            if kind == 'memo lines':
                _check_memo_index(int(bytes(data[start:i - 1])))
        else:
            raise ValueError('unknown opcode 0x%02x at byte %d' % (op, i - 1))
    if i > n:
        raise ValueError('pickle ends at byte %d inside an opcode' % n)
    return first_end


def _check_memo_index(index):
    if index >= MAX_OPS:
        raise ValueError('pickle memo index %d, over %d' % (index, MAX_OPS - 1))


_NO_GATE = contextlib.nullcontext()


def decode_record(data, gate=_NO_GATE):
    """-> (class name, state) of a raw ZODB record (bytes, or a memoryview
    of bytes); `gate` (a lock) is held while the unpickler decodes a record
    over LARGE_RECORD."""
    _scan(data)
    return _decode(data, gate)


def _decode(data, gate):
    if not isinstance(data, bytes):
        data = bytes(data)      # the unpickler would copy it all the same
    with gate if len(data) > LARGE_RECORD else _NO_GATE:
        unpickler = _unpickler(data)
        meta = unpickler.load()
        state = unpickler.load()
    return _class_name(meta), state


def _unpickler(data):
    unpickler = _Unpickler(io.BytesIO(data), encoding='bytes')
    # An attribute, not a method: zodbpickle keeps the bound method, and the
    # cycle would keep every record and its state until a full collection.
    unpickler.persistent_load = _persistent_load
    return unpickler


def decode_data_record(data, gate=_NO_GATE):
    """decode_record for the record of a block or a chunk: a state that is
    one byte string comes as a BlockData over `data` itself, not as a copy
    (the unpickler would copy every byte of a block once more); only other
    states go through `gate`."""
    first_end = _scan(data)
    span = _bytes_state(data, first_end)
    if span is None:
        return _decode(data, gate)
    return _class_name(_unpickler(bytes(data[:first_end])).load()), BlockData(data, *span)


# the opcodes of a pickled byte string (protocol 3 bytes, Python 2 str) ->
# the struct of the length that follows
_BYTES_OPS = {ord('B'): struct.Struct('<I'), ord('C'): struct.Struct('<B'),
              ord('T'): struct.Struct('<i'), ord('U'): struct.Struct('<B')}
_PROTO = 0x80
_MAX_PROTOCOL = 3                                   # as far as zodbpickle reads
_MEMO_SIZES = {ord('q'): 1, ord('r'): 4}            # BINPUT, LONG_BINPUT


def _bytes_state(data, i):
    """-> (offset, length) of the byte string that the pickle at data[i:] is
    made of alone (PROTO, the string, a memo put, STOP), or None for any
    other pickle (the unpickler decodes those, or refuses them)."""
    n = len(data)
    if i + 2 <= n and data[i] == _PROTO:
        if data[i + 1] > _MAX_PROTOCOL:
            return None
        i += 2
    size = _BYTES_OPS.get(data[i]) if i < n else None
    if size is None or i + 1 + size.size > n:
        return None
    length = size.unpack_from(data, i + 1)[0]
    offset = i + 1 + size.size
    i = offset + length
    if length < 0 or i >= n:
        return None
    memo = _MEMO_SIZES.get(data[i])
    if memo is not None:
        i += 1 + memo
    if i != n - 1 or data[i] != _STOP:
        return None
    return offset, length


def _class_name(meta):
    if isinstance(meta, tuple) and meta:
        meta = meta[0]                              # (klass, newargs)
    if isinstance(meta, Global):
        return meta.name
    if isinstance(meta, tuple) and len(meta) == 2:  # ((module, name), None)
        module, name = (x.decode() if isinstance(x, bytes) else x for x in meta)
        return '%s.%s' % (module, name)
    raise ValueError('unsupported class metadata of type %s' % type(meta).__name__)


# ---- BTree nodes ----

class Bucket:
    """A leaf: sorted keys and the oids of the objects they map to (every
    tree wcfs reads maps keys to persistent references). Compact arrays, not
    objects per entry: a big file's index is its buckets."""

    __slots__ = ('keys', 'oids')

    def __init__(self, keys, oids):
        self.keys = keys        # array('q')
        self.oids = oids        # array('Q'), oids[i] is the value of keys[i]

    @property
    def items(self):
        return zip(self.keys, self.oids)

    def get(self, key):
        """The oid `key` maps to, or None."""
        i = bisect.bisect_left(self.keys, key)
        if i < len(self.keys) and self.keys[i] == key:
            return self.oids[i]
        return None


class Tree:
    """An inner node: children[i] holds the keys k with
    keys[i-1] <= k < keys[i] (no bound below children[0] nor above the last)."""

    __slots__ = ('keys', 'children')

    def __init__(self, keys, children):
        self.keys = keys            # array('q'), one fewer than children
        self.children = children    # array('Q') of oids


EMPTY = Bucket(array('q'), array('Q'))


def parse_node(klass, state, kinds):
    """Decode the state of a BTree or bucket of the class names `kinds`.

    -> Bucket (also for a tree that holds its single bucket inline), or Tree.
    """
    if klass not in kinds:
        raise ValueError('%s is not one of %s' % (klass, '/'.join(kinds)))
    if klass == kinds[1]:
        return _parse_bucket(state)
    if state is None:
        return EMPTY
    if not isinstance(state, tuple) or len(state) not in (1, 2):
        raise ValueError('bad tree state')
    flat = state[0]
    if len(state) == 1 and isinstance(flat, tuple) and len(flat) == 1 and isinstance(flat[0], tuple):
        return _parse_bucket(flat[0])               # single bucket, inline
    if not isinstance(flat, tuple) or len(flat) % 2 != 1:
        raise ValueError('bad tree node')
    keys = flat[1::2]
    _check_keys(keys)
    return Tree(array('q', keys), _oids(flat[0::2], 'tree child'))


def _parse_bucket(state):
    if not isinstance(state, tuple) or len(state) not in (1, 2):
        raise ValueError('bad bucket state')
    flat = state[0]
    if not isinstance(flat, tuple) or len(flat) % 2:
        raise ValueError('bad bucket items')
    keys = flat[0::2]
    _check_keys(keys)
    return Bucket(array('q', keys), _oids(flat[1::2], 'BTree value'))


def _oids(refs, what):
    try:
        return array('Q', [ref.oid for ref in refs])
    except AttributeError:
        bad = next(ref for ref in refs if not isinstance(ref, Ref))
        # a type name, never repr: a hostile value nested deep enough makes repr raise
        raise ValueError('%s is a %s, not a persistent reference' % (what, type(bad).__name__)) \
            from None


def _check_keys(keys):
    if not all(type(k) is int for k in keys):
        raise ValueError('bucket key is not an integer')
    if any(a >= b for a, b in zip(keys, keys[1:])):
        raise ValueError('bucket keys are not sorted')
    if keys and not (-(1 << 63) <= keys[0] and keys[-1] < (1 << 63)):
        raise ValueError('bucket key out of the 64-bit range')


def descend(root, key, node_of, at):
    """The node where the descent from the BTree node `root` towards `key`
    ends: the Bucket that holds `key` if it is anywhere, or None where
    node_of(oid) (-> Bucket, Tree or None) knows no node. The one descent of
    wcfs: loading (ZLoader.lookup) and the index (FileIndex.zblk_of)."""
    node = node_of(root)
    for _depth in range(MAX_DEPTH):
        if not isinstance(node, Tree):
            return node
        node = node_of(node.children[bisect.bisect_right(node.keys, key)])
    raise FormatError(root, at, 'BTree deeper than %d levels' % MAX_DEPTH)


# ---- the loader ----

class ZBigFileState:
    """The ZBigFile object's own state as of a revision."""

    __slots__ = ('oid', 'at', 'serial', 'blksize', 'blktab')

    def __init__(self, oid, at, serial, blksize, blktab):
        self.oid = oid
        self.at = at
        self.serial = serial
        self.blksize = blksize
        self.blktab = blktab    # oid of the LOBTree


class Span:
    """The revisions [lo, hi] over which every record read for one block
    as of `at` stays the same: lo the newest serial, hi the revision before
    the first next revision; a record that had no next revision is known to
    hold up to `current` (a revision the database had committed before it
    was asked, so at least `at`), or only up to `at` where it was read from
    a client cache or an older snapshot (`add(..., fresh=False)`)."""

    __slots__ = ('current', 'lo', 'hi')

    def __init__(self, current):
        self.current = current
        self.lo = 0
        self.hi = None

    def add(self, at, serial, end, fresh=False):
        bound = end - 1 if end is not None else max(at, self.current) if fresh else at
        self.lo = max(self.lo, serial)
        self.hi = bound if self.hi is None else min(self.hi, bound)


class ZLoader:
    """Reads ZBigFiles as of any revision from raw records; thread-safe.

    `records` (zstorage.Records) does the I/O: record(oid, at, fresh) ->
    (data, serial, end) or None.
    """

    def __init__(self, records, node_cache_size=4000):
        self.records = records
        self._nodes = collections.OrderedDict()     # (oid, serial) -> node
        self._read_as_of = collections.OrderedDict()    # (oid, at) -> (serial, end) of its record
        self._nodes_max = node_cache_size
        self._nodes_lock = locks.lock('ZLoader._nodes_lock')         # guards _nodes, _read_as_of
        # held by the one decode of a record over LARGE_RECORD through the unpickler
        self._large_decode_lock = locks.lock('ZLoader._large_decode_lock')

    # records

    def record(self, oid, at, fresh=False, cache=True, bound=None):
        """-> (data, serial) of `oid` as of `at`; ObjectMissing if it has none.
        bound: (the largest size, what the record is) of a record no cache
        holds: a longer one is refused, and where the database can tell its
        size first, not even loaded."""
        data, serial, _end = self.record_span(oid, at, fresh, cache, bound)
        return data, serial

    def record_span(self, oid, at, fresh=False, cache=True, bound=None):
        """-> (data, serial, end): the record of `oid` as of `at`, valid for
        every revision in [serial, end) (end None: up to now)."""
        try:
            r = self.records.record(oid, at, fresh, cache, None if bound is None else bound[0])
        except RecordTooLarge as e:
            raise _too_large(oid, at, e.size, *bound) from None
        if r is None:
            raise ObjectMissing(oid, at)
        if bound is not None:
            check_size(oid, at, r[0], *bound)
        return r

    def prefetch(self, oids, at):
        """Ask for the records of `oids` as of `at` at once, if the storage can."""
        self.records.prefetch(oids, at)

    def decode(self, oid, at, fresh=False, blksize=None):
        """-> (class name, state, serial) of `oid` as of `at`; with `blksize`,
        the record may be as large as a block's of that blksize, else as a
        BTree node's."""
        data, serial = self.record(oid, at, fresh)
        if blksize is None:
            check_size(oid, at, data, MAX_NODE_RECORD, 'an object that is not a block')
        else:
            check_size(oid, at, data, max_block_record(blksize), 'a block of blksize %d' % blksize)
        try:
            klass, state = decode_record(data, self._large_decode_lock)
        except Exception as e:
            raise FormatError(oid, at, 'undecodable record: %s' % e) from None
        return klass, state, serial

    # the ZBigFile object

    def zbigfile(self, oid, at, fresh=False):
        """-> ZBigFileState; NotZBigFile when wcfs cannot serve `oid`."""
        data, serial = self.record(oid, at, fresh)
        return zbigfile_of(oid, at, data, serial)

    # BTrees

    def node(self, oid, at, kinds=LOBTREE, uncached=False, span=None):
        """-> (Bucket or Tree, serial) of a BTree node as of `at`. uncached:
        no cache is likely to hold it (a transaction just wrote it, or it
        was just prefetched): asked for bounded by a node's size. `span`
        (a Span) learns where its record holds."""
        known = self._node_as_of(oid, at)
        if known is not None:
            node, serial, end = known
        else:
            node, serial, end = self._load_node(oid, at, kinds, uncached)
        if span is not None:
            span.add(at, serial, end)
        return node, serial

    def _node_as_of(self, oid, at):
        """-> (node, serial, end) of `oid` as of `at` if a lookup read it
        before, else None. Each lookup of a block reads the nodes from the
        root down: without this, their records are loaded again every time
        (ZEO's client cache answers; RelStorage asks the server, twice)."""
        with self._nodes_lock:
            seen = self._read_as_of.get((oid, at))
            node = None if seen is None else self._nodes.get((oid, seen[0]))
            if node is None:
                return None
            self._read_as_of.move_to_end((oid, at))
            self._nodes.move_to_end((oid, seen[0]))
            return node, seen[0], seen[1]

    def _load_node(self, oid, at, kinds, uncached):
        bound = (MAX_NODE_RECORD, 'a BTree node')
        data, serial, end = self.record_span(oid, at, bound=bound if uncached else None)
        key = (oid, serial)
        with self._nodes_lock:
            node = self._nodes.get(key)
            if node is not None:
                self._nodes.move_to_end(key)
        if node is None:
            check_size(oid, at, data, *bound)
            try:
                node = parse_node(*decode_record(data), kinds)
            except Exception as e:
                raise FormatError(oid, at, 'bad BTree node: %s' % e) from None
        with self._nodes_lock:
            self._nodes[key] = node
            if len(self._nodes) > self._nodes_max:
                self._nodes.popitem(last=False)
            self._read_as_of[(oid, at)] = (serial, end)
            if len(self._read_as_of) > self._nodes_max:
                self._read_as_of.popitem(last=False)
        return node, serial, end

    def lookup(self, head, blk):
        """-> oid of the block object of `blk`, or None for a hole."""
        return descend(head.blktab, blk, lambda oid: self.node(oid, head.at)[0], head.at).get(blk)

    def size(self, head):
        """File size as ZBIGFILE.md defines it."""
        last = None
        for blk, _ in self.walk(head.blktab, head.at, reverse=True):
            last = blk
            break
        return 0 if last is None else file_size(last, head)

    def walk(self, root, at, kinds=LOBTREE, reverse=False, visit=None, span=None):
        """Yield (key, oid) of a BTree in key order; visit(oid, node) per node."""
        yield from self._walk(root, at, kinds, reverse, visit, 0, set(), span)

    def _walk(self, oid, at, kinds, reverse, visit, depth, seen, span=None):
        if depth > MAX_DEPTH:
            raise FormatError(oid, at, 'BTree deeper than %d levels' % MAX_DEPTH)
        if oid in seen:
            raise FormatError(oid, at, 'BTree node reached twice')
        seen.add(oid)
        node, _ = self.node(oid, at, kinds, span=span)
        if visit is not None:
            visit(oid, node)
        if isinstance(node, Bucket):
            yield from (reversed(list(node.items)) if reverse else node.items)
            return
        for child in (reversed(node.children) if reverse else node.children):
            yield from self._walk(child, at, kinds, reverse, visit, depth + 1, seen, span)

    # blocks

    def load_block_data(self, zblk, at, blksize, span=None):
        """-> (BlockData of at most blksize bytes, oids the block is made of);
        `span` (a Span) learns over which revisions they all hold."""
        klass, state = self._decode_data(zblk, at, blksize, span, fresh=span is not None)
        if klass in ZBLK0:
            data = _as_data(state, zblk, at)
            if len(data) > blksize:
                raise FormatError(zblk, at, 'ZBlk0 holds %d bytes, more than blksize %d'
                                  % (len(data), blksize))
            return data, (zblk,)
        if klass == ZBLK1:
            if not isinstance(state, Ref):
                raise FormatError(zblk, at, 'ZBlk1 state is not a reference to its chunk tree')
            return self._load_zblk1(zblk, state.oid, at, blksize, span)
        raise FormatError(zblk, at, 'block object is a %s, not a ZBlk0 or ZBlk1' % klass)

    def _decode_data(self, oid, at, blksize, span=None, fresh=False):
        # Straight from the server, not through its client cache (ZEO): a
        # block's record is decoded once per revision and kept by wcfs
        # (BlockCache) and the kernel; storing 2 MiB records in ZEO's cache
        # costs a file write each (about 15% of wcfs's CPU in a cold read)
        # and pushes out the BTree nodes that every block lookup needs.
        bound = (max_block_record(blksize), 'a block of blksize %d' % blksize)
        # fresh: a record with no next revision is then current as of the
        # server's answer (RelStorage: a snapshot polled for it)
        data, serial, end = self.record_span(oid, at, fresh=fresh, cache=False, bound=bound)
        if span is not None:
            span.add(at, serial, end, fresh)
        try:
            return decode_data_record(data, self._large_decode_lock)
        except Exception as e:
            raise FormatError(oid, at, 'undecodable record: %s' % e) from None

    def _load_zblk1(self, zblk, chunktab, at, blksize, span=None):
        buf = None
        oids = [zblk]
        end = 0
        for off, zdata in self.walk(chunktab, at, IOBTREE, visit=lambda oid, _: oids.append(oid),
                                    span=span):
            oids.append(zdata)
            klass, state = self._decode_data(zdata, at, blksize, span)
            if klass != ZDATA:
                raise FormatError(zdata, at, 'chunk object is a %s, not ZData' % klass)
            chunk = _as_data(state, zdata, at)
            if off < end:
                raise FormatError(zblk, at, 'ZBlk1 chunk at offset %d overlaps the previous one' % off)
            if off + len(chunk) > blksize:
                raise FormatError(zblk, at, 'ZBlk1 chunk at offset %d runs past blksize %d'
                                  % (off, blksize))
            if chunk.length:
                if buf is None:
                    buf = bytearray(blksize)
                buf[off:off + chunk.length] = chunk.view()
            end = off + chunk.length
        if buf is None:
            return HOLE, tuple(oids)
        return BlockData(buf, 0, end), tuple(oids)


def zbigfile_of(oid, at, data, serial):
    """The ZBigFileState of the record `data` of `oid` as of `at`; NotZBigFile
    when wcfs cannot serve it (another class, bad state, blksize refused)."""
    check_size(oid, at, data, MAX_ZBIGFILE_RECORD, 'a ZBigFile')
    try:
        klass, state = decode_record(data)
    except Exception as e:
        raise FormatError(oid, at, 'undecodable record: %s' % e) from None
    if klass != ZBIGFILE:
        raise NotZBigFile('object %016x is a %s, not a ZBigFile' % (oid, klass))
    if not (isinstance(state, tuple) and len(state) == 2
            and type(state[0]) is int and isinstance(state[1], Ref)):
        raise NotZBigFile('object %016x @%016x: ZBigFile state is not (blksize, blktab)'
                          % (oid, at))
    blksize, blktab = state
    if blksize <= 0 or blksize % PAGE_SIZE or blksize > MAX_BLKSIZE:
        raise NotZBigFile('object %016x: blksize %d is not a multiple of %d up to %d'
                          % (oid, blksize, PAGE_SIZE, MAX_BLKSIZE))
    return ZBigFileState(oid, at, serial, blksize, blktab.oid)


def file_size(last_blk, head):
    """Size of a file whose last block is `last_blk`; FormatError past the
    sizes a file can have (negative blocks, over 2**63 bytes)."""
    size = (last_blk + 1) * head.blksize
    if last_blk < 0 or size >= MAX_FILE_SIZE:
        raise FormatError(head.blktab, head.at, 'block number %d out of range' % last_blk)
    return size


def _as_data(state, oid, at):
    if isinstance(state, BlockData):
        return state
    if isinstance(state, bytes):
        return BlockData(state)
    raise FormatError(oid, at, 'data state is a %s, not bytes' % type(state).__name__)
