"""Prefetch's parts without a mount: telling sequential reads (ReadStream),
the bounds of prefetched blocks (BlockCache.reserve / fill), and block
records decoded without copying their bytes (zformat.decode_data_record)."""

import ctypes
import pickle
import struct
import threading

import pytest

from wcfs_lib import zformat
from wcfs_lib.blockcache import BlockCache
from wcfs_lib.blockdata import BlockData, Reply
from wcfs_lib.prefetch import ReadStream

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


def test_reserve_bounds_the_bytes_prefetched_and_not_read():
    cache = BlockCache(max_bytes=8 * BS, max_inflight=8 * BS, max_ahead=3 * BS)
    assert [cache.reserve(('f', 1, blk), BS) for blk in range(5)] == [True] * 3 + [False] * 2
    assert not cache.reserve(('f', 1, 0), BS)           # loading already
    for blk in range(3):
        cache.fill(('f', 1, blk), BS, lambda: BlockData(b'x'))
    assert not cache.reserve(('f', 1, 3), BS)           # kept, not read: still ahead
    assert cache.get(('f', 1, 0), BS, lambda: pytest.fail('loaded twice')).buf == b'x'
    assert cache.reserve(('f', 1, 3), BS)               # a read made room
    assert cache.unused == 0


def test_a_reader_waits_for_the_prefetch_of_its_block():
    cache = BlockCache()
    key = ('f', 1, 7)
    assert cache.reserve(key, BS)
    got = []
    reader = threading.Thread(target=lambda: got.append(cache.get(key, BS, lambda: 'again')))
    reader.start()
    reader.join(0.05)
    assert reader.is_alive() and not got        # waits for the load in flight
    cache.fill(key, BS, lambda: 'prefetched')
    reader.join(10)
    assert got == ['prefetched']


def test_a_failed_prefetch_lets_the_reader_load_and_fail_itself():
    cache = BlockCache(max_ahead=BS)
    key = ('f', 1, 0)
    assert cache.reserve(key, BS)

    def broken():
        raise RuntimeError('database away')

    with pytest.raises(RuntimeError):
        cache.fill(key, BS, broken)
    assert cache.get(key, BS, lambda: 'loaded by the reader') == 'loaded by the reader'
    assert cache.reserve(('f', 1, 1), BS)               # the failed one no longer counts


def test_prefetched_blocks_evicted_unread_are_counted():
    cache = BlockCache(max_bytes=2 * BS, max_ahead=4 * BS)
    for blk in range(4):
        assert cache.reserve(('f', 1, blk), BS)
        cache.fill(('f', 1, blk), BS, lambda: 'data')
    assert cache.unused == 2


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
