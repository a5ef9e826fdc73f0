"""Prefetch's parts without a mount: telling sequential reads (ReadStream),
the bounds of prefetched blocks (BlockCache.reserve / fill), and block
records decoded without copying their bytes (zformat.decode_data_record)."""

import ctypes
import pickle
import struct
import threading
import time

import pytest

from wcfs_lib.zodb import zformat
from wcfs_lib.files.blockcache import BlockCache
from wcfs_lib.zodb.blockdata import BlockData
from wcfs_lib.files.reply import Reply
from wcfs_lib.files.prefetch import ReadStream

BS = 1 << 20
CLASS = b'\x80\x03cwendelin.bigfile.file_zodb\nZBlk0\nq\x00.'


@pytest.mark.parametrize('reads, want', [
    # the kernel's readahead through blocks 0, 1, 2, 3: from block 2 on, the
    # reader came through a whole block: prefetch after the run
    ([(0, 256 << 10), (256 << 10, BS), (BS, 2 * BS), (2 * BS, 3 * BS), (3 * BS, 4 * BS)],
     [None, None, None, 3, 4]),
    # the read of one block, even into the next (a page the page cache
    # lost), never calls for prefetch (precision)
    ([(5 * BS, 5 * BS + 4096), (5 * BS + 4096, 6 * BS), (6 * BS, 6 * BS + 4096)],
     [None, None, None]),
    # the block before entered from its previous byte: a run through it
    ([(5 * BS - 4096, 5 * BS + 4096), (5 * BS + 4096, 6 * BS + 4096)], [None, 7]),
    # random reads, even of neighbouring blocks
    ([(3 * BS, 3 * BS + 4096), (4 * BS + 8192, 4 * BS + 12288), (2 * BS, 2 * BS + 4096),
      (5 * BS - 4096, 5 * BS)], [None] * 4),
    # reads arriving out of order make the same run
    ([(2 * BS, 3 * BS), (0, BS), (3 * BS, 4 * BS), (BS, 2 * BS)], [None, None, None, 4]),
])
def test_read_stream_tells_sequential_reads(reads, want):
    stream = ReadStream()
    assert [stream.note(lo, hi, BS) for lo, hi in reads] == want


def _found(cid):
    return lambda: cid


def _loaded(data, lo=0, hi=1 << 62):
    return lambda cid: (data, (lo, hi), (cid[0],))


def _fill(cache, key, data):
    cache.fill(key, key[1], BS, _found(key), _loaded(data))


def _get(cache, key, load, uid=None):
    return cache.get(key, key[1], BS, _found(key), load, uid)


def test_reserve_bounds_the_bytes_prefetched_and_not_read():
    cache = BlockCache(max_bytes=8 * BS, max_inflight=8 * BS, max_ahead=3 * BS, max_user=8 * BS)
    assert [cache.reserve(('f', 1, blk), BS) for blk in range(5)] == [True] * 3 + [False] * 2
    assert not cache.reserve(('f', 1, 0), BS)           # loading already
    for blk in range(3):
        _fill(cache, ('f', 1, blk), BlockData(b'x'))
    assert not cache.reserve(('f', 1, 3), BS)           # kept, not read: still ahead
    assert _get(cache, ('f', 1, 0), lambda cid: pytest.fail('loaded twice')).buf == b'x'
    assert cache.reserve(('f', 1, 3), BS)               # a read made room
    assert cache.unused == 0


def test_a_reader_waits_for_the_prefetch_of_its_block():
    cache = BlockCache()
    key = ('f', 1, 7)
    assert cache.reserve(key, BS)
    got = []
    reader = threading.Thread(target=lambda: got.append(_get(cache, key, _loaded('again'))))
    reader.start()
    reader.join(0.05)
    assert reader.is_alive() and not got        # waits for the load in flight
    _fill(cache, key, 'prefetched')
    reader.join(10)
    assert got == ['prefetched']


def test_a_failed_prefetch_lets_the_reader_load_and_fail_itself():
    cache = BlockCache(max_ahead=BS)
    key = ('f', 1, 0)
    assert cache.reserve(key, BS)

    def broken(cid):
        raise RuntimeError('database away')

    with pytest.raises(RuntimeError):
        cache.fill(key, 1, BS, _found(key), broken)
    assert _get(cache, key, _loaded('loaded by the reader')) == 'loaded by the reader'
    assert cache.reserve(('f', 1, 1), BS)               # the failed one no longer counts


def test_prefetched_blocks_evicted_unread_are_counted():
    cache = BlockCache(max_bytes=2 * BS, max_ahead=4 * BS)
    for blk in range(4):
        assert cache.reserve(('f', 1, blk), BS)
        _fill(cache, ('f', 1, blk), 'data')
    assert cache.unused == 2


def test_revisions_whose_records_are_the_same_share_one_load():
    # revision keys (file, at, blk) of one ZBlk, loaded as of 20 and found
    # the same over [10, 30]: revisions in the span share it, others load
    cache = BlockCache()
    loads = []

    def load(data, lo=0, hi=0):
        def run(cid):
            loads.append(data)
            return data, (lo, hi), (cid,)
        return run

    def read(at, load, zblk=7):
        return cache.get(('f', at, 0), at, BS, lambda: zblk, load)

    assert read(20, load('v1', 10, 30)) == 'v1'
    assert read(10, load('no')) == read(30, load('no')) == 'v1'
    assert read(31, load('v2', 31, 40)) == 'v2'             # past the span
    assert read(25, load('v3', 10, 30), zblk=8) == 'v3'     # another ZBlk as of 25
    assert read(35, load('no')) == 'v2'
    assert loads == ['v1', 'v2', 'v3']


def test_overlapping_spans_of_one_zblk_are_one_block():
    cache = BlockCache()
    cache.get(('f', 5, 0), 5, BS, lambda: 7, lambda cid: ('a', (1, 5), ()))
    cache.get(('f', 9, 0), 9, BS, lambda: 7, lambda cid: ('b', (1, 9), ()))
    assert cache.cached_bytes() == BS
    assert cache.get(('f', 3, 0), 3, BS, lambda: 7, lambda cid: pytest.fail('loaded')) == 'a'


def test_two_of_the_largest_blocks_stay_kept():
    # reads interleaved between two blocks larger than the base bound load
    # each once; trim() gives the memory back once they are unused
    big = 64 * BS
    cache = BlockCache(max_bytes=32 * BS)
    loads = []

    def read(blk):
        return cache.get(('f', 1, blk), 1, big, lambda: blk,
                         lambda cid: (loads.append(cid) or cid, (0, 1), ()))

    for _ in range(6):
        assert (read(0), read(1)) == (0, 1)
    assert loads == [0, 1]
    assert cache.cached_bytes() == 2 * big
    cache.trim(time.monotonic() + 3600)
    assert cache.cached_bytes() == 0


def test_a_user_with_many_loads_waiting_does_not_delay_another_users_load():
    # uid 1 keeps 8 loads waiting behind its one in flight; uid 2's load is
    # next as soon as room comes back, and runs beside uid 1's
    cache = BlockCache(max_inflight=2 * BS, max_user=BS)
    release = threading.Event()
    started = []

    def load(name):
        def run(cid):
            started.append(name)
            release.wait(10)
            return name, (0, 1), ()
        return run

    threads = [threading.Thread(target=cache.get, args=(('a', 1, blk), 1, BS, lambda blk=blk: blk,
                                                        load('a%d' % blk), 1))
               for blk in range(9)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(started) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    other = threading.Thread(target=cache.get, args=(('b', 1, 0), 1, BS, lambda: 'b',
                                                     load('b'), 2))
    other.start()
    while len(started) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert started == ['a0', 'b']       # not one more of uid 1's first
    release.set()
    for t in threads + [other]:
        t.join(10)
    assert sorted(started) == sorted(['a%d' % i for i in range(9)] + ['b'])


def _records(data):
    """The state pickle of `data` in the forms a database holds."""
    n = len(data)
    py2 = (b'U' + bytes([n]) if n < 256 else b'T' + struct.pack('<i', n)) + data
    return {
        'protocol 3 bytes': pickle.dumps(data, 3),
        'protocol 3 bytes, no memo': b'\x80\x03B' + struct.pack('<I', n) + data + b'.',
        'python 2 str': b'\x80\x02' + py2 + b'q\x01.',
        'protocol 2 bytes (codecs)': pickle.dumps(data, 2),
    }


def test_decode_data_record_refuses_what_the_unpickler_refuses():
    record = CLASS + b'\x80\x04\x8e' + struct.pack('<Q', 3) + b'abc' + b'\x94.'
    with pytest.raises(ValueError):
        zformat.decode_data_record(record)


@pytest.mark.parametrize('size', [0, 10, 300, 70000])
def test_decode_data_record_gives_the_state_without_copying_it(size):
    data = bytes(range(256)) * (size // 256) + b'z' * (size % 256)
    for form, state in _records(data).items():
        record = CLASS + state
        klass, block = zformat.decode_data_record(record)
        assert klass == 'wendelin.bigfile.file_zodb.ZBlk0', form
        got = bytes(block.view()) if isinstance(block, BlockData) else block
        assert got == data == zformat.decode_record(record)[1], form
        if form.startswith(('protocol 3', 'python 2')):
            assert block.buf is record, form        # a view of the record, no copy


def test_reply_pads_short_blocks_with_zeros():
    reply = Reply()
    reply.add(BlockData(b'..abcdef', 2), 1, 9)          # 'bcdef' then 3 zeros
    reply.add(BlockData(bytearray(b'xy')), 0, 2)
    assert len(reply) == 10
    buf = (ctypes.c_char * 11).from_buffer_copy(b'\xff' * 11)
    reply.copy_to(ctypes.addressof(buf))
    assert buf.raw == b'bcdef\0\0\0xy\xff'           # and nothing past it


def test_a_span_is_where_every_record_of_a_block_holds():
    # records read as of 20: where each holds, intersected; a record with
    # no next revision holds up to `current` only when read fresh
    span = zformat.Span(current=50)
    span.add(20, 10, None, fresh=True)
    assert (span.lo, span.hi) == (10, 50)
    span.add(20, 15, 31)                # a chunk tree node, rewritten at 31
    assert (span.lo, span.hi) == (15, 30)
    span.add(20, 5, None)               # a ZData from a cache: known as of 20
    assert (span.lo, span.hi) == (15, 20)
