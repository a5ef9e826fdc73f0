"""Where the time of a cold read goes: each stage of the read path alone, in
seconds per GiB, on one file in one ZEO server (no ratio, no target: a
profile to read next to bench_cold_read.py).

Stages, each measured over every block of the file:

    loadBefore   ClientStorage.loadBefore of each block's record, one thread,
                 a fresh client (cold client cache): the database's limit
    unpickle     zformat.decode_record of each record (the state's bytes copied
                 out of the record by the unpickler)
    load_block   ZLoader.load_block as wcfs calls it, with a fresh client
                 (loadBefore + decode + zero padding)
    slice        the 1 MiB pieces a FUSE read takes out of a decoded block
    memmove      copying 1 MiB pieces into a ctypes buffer (what mfusepy does
                 with the bytes a read handler returns)
    wcfs         the whole path through a fresh mount: mkdir, then a
                 sequential read of head/data in 1 MiB pieces

    python bench/profile_cold_read.py [--size MiB]
"""

import ctypes
import os
import time

import ZEO.ClientStorage
from ZODB.utils import p64, u64

import common
from common import CHUNK, MiB
from wcfs_lib import zformat, zstorage

GiB = 1 << 30


def block_oids(addr, oid):
    """-> (tid, [oid of each block's ZBlk]) of the ZBigFile `oid`."""
    storage = ZEO.ClientStorage.ClientStorage(addr)
    try:
        loader = zformat.ZLoader(zstorage.Records(storage))
        at = u64(storage.lastTransaction())
        head = loader.zbigfile(oid, at)
        return at, [zblk for _blk, zblk in loader.walk(head.blktab, at)]
    finally:
        storage.close()


def fresh_loader(addr):
    storage = ZEO.ClientStorage.ClientStorage(addr)
    return storage, zformat.ZLoader(zstorage.Records(storage))


def time_loadbefore(addr, at, zblks):
    storage = ZEO.ClientStorage.ClientStorage(addr)
    try:
        before = p64(at + 1)
        n = 0
        t0 = time.perf_counter()
        for zblk in zblks:
            n += len(storage.loadBefore(p64(zblk), before)[0])
        return time.perf_counter() - t0, n
    finally:
        storage.close()


def time_unpickle_and_slices(addr, at, zblks):
    """-> seconds of (unpickle, slice, memmove) over all blocks."""
    storage, loader = fresh_loader(addr)
    buf = (ctypes.c_char * CHUNK)()
    t_dec = t_slice = t_move = 0.0
    try:
        for zblk in zblks:
            data, _serial = loader.record(zblk, at)
            t0 = time.perf_counter()
            _klass, state = zformat.decode_record(data)
            t1 = time.perf_counter()
            pieces = [state[i:i + CHUNK] for i in range(0, len(state), CHUNK)]
            t2 = time.perf_counter()
            for piece in pieces:
                ctypes.memmove(buf, piece, len(piece))
            t3 = time.perf_counter()
            t_dec += t1 - t0
            t_slice += t2 - t1
            t_move += t3 - t2
        return t_dec, t_slice, t_move
    finally:
        storage.close()


def time_load_block(addr, at, zblks):
    storage, loader = fresh_loader(addr)
    try:
        t0 = time.perf_counter()
        for zblk in zblks:
            loader.load_block(zblk, at, common.BLKSIZE)
        return time.perf_counter() - t0
    finally:
        storage.close()


def time_wcfs(b, oid, size):
    mnt = b.mount()
    try:
        t0 = time.perf_counter()
        path = os.path.join(mnt.bigfile(oid), 'head', 'data')
        n, _ = common.read_all(path, bytearray(CHUNK))
        assert n == size, 'head/data: read %d bytes, want %d' % (n, size)
        return time.perf_counter() - t0
    finally:
        b.unmount(mnt)


def main():
    args = common.parse_args(__doc__.splitlines()[0], default_size=1024)
    size = args.size * MiB
    with common.Bench('profile cold read') as b:
        oid = b.write_bigfile(size)
        b.close_db()
        at, zblks = block_oids(b.addr, oid)
        t_load, n = time_loadbefore(b.addr, at, zblks)
        t_dec, t_slice, t_move = time_unpickle_and_slices(b.addr, at, zblks)
        t_block = time_load_block(b.addr, at, zblks)
        t_wcfs = time_wcfs(b, oid, size)
    per = GiB / size
    for name, t in (('loadBefore', t_load), ('unpickle', t_dec), ('load_block', t_block),
                    ('slice', t_slice), ('memmove', t_move), ('wcfs', t_wcfs)):
        print('%-11s %6.3f s/GiB  (%5.0f MiB/s)' % (name, t * per, size / MiB / t))
    print('profile: %d MiB in %d blocks (%d bytes of records); kernel %s'
          % (args.size, len(zblks), n, common.kernel()))


if __name__ == '__main__':
    main()
