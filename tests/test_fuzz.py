"""Hostile and broken input (issue 5, item 3), fuzzed with hypothesis.

The protocol (SPEC §4.5): whatever bytes a client writes, `LineBuffer` cuts
them into the lines a simple model says, holding at most MAX_LINE bytes;
`parse_request` gives a valid request or a ProtocolError whose `error` line is
one ASCII line; `ChannelState` under any order of requests and replies stays
consistent.

The format decoder (ZBIGFILE.md), without a mount: real records written by
zbig, truncated and mutated; records of every class with states of wrong
types and shapes; and the cases the format names (chunks that overlap, run
past blksize or have negative offsets, blocks longer than blksize, a blktab
that is not an LOBTree). Every call wcfs makes to serve a file raises only
FormatError, NotZBigFile or ObjectMissing, and blocks that do not involve the
broken record still read right. A small record cannot make the decoder
allocate much memory or run for long.

Through a real mount: a file whose blocks are broken in many ways gives EIO
for exactly those blocks and the right data for the others, and keeps
following the database; files broken as a whole are refused or give EIO; a
blktab of shared nodes does not stall the other files; a `want` on a file
with a broken block is answered; names of any length and bytes in mkdir and
lookups give errnos only; and wcfs keeps serving.
"""

import contextlib
import errno
import os
import re
import resource
import subprocess
import sys
import signal
import textwrap
import threading
import time

import pytest
import transaction
import ZEO.ClientStorage
import ZODB
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from ZODB.Connection import TransactionMetaData
from ZODB.MappingStorage import MappingStorage
from ZODB.POSException import POSKeyError
from ZODB.utils import p64, u64, z64

from devtools.procs import wait_for
from devtools.py2str import zbigfile as py2str_zbigfile
from wcfs_lib import zbig
from wcfs_lib.zodb import zformat
from wcfs_lib.follow.delta import compare_revisions
from wcfs_lib.protocol import (MAX_LINE, ChannelState, LineBuffer, ProtocolError, format_error,
                               parse_request)
from wcfs_lib.follow.fileindex import FileIndex
from wcfs_lib.follow.oidindex import OidIndex
from chanhelp import Chan
from zhelp import KiB, Writer, block_bytes, head_at, hex16, read_bytes, stats
from zrecords import (AT, BOMB_CASES, BS, IOBTREE, IOBUCKET, LOBTREE, LOBUCKET, SKELETON, Z, R,
                      Records, loader_of, record)

ALLOWED = (zformat.FormatError, zformat.NotZBigFile, zformat.ObjectMissing)

FAST = settings(max_examples=1000, deadline=None)
SLOWER = settings(max_examples=2000, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ==== the protocol ====

def lines_model(data):
    """What LineBuffer must give for all of `data`: a line (without `\\r\\n`) or
    ProtocolError for each `\\n`-terminated line; the rest is pending."""
    *complete, _pending = data.split(b'\n')
    return [ProtocolError if len(line) > MAX_LINE else
            line[:-1] if line.endswith(b'\r') else line
            for line in complete]


# bytes that look like requests often enough to hit every branch
PIECES = st.sampled_from([b'\n', b'\r', b'\r\n', b' ', b'ack', b'want', b'want ',
                          b'0123456789abcdef', b'0285CBAC258BF266', b'\x00', b'\xff',
                          b'x' * 100, b'y' * MAX_LINE])
WRITES = st.one_of(st.binary(max_size=600),
                   st.lists(PIECES, max_size=12).map(b''.join))


@FAST
@given(writes=st.lists(WRITES, max_size=20))
def test_linebuffer_cuts_any_bytes_like_the_model_and_holds_at_most_a_line(writes):
    lb = LineBuffer()
    got = []
    for data in writes:
        for item in lb.feed(data):
            if isinstance(item, ProtocolError):
                got.append(ProtocolError)
            else:
                assert isinstance(item, bytes) and b'\n' not in item
                got.append(item)
        assert len(lb._buf) <= MAX_LINE
    assert got == lines_model(b''.join(writes))


VALID_WANT = re.compile(rb'want [0-9a-f]{16}\Z')
LINES = st.one_of(st.binary(max_size=300),
                  st.lists(PIECES.filter(lambda p: b'\n' not in p), max_size=6).map(b''.join),
                  st.from_regex(rb'\Awant [0-9a-fA-F]{14,18}\Z'))


@FAST
@given(line=LINES)
def test_parse_request_gives_a_valid_request_or_a_protocol_error(line):
    try:
        req = parse_request(line)
    except ProtocolError as e:
        assert line != b'ack' and not VALID_WANT.match(line)
        reply = format_error(e)
        assert reply.startswith(b'error ') and reply.endswith(b'\n')
        assert reply.count(b'\n') == 1 and reply.isascii()
        return
    if line == b'ack':
        assert req == ('ack', None)
    else:
        assert VALID_WANT.match(line), line
        assert req == ('want', int(line[5:], 16))


@FAST
@given(writes=st.lists(WRITES, max_size=10))
def test_written_bytes_give_requests_or_one_line_errors(writes):
    """What Channel.write does with every item LineBuffer gives."""
    lb = LineBuffer()
    for data in writes:
        for item in lb.feed(data):
            try:
                if isinstance(item, ProtocolError):
                    raise item
                verb, tid = parse_request(item)
                assert verb in ('want', 'ack')
            except ProtocolError as e:
                assert format_error(e).count(b'\n') == 1


class ChannelMachine(RuleBasedStateMachine):
    """A ChannelState driven as wcfs drives it (subscribers.Subscribers), with the
    client's requests in any order, and head moving now and then."""

    def __init__(self):
        super().__init__()
        self.ch = ChannelState()
        self.head = 100             # the file's head tid
        self.last_reported = None

    def snapshot(self):
        c = self.ch
        return c.subscribed, c.reported, c.waiting, c.unacked, c.checking

    @rule(cat=st.integers(0, 140))
    def want(self, cat):
        before = self.snapshot()
        try:
            self.ch.want(cat)
        except ProtocolError:
            assert self.snapshot() == before
            assert before[3] or before[2] is not None      # unacked or waiting
            return
        assert not before[3] and before[2] is None
        assert self.ch.checking
        self.ch.checked()                                   # Subscribers.want: its check done
        if self.head < cat:
            self.ch.sent_wait(cat)
        else:
            self.sent_have(self.head)

    @rule()
    def ack(self):
        before = self.snapshot()
        try:
            self.ch.ack()
        except ProtocolError:
            assert self.snapshot() == before
            assert not before[3]
            return
        assert before[3] and not self.ch.unacked

    @rule(n=st.integers(1, 20))
    def head_moves(self, n):
        """An update: Subscribers.update, then answer_waiting."""
        self.head += n
        c = self.ch
        if c.subscribed and not c.unacked and c.reported < self.head:
            self.sent_have(self.head)
        if c.waiting is not None and c.waiting <= self.head:
            self.sent_have(self.head)

    def sent_have(self, tid):
        assert not self.ch.unacked, 'a second have before the ack of the first'
        self.ch.sent_have(tid)
        assert self.last_reported is None or tid >= self.last_reported
        self.last_reported = tid

    @precondition(lambda self: self.ch.unacked)
    @rule()
    def ack_is_accepted_when_a_have_is_unacked(self):
        self.ch.ack()
        assert not self.ch.unacked

    @invariant()
    def consistent(self):
        c = self.ch
        assert c.subscribed == (c.reported is not None)
        assert not (c.unacked and c.waiting is not None)
        assert not c.unacked or c.subscribed
        assert c.reported is None or c.reported <= self.head


ChannelMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40,
                                            deadline=None)
test_channel_state_under_any_requests = ChannelMachine.TestCase


# ==== the format decoder, without a mount ====

def serve(loader, oid):
    """Make every call wcfs makes to serve file `oid`.

    -> (the exception that refused the file, or None; {blk: data or exception}).
    Exceptions other than ALLOWED propagate: that is a bug.
    """
    try:
        head = loader.zbigfile(oid, AT)
        size = loader.size(head)
        keys = [k for k, _ in loader.walk(head.blktab, AT)]
        FileIndex(loader, oid, AT, OidIndex())  # what mkdir and the watcher do
    except ALLOWED as e:
        return e, {}
    try:
        compare_revisions(loader, oid, AT, AT)      # what want of an old Cat does
    except ALLOWED:
        pass
    nblk = size // head.blksize
    blocks = {}
    for blk in sorted(set(keys) | set(range(min(nblk, 256))) | {-1, nblk}):
        try:
            zblk = loader.lookup(head, blk)
            if zblk is None:
                blocks[blk] = b'hole'
            else:
                data, oids = block_bytes(loader, zblk, AT, head.blksize)
                assert len(data) == head.blksize
                blocks[blk] = data
        except ALLOWED as e:
            blocks[blk] = e
    return None, blocks


def block_parts(loader, oid):
    """{blk: oids its block is made of (ZBlk, chunk tree nodes, ZData)} of a sound file."""
    head = loader.zbigfile(oid, AT)
    return {blk: set(block_bytes(loader, zblk, AT, head.blksize)[1])
            for blk, zblk in loader.walk(head.blktab, AT)}


@contextlib.contextmanager
def memory_bound(extra=1 << 30):
    """Make allocations past `extra` more bytes of address space fail with
    MemoryError, so that a fuzzed record cannot take the machine's memory."""
    with open('/proc/self/status') as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmSize:'))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class TooSlow(Exception):
    pass


@contextlib.contextmanager
def time_bound(seconds):
    """Fail if the body runs longer than `seconds` (SIGALRM; the timer of
    pytest-timeout is put back after). The alarm may be caught and turned
    into a FormatError by the code under test: it still fails here."""
    fired = []

    def alarm(signum, frame):
        fired.append(True)
        raise TooSlow('took over %s s' % seconds)

    t0 = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:
            left = max(old_delay - (time.monotonic() - t0), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)
    assert not fired, 'took over %s s' % seconds


# ---- real records, written by zbig ----

class RealDB:
    """ZBigFiles of every shape zbig writes, as raw records of one revision.

    files: {oid: expected {blk: bytes}}, blksize: {oid: blksize},
    records: {oid: raw record}, parts: {file oid: {blk: oids of the block}},
    tree: {file oid: oids of the file and of its blktab's nodes}.
    """

    def __init__(self):
        storage = MappingStorage()
        db = ZODB.DB(storage)
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        root = conn.root()
        made = []

        a = zbig.ZBigFile(4 * KiB)                   # blktab of several buckets
        for blk in range(0, 140, 2):
            a.write_block(blk, bytes([blk]) * (blk + 1), 'ZBlk0')
        a.blktab[141] = zbig.ZBlk(b'old name')
        made.append(a)

        b = zbig.ZBigFile(16 * KiB)                  # ZBlk1 of several chunk buckets
        b.write_block(0, bytes(range(256)) * 64, 'ZBlk1', chunk=128)
        b.write_block(1, b'\x01' * 5000, 'ZBlk1', chunk=1024)
        b.write_block(3, b'short', 'ZBlk0')
        b.write_block(4, bytes(16 * KiB), 'ZBlk1')      # an empty chunk tree
        made.append(b)

        c = py2str_zbigfile(8 * KiB)      # state as Python 2 str
        c.write_block(0, bytes(range(256)) * 3, 'ZBlk0')
        c.write_block(1, b'\xff' * 300 + b'\0' * 100 + b'\xfe', 'ZBlk1', chunk=256)
        c.write_block(2, b'ascii only', 'ZBlk0')
        made.append(c)

        made.append(zbig.ZBigFile(4 * KiB))          # empty

        for i, f in enumerate(made):
            root['f%d' % i] = f
        tm.commit()
        self.files = {u64(f._p_oid): {blk: f.read_block(blk)
                                      for blk in range(f.size() // f.blksize)} for f in made}
        self.blksize = {u64(f._p_oid): f.blksize for f in made}
        self.records = {}
        for txn in storage.iterator():
            for rec in txn:
                self.records[u64(rec.oid)] = rec.data
        conn.close()
        db.close()
        loader = loader_of(Records(self.records))
        self.parts = {oid: block_parts(loader, oid) for oid in self.files}
        self.tree = {}
        for oid in self.files:
            self.tree[oid] = {oid}
            head = loader.zbigfile(oid, AT)
            for _ in loader.walk(head.blktab, AT, visit=lambda node, _: self.tree[oid].add(node)):
                pass

    def loader(self, records=None):
        return loader_of(Records(self.records if records is None else records))

    def check_unaffected(self, loader, broken):
        """Every file: only ALLOWED errors; blocks not made of `broken` read right."""
        for oid, want in self.files.items():
            refused, blocks = serve(loader, oid)
            if refused is not None or broken in self.tree[oid]:
                continue                        # which block is which may have changed
            for blk, data in want.items():
                if broken in self.parts[oid].get(blk, {broken}):
                    continue
                got = blocks.get(blk)
                if blk not in self.parts[oid] and got == b'hole':
                    continue
                assert got == data, 'file %x blk %d: %r' % (oid, blk, got)


REAL = RealDB()


def test_real_records_read_back_through_the_fuzz_harness():
    loader = REAL.loader()
    for oid, want in REAL.files.items():
        refused, blocks = serve(loader, oid)
        assert refused is None
        for blk, data in want.items():
            got = blocks[blk]
            assert got == data or (got == b'hole' and data == bytes(REAL.blksize[oid]))


OIDS = sorted(REAL.records)


@st.composite
def mutations(draw):
    """-> (oid, new record or None for a record that is gone)."""
    oid = draw(st.sampled_from(OIDS))
    data = REAL.records[oid]
    n = len(data)
    how = draw(st.sampled_from(['truncate', 'flip', 'insert', 'delete', 'replace',
                                'other-record', 'gone', 'state-only', 'splice']))
    i = draw(st.integers(0, n - 1))
    if how == 'truncate':
        return oid, data[:i]
    if how == 'flip':
        return oid, data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1:]
    if how == 'insert':
        return oid, data[:i] + draw(st.binary(min_size=1, max_size=16)) + data[i:]
    if how == 'delete':
        return oid, data[:i] + data[i + draw(st.integers(1, 16)):]
    if how == 'replace':
        return oid, draw(st.binary(max_size=64))
    if how == 'other-record':
        return oid, REAL.records[draw(st.sampled_from(OIDS))]
    if how == 'gone':
        return oid, None
    if how == 'state-only':                            # the class pickle is cut away
        return oid, data[data.index(b'q\x00.') + 3:]
    other = REAL.records[draw(st.sampled_from(OIDS))]   # splice: head of one, tail of another
    return oid, data[:i] + other[draw(st.integers(0, len(other) - 1)):]


@SLOWER
@given(mutation=mutations())
def test_mutated_real_records_give_only_format_errors(mutation):
    oid, data = mutation
    records = dict(REAL.records)
    if data is None:
        del records[oid]
    else:
        records[oid] = data
    with memory_bound(), time_bound(10):
        REAL.check_unaffected(REAL.loader(records), oid)


@FAST
@given(data=st.binary(max_size=200))
def test_decode_of_arbitrary_bytes_is_format_error(data):
    loader = loader_of(Records({1: data}))
    with memory_bound(), time_bound(10):
        for call in (lambda: loader.decode(1, AT), lambda: loader.zbigfile(1, AT),
                     lambda: loader.node(1, AT), lambda: loader.node(1, AT, zformat.IOBTREE),
                     lambda: block_bytes(loader, 1, AT, 4096)):
            try:
                call()
            except ALLOWED:
                pass


# ---- states of wrong types and shapes ----

# What SKELETON (zrecords) reads as.
SKELETON_BLOCKS = {
    0: b'block 0'.ljust(BS, b'\0'),
    1: b'chunk 0'.ljust(4096, b'\0') + b'\x00chunk 1'.ljust(4096, b'\0'),
    2: b'\xffblock 2'.ljust(BS, b'\0'),
    3: b'hole',
    4: (b'c' * 4096 + b'd' * 1000).ljust(BS, b'\0'),
}
SKELETON_PARTS = {0: {10}, 1: {11, 20, 30, 31}, 2: {12}, 4: {13, 21, 22, 23, 32, 33, 34}}
CLASSES = [Z + 'ZBigFile', Z + 'ZBlk0', Z + 'ZBlk', Z + 'ZBlk1', Z + 'ZData',
           LOBTREE, LOBUCKET, IOBTREE, IOBUCKET, 'BTrees.OOBTree.OOBTree',
           'persistent.mapping.PersistentMapping']


def skeleton_loader(changes=()):
    """A loader of SKELETON with {oid: (klass, state) or None (gone)} changed."""
    objs = dict(SKELETON)
    objs.update(changes)
    return loader_of(Records({oid: record(*obj) for oid, obj in objs.items()
                                    if obj is not None}))


def test_skeleton_reads_as_expected():
    refused, blocks = serve(skeleton_loader(), 1)
    assert refused is None
    assert {blk: blocks[blk] for blk in SKELETON_BLOCKS} == SKELETON_BLOCKS


LEAVES = st.one_of(
    st.none(), st.booleans(),
    st.integers(-2 ** 70, 2 ** 70), st.sampled_from([0, 4096, BS, -4096, 2 ** 31, 2 ** 63 - 1]),
    st.floats(allow_nan=False), st.text(max_size=6), st.binary(max_size=20),
    st.builds(R, st.sampled_from(sorted(SKELETON) + [99, 0])))
STATES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=7).map(tuple),
                            st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=16)


@SLOWER
@given(oid=st.sampled_from(sorted(SKELETON)), klass=st.sampled_from(CLASSES), state=STATES)
def test_any_state_of_any_class_gives_only_format_errors(oid, klass, state):
    check_skeleton_with({oid: (klass, state)}, broken=oid)


TREE = {1, 2, 3, 4}     # the ZBigFile and its blktab: they say which block is which


def check_skeleton_with(changes, broken):
    """Serve SKELETON with `changes`: only ALLOWED errors, within seconds, and
    unless `broken` is part of the blktab, every block not made of it reads
    as before. -> (refused, blocks)."""
    with memory_bound(), time_bound(10):
        refused, blocks = serve(skeleton_loader(changes), 1)
    if refused is None and broken not in TREE:
        for blk, want in SKELETON_BLOCKS.items():
            if broken not in SKELETON_PARTS.get(blk, ()):
                assert blocks[blk] == want, (blk, blocks[blk])
    return refused, blocks


@SLOWER
@given(items=st.lists(st.tuples(st.integers(-2 ** 40, 2 ** 40), st.binary(max_size=9000)),
                      max_size=6))
def test_chunk_trees_of_any_offsets_give_the_block_or_format_error(items):
    """ZBlk1 at block 1: a chunk tree of any offsets and chunk sizes. The
    block reads iff no chunk overlaps another, starts before 0 or ends past BS."""
    items = sorted(dict(items).items())
    flat = tuple(x for i, (off, _) in enumerate(items) for x in (off, R(100 + i)))
    changes = {20: (IOBTREE, (((flat,),),))}
    for i, (_, data) in enumerate(items):
        changes[100 + i] = (Z + 'ZData', data)
    refused, blocks = check_skeleton_with(changes, broken=20)
    assert refused is None
    end = 0
    sound = True
    want = bytearray(BS)
    for off, data in items:
        if off < end or off + len(data) > BS:
            sound = False
            break
        want[off:off + len(data)] = data
        end = off + len(data)
    if sound:
        assert blocks[1] == bytes(want)
    else:
        assert isinstance(blocks[1], zformat.FormatError), blocks[1]


# ---- the cases the format names, one by one ----

# (name, changes to SKELETON, what it breaks: a block number, or 'file')
CASES = [
    ('ZBlk0 state is an int', {10: (Z + 'ZBlk0', 12345)}, 0),
    ('ZBlk0 state is a tuple', {10: (Z + 'ZBlk0', (b'a', b'b'))}, 0),
    ('ZBlk0 state is a str', {10: (Z + 'ZBlk0', 'text')}, 0),
    ('ZBlk0 state is None', {10: (Z + 'ZBlk0', None)}, 0),
    ('ZBlk0 longer than blksize', {10: (Z + 'ZBlk0', b'x' * (BS + 1))}, 0),
    ('ZBlk0 is gone', {10: None}, 0),
    ('ZBlk1 state is bytes', {11: (Z + 'ZBlk1', b'not a reference')}, 1),
    ('ZBlk1 state is an int', {11: (Z + 'ZBlk1', 7)}, 1),
    ('ZBlk1 state is a tuple of a reference', {11: (Z + 'ZBlk1', (R(20),))}, 1),
    ('ZBlk1 chunk tree is gone', {20: None}, 1),
    ('ZBlk1 chunk tree is an LOBTree', {20: (LOBTREE, SKELETON[20][1])}, 1),
    ('ZBlk1 chunk tree is a ZData', {11: (Z + 'ZBlk1', R(30))}, 1),
    ('chunks overlap', {20: (IOBTREE, ((((0, R(32), 100, R(31)),),),))}, 1),
    ('chunk runs past blksize', {20: (IOBTREE, ((((BS - 4095, R(32)),),),))}, 1),
    ('chunk at negative offset', {20: (IOBTREE, ((((-4096, R(31)),),),))}, 1),
    ('empty chunk at negative offset', {20: (IOBTREE, ((((-1, R(34)),),),))}, 1),
    ('chunk at huge offset', {20: (IOBTREE, ((((2 ** 70, R(31)),),),))}, 1),
    ('chunk key not an int', {20: (IOBTREE, (((('0', R(31)),),),))}, 1),
    ('chunk value not a reference', {20: (IOBTREE, ((((0, b'inline'),),),))}, 1),
    ('chunk is a ZBlk0', {30: (Z + 'ZBlk0', b'chunk 0')}, 1),
    ('ZData state is an int', {30: (Z + 'ZData', 1)}, 1),
    ('ZData state is a list', {30: (Z + 'ZData', [b'a'])}, 1),
    ('ZData is gone', {30: None}, 1),
    ('chunk bucket keys unsorted', {23: (IOBUCKET, ((6000, R(34), 4096, R(33)),))}, 4),
    ('chunk tree bucket is a ZData', {21: (IOBTREE, ((R(22), 4096, R(33)),))}, 4),
    ('block is a ZData', {4: (LOBUCKET, ((2, R(30), 4, R(13)),))}, 2),
    ('block is a bucket', {4: (LOBUCKET, ((2, R(3), 4, R(13)),))}, 2),
    ('ZBigFile state is an int', {1: (Z + 'ZBigFile', 4096)}, 'file'),
    ('ZBigFile state is (blksize,)', {1: (Z + 'ZBigFile', (BS,))}, 'file'),
    ('ZBigFile blktab is bytes', {1: (Z + 'ZBigFile', (BS, b'\0' * 8))}, 'file'),
    ('ZBigFile blksize is a bool', {1: (Z + 'ZBigFile', (True, R(2)))}, 'file'),
    ('ZBigFile blksize is a str', {1: (Z + 'ZBigFile', ('8192', R(2)))}, 'file'),
    ('ZBigFile blksize is negative', {1: (Z + 'ZBigFile', (-BS, R(2)))}, 'file'),
    ('ZBigFile blksize is 0', {1: (Z + 'ZBigFile', (0, R(2)))}, 'file'),
    ('ZBigFile blksize is huge', {1: (Z + 'ZBigFile', (2 ** 50, R(2)))}, 'file'),
    ('ZBigFile blksize is past any index', {1: (Z + 'ZBigFile', (2 ** 80, R(2)))}, 'file'),
    ('blktab is an OOBTree', {2: ('BTrees.OOBTree.OOBTree', SKELETON[2][1])}, 'file'),
    ('blktab is an IOBTree', {2: (IOBTREE, SKELETON[2][1])}, 'file'),
    ('blktab is a PersistentMapping', {2: ('persistent.mapping.PersistentMapping',
                                           {'data': {0: R(10)}})}, 'file'),
    ('blktab is a ZBlk0', {1: (Z + 'ZBigFile', (BS, R(10)))}, 'file'),
    ('blktab is gone', {2: None}, 'file'),
    ('blktab state is an int', {2: (LOBTREE, 5)}, 'file'),
    ('blktab state is ()', {2: (LOBTREE, ())}, 'file'),
    ('blktab state is ((),)', {2: (LOBTREE, ((),))}, 'file'),
    ('blktab state is (int,)', {2: (LOBTREE, (5,))}, 'file'),
    ('blktab tree of even length', {2: (LOBTREE, ((R(3), 2),))}, 'file'),
    ('blktab tree child not a reference', {2: (LOBTREE, ((R(3), 2, 17),))}, 'file'),
    ('blktab tree keys not ints', {2: (LOBTREE, ((R(3), 2.5, R(4)),))}, 'file'),
    ('blktab tree keys unsorted', {2: (LOBTREE, ((R(3), 9, R(4), 2, R(4)),))}, 'file'),
    ('blktab bucket value not a reference', {3: (LOBUCKET, ((0, b'x', 1, R(11)),))}, 'file'),
    ('blktab bucket odd items', {3: (LOBUCKET, ((0, R(10), 1),))}, 'file'),
    ('blktab bucket keys not ints', {3: (LOBUCKET, ((b'0', R(10)),))}, 'file'),
    ('blktab bucket is gone', {4: None}, 'file'),
    ('blktab tree child is itself', {2: (LOBTREE, ((R(3), 2, R(2)),))}, 'file'),
    ('blktab tree child is a ZBlk0', {2: (LOBTREE, ((R(3), 2, R(10)),))}, 'file'),
    ('blktab tree child is the ZBigFile', {2: (LOBTREE, ((R(3), 2, R(1)),))}, 'file'),
]


@pytest.mark.parametrize('changes, breaks', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_data_is_format_error_for_that_block_or_file(changes, breaks):
    """A broken block gives FormatError (ObjectMissing for a part that is not
    there), the other blocks their data; a file broken as a whole is
    refused, or every block of it is an error."""
    with memory_bound(), time_bound(10):
        refused, blocks = serve(skeleton_loader(changes), 1)
    if breaks == 'file':
        assert refused is not None or all(isinstance(b, ALLOWED) for b in blocks.values()), \
            'file served: %r' % blocks
        return
    assert refused is None, refused
    assert isinstance(blocks[breaks], (zformat.FormatError, zformat.ObjectMissing)), blocks[breaks]
    for blk, want in SKELETON_BLOCKS.items():
        if blk != breaks:
            assert blocks[blk] == want, blk


def test_blktab_of_2000_levels_is_format_error():
    changes = {2: (LOBTREE, ((R(1000),),))}
    for i in range(1000, 3000):
        changes[i] = (LOBTREE, ((R(i + 1),),))
    changes[3000] = (LOBUCKET, ((0, R(10)),))
    with time_bound(10):
        refused, _ = serve(skeleton_loader(changes), 1)
    assert isinstance(refused, zformat.FormatError)


# ---- a small record cannot take much memory or time ----

TESTS = os.path.dirname(os.path.abspath(__file__))
PROBE = textwrap.dedent('''
    import resource, sys, time
    sys.path[:0] = [%r, %r]
    from zrecords import BOMB_CASES, Records, loader_of
    from wcfs_lib.zodb import zformat
    make, call = BOMB_CASES[sys.argv[1]]
    loader = loader_of(Records(make()))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.monotonic()
    try:
        call(loader)
        outcome = 'ok'
    except Exception as e:
        outcome = type(e).__name__
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(outcome, grew // 1024, '%%.1f' %% (time.monotonic() - t), flush=True)
''') % (os.path.dirname(TESTS), TESTS)


@pytest.mark.parametrize('name', list(BOMB_CASES))
def test_small_record_cannot_make_the_decoder_take_memory_or_time(name):
    """Run in a process of its own, with at most 8 GiB of address space, so
    that a decoder that does take the memory fails here, not the machine."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    proc = subprocess.Popen([sys.executable, '-c', PROBE, name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError('%s: decoding did not end within 20 s' % name) from None
    assert proc.returncode == 0, err
    outcome, grew_mib, seconds = out.split()
    assert outcome in ('ok', 'FormatError', 'NotZBigFile'), (name, outcome)
    assert int(grew_mib) < 64, '%s: the decoder grew by %s MiB' % (name, grew_mib)


# ==== through a real mount ====

class RawWriter:
    """Raw records into the zeo fixture's database, through a ClientStorage of its own."""

    def __init__(self, zeo):
        self.storage = ZEO.ClientStorage.ClientStorage(zeo.addr)
        self.pending = {}               # oid -> record

    def oid(self):
        return u64(self.storage.new_oid())

    def new(self, klass, state):
        """A new object of `klass` and `state`, stored at the next commit; -> its oid."""
        oid = self.oid()
        self.pending[oid] = record(klass, state)
        return oid

    def raw(self, data, oid=None):
        """Store `data` as the record of `oid` (a new one by default); -> the oid."""
        oid = self.oid() if oid is None else oid
        self.pending[oid] = data
        return oid

    def commit(self):
        """-> the tid of a transaction storing everything pending."""
        txn = TransactionMetaData()
        self.storage.tpc_begin(txn)
        for oid, data in self.pending.items():
            try:
                serial = self.storage.load(p64(oid))[1]
            except POSKeyError:
                serial = z64
            self.storage.store(p64(oid), serial, data, '', txn)
        self.storage.tpc_vote(txn)
        tid = self.storage.tpc_finish(txn)
        self.pending = {}
        return u64(tid)

    def zblk0(self, state):
        return self.new(Z + 'ZBlk0', state)

    def zblk1(self, chunks, zdata_state=None):
        """A ZBlk1 of chunks {offset: bytes}; zdata_state replaces every chunk's state."""
        flat = ()
        for off, data in sorted(chunks.items()):
            flat += (off, R(self.new(Z + 'ZData', data if zdata_state is None else zdata_state)))
        return self.new(Z + 'ZBlk1', R(self.new(IOBTREE, (((flat,),),))))

    def zbigfile(self, blksize, blocks, blktab_class=LOBTREE):
        """A ZBigFile of {blk: block oid}, blktab one bucket; -> its oid."""
        flat = tuple(x for blk, zblk in sorted(blocks.items()) for x in (blk, R(zblk)))
        return self.new(Z + 'ZBigFile', (blksize, R(self.new(blktab_class, (((flat,),),)))))

    def close(self):
        self.storage.close()


@pytest.fixture
def raw_writer(zeo):
    w = RawWriter(zeo)
    yield w
    w.close()


def errno_of(fn, *args):
    """The errno name of the OSError fn(*args) raises, or None if it returns."""
    try:
        fn(*args)
    except OSError as e:
        return errno.errorcode.get(e.errno, e.errno)
    return None


def read_errno(path):
    """The errno name of opening `path` and reading its first page, or its
    st_size and how many bytes that read gave."""
    try:
        with open(path, 'rb', buffering=0) as f:
            return 'size %d, read %d' % (os.fstat(f.fileno()).st_size, len(f.read(4096)))
    except OSError as e:
        return errno.errorcode.get(e.errno, e.errno)


def wcfs_serves(mnt, good_dir, good_data):
    """wcfs runs, its stats parse, and a sound file reads right."""
    assert mnt.proc.poll() is None, 'wcfs exited'
    st_ = stats(mnt)
    assert int(st_['clients_killed']) == 0
    assert read_bytes(os.path.join(good_dir, 'head', 'data')) == good_data
    assert read_bytes(os.path.join(mnt.path, '.wcfs', 'zurl')).endswith(b'\n')


MBS = 8 * KiB


def test_broken_blocks_through_a_mount_are_EIO_and_wcfs_keeps_serving(zeo, wcfs_mount, raw_writer):
    w = raw_writer
    good = {}           # blk -> data
    broken = {}         # blk -> what is wrong
    blocks = {}         # blk -> block oid

    def put(blk, zblk, data=None, why=None):
        blocks[blk] = zblk
        if why is None:
            good[blk] = data.ljust(MBS, b'\0')
        else:
            broken[blk] = why

    put(0, w.zblk0(b'good 0'), b'good 0')
    put(1, w.zblk0(12345), why='ZBlk0 state is an int')
    put(2, w.zblk1({0: b'a' * 4096, 4096: b'b' * 100}), b'a' * 4096 + b'b' * 100)
    put(3, w.zblk0('text'), why='ZBlk0 state is a str')
    put(4, w.zblk0(b'x' * (MBS + 1)), why='ZBlk0 longer than blksize')
    put(5, w.zblk0(bytes(range(256)) * 32), bytes(range(256)) * 32)
    put(6, w.raw(record(Z + 'ZBlk0', b'data')[:-3]), why='truncated pickle')
    put(7, w.new(Z + 'ZBlk1', b'not a reference'), why='ZBlk1 state is bytes')
    put(8, w.zblk1({0: b'o' * 5000, 4096: b'p' * 10}), why='chunks overlap')
    put(9, w.zblk1({MBS - 100: b'q' * 4096}), why='chunk runs past blksize')
    put(10, w.zblk1({-4096: b'r'}), why='chunk at a negative offset')
    put(11, w.zblk1({0: b's'}, zdata_state=7), why='ZData state is an int')
    put(13, w.oid(), why='block object is not there')
    put(14, w.new('BTrees.OOBTree.OOBTree', None), why='block is an OOBTree')
    put(15, w.raw(b'\x00\xff garbage'), why='not a pickle')
    put(16, w.raw(b'\x80\x03cwendelin.bigfile.file_zodb\nZBlk0\nq\x00.\x80\x03(('),
        why='state pickle cut in a tuple')
    put(17, w.zblk1({MBS - 4096: b'z' * 4096}), b'\0' * (MBS - 4096) + b'z' * 4096)
    good[12] = bytes(MBS)                                   # a hole
    oid = w.zbigfile(MBS, blocks)

    # files broken as a whole
    whole = {
        'blktab is an OOBTree': w.zbigfile(MBS, {0: w.zblk0(b'a')}, 'BTrees.OOBTree.OOBTree'),
        'ZBigFile state is an int': w.new(Z + 'ZBigFile', 4096),
        'ZBigFile state is a 3-tuple': w.new(Z + 'ZBigFile', (4096, R(w.oid()), 1)),
        'blktab is not there': w.new(Z + 'ZBigFile', (MBS, R(w.oid()))),
        'blktab is a ZBlk0': w.new(Z + 'ZBigFile', (MBS, R(w.zblk0(b'a')))),
        'blksize is 2**50': w.zbigfile(2 ** 50, {0: w.zblk0(b'huge')}),
        'blksize is 2**80': w.zbigfile(2 ** 80, {0: w.zblk0(b'huger')}),
        'the only block number is negative': w.zbigfile(MBS, {-3: w.zblk0(b'neg')}),
        'block number 2**62': w.zbigfile(MBS, {2 ** 62: w.zblk0(b'far')}),
    }
    w.commit()

    zw = Writer(zeo.db())
    sound = zbig.ZBigFile(MBS)
    sound.write_block(0, b'sound file', 'ZBlk1')
    sound_oid, _ = zw.add(sound)

    mnt = wcfs_mount(zeo.zurl)
    sound_dir = mnt.bigfile(sound_oid)
    fdir = mnt.bigfile(oid)
    data = os.path.join(fdir, 'head', 'data')

    def check_blocks():
        fd = os.open(data, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)     # one block a request
            assert os.fstat(fd).st_size == 18 * MBS
            for blk in range(18):
                if blk in broken:
                    assert errno_of(os.pread, fd, MBS, blk * MBS) == 'EIO', broken[blk]
                    assert errno_of(os.pread, fd, 10, blk * MBS + 4097) == 'EIO', broken[blk]
                else:
                    assert os.pread(fd, MBS, blk * MBS) == good[blk], blk
        finally:
            os.close(fd)

    for _ in range(2):                  # the second time, good blocks come from the cache
        check_blocks()
    log = mnt.log()
    assert log.count('read bigfile/%s' % hex16(oid)) >= len(broken), 'EIOs are logged'
    wcfs_serves(mnt, sound_dir, sound.read())

    outcomes = {}
    for why, foid in whole.items():
        path = os.path.join(mnt.path, 'bigfile', hex16(foid))
        e = errno_of(os.mkdir, path)
        if e is None:
            e = 'read ' + read_errno(os.path.join(path, 'head', 'data'))
        outcomes[why] = e
        wcfs_serves(mnt, sound_dir, sound.read())

    # the broken file still follows the database
    good[5] = b'rewritten 5'.ljust(MBS, b'\0')
    w.raw(record(Z + 'ZBlk0', b'rewritten 5'), oid=blocks[5])
    tid = w.commit()
    wait_for(lambda: head_at(fdir) == tid, 10, 'head/at of the broken file to move')
    check_blocks()
    wcfs_serves(mnt, sound_dir, sound.read())

    print('files broken as a whole:', outcomes)
    # mkdir refuses the file (EINVAL; ENOENT where a part is not there), or it gives EIO
    assert {why: e for why, e in outcomes.items()
            if e not in ('EINVAL', 'ENOENT', 'read EIO')} == {}, outcomes


NAME_BYTES = st.binary(min_size=1, max_size=1500).filter(
    lambda b: b'/' not in b and b'\0' not in b)
NAMES = st.one_of(NAME_BYTES,
                  st.from_regex(rb'\A@?[0-9a-fA-F]{14,18}\Z'),
                  st.sampled_from([b'.', b'..', b'head', b'@', b'@.', b'\xff' * 255, b'0' * 16,
                                   b'f' * 16, b'@' + b'f' * 16] +
                                  [b'x' * n for n in (255, 256, 1024, 1025, 4096)]))


def test_names_of_any_length_and_bytes_give_errnos_and_wcfs_keeps_serving(zeo, wcfs_mount):
    zw = Writer(zeo.db())
    f = zbig.ZBigFile(MBS)
    f.write_block(0, b'named')
    oid, tid = zw.add(f)
    mnt = wcfs_mount(zeo.zurl)
    fdir = mnt.bigfile(oid).encode()
    bigfile = os.path.join(mnt.path, 'bigfile').encode()
    rev = b'@' + hex16(tid).encode()
    os.mkdir(os.path.join(fdir, rev))
    seen = {}

    def outcome(fn, path):
        e = errno_of(fn, path)
        seen.setdefault(e, path)
        return e

    @settings(max_examples=300, deadline=None)
    @given(name=NAMES)
    def check(name):
        # mkdir bigfile/NAME: names that are not an oid are EINVAL, oids not there ENOENT
        too_long = {'ENAMETOOLONG'} if len(name) > 255 else set()
        e = outcome(os.mkdir, os.path.join(bigfile, name))
        if name in (b'.', b'..', hex16(oid).encode()):
            assert e == 'EEXIST'
        else:
            assert e in {'EINVAL', 'ENOENT'} | too_long, (name, e)
        # mkdir bigfile/<oid>/NAME: EPERM without @, EINVAL for @ and not a tid
        e = outcome(os.mkdir, os.path.join(fdir, name))
        if name in (b'.', b'..', b'head', rev):
            assert e == 'EEXIST'
        elif not name.startswith(b'@'):
            assert e in {'EPERM'} | too_long, (name, e)
        elif not re.fullmatch(rb'@[0-9a-f]{16}', name):
            assert e in {'EINVAL'} | too_long, (name, e)
        else:
            assert e in (None, 'ENOENT'), (name, e)     # a tid: made, or not a revision
        # lookups: nothing is there but what was made
        for parent in (bigfile, fdir, os.path.join(fdir, b'head'), os.path.join(fdir, rev),
                       os.path.join(mnt.path.encode(), b'.wcfs')):
            e = outcome(os.stat, os.path.join(parent, name))
            if e is None:
                assert name in (b'.', b'..') or name in os.listdir(parent), (parent, name)
            else:
                assert e in ('ENOENT', 'ENAMETOOLONG'), (parent, name, e)

    check()
    print('errnos seen (one path each):', seen)
    assert mnt.proc.poll() is None
    assert read_bytes(os.path.join(fdir.decode(), 'head', 'data')) == f.read()
    assert int(stats(mnt)['bigfiles']) == 1


def test_blktab_of_shared_nodes_does_not_stall_other_files(zeo, wcfs_mount, raw_writer):
    """A blktab whose tree nodes point twice at one child (2**40 paths
    through 40 nodes): mkdir of it must not take wcfs from the other files."""
    w = raw_writer
    zblk = w.zblk0(b'shared')
    node = w.new(LOBUCKET, ((0, R(zblk), 1, R(zblk)),))
    for _ in range(40):
        node = w.new(LOBTREE, ((R(node), 1, R(node)),))
    dag = w.new(Z + 'ZBigFile', (MBS, R(node)))
    w.commit()
    zw = Writer(zeo.db())
    f = zbig.ZBigFile(MBS)
    f.write_block(0, b'before')
    oid, _ = zw.add(f)
    mnt = wcfs_mount(zeo.zurl)
    fdir = mnt.bigfile(oid)

    result = []

    def mkdir_dag():
        result.append(errno_of(os.mkdir, os.path.join(mnt.path, 'bigfile', hex16(dag))))

    t = threading.Thread(target=mkdir_dag, daemon=True)   # ends at the latest with the mount
    t.start()
    time.sleep(0.5)
    f.write_block(0, b'after')
    tid = zw.commit()
    moved = True
    try:
        wait_for(lambda: head_at(fdir) == tid, 10, 'head/at of another file to move')
    except AssertionError:
        moved = False
    t.join(10)
    assert moved, 'mkdir of the DAG file stalled the watcher: head/at of another file did not move'
    assert not t.is_alive(), 'mkdir of the DAG file did not end within 20 s'
    assert result[0] in ('EINVAL', 'EIO'), result
    assert read_bytes(os.path.join(fdir, 'head', 'data')) == f.read()


def test_want_of_an_old_cat_on_a_file_with_a_broken_block_is_answered(zeo, wcfs_mount,
                                                                       raw_writer):
    """δR back to a Cat from before the file was made visible is computed from
    the database; a broken block there must not fail the client's write
    (SPEC §4.5: write accepts every byte; a want gets `have` or `error`)."""
    w = raw_writer
    oid = w.zbigfile(MBS, {0: w.zblk0(b'good'), 1: w.raw(b'not a pickle')})
    cat = w.commit()
    w.zblk0(b'another object')
    w.commit()
    mnt = wcfs_mount(zeo.zurl)
    fdir = mnt.bigfile(oid)
    with Chan(fdir) as ch:
        assert errno_of(ch.send, 'want %016x' % cat) is None, 'write of want failed'
        reply = ch.readline()
        assert reply.startswith(('have ', 'error ')), reply
        if reply.startswith('have '):
            ch.ack()
        assert errno_of(ch.send, 'want %016x' % head_at(fdir)) is None
        assert ch.readline().startswith(('have ', 'error '))
    assert mnt.proc.poll() is None
