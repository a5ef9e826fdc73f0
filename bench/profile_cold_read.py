"""Where the time of a cold read goes: each stage of the read path alone, in
seconds per GiB, on one file in one ZEO server (no ratio, no target: a
profile to read next to bench_cold_read.py).

Stages, each measured over every block of the file:

    loadBefore        ClientStorage.loadBefore of each block's record, one
                      thread, a fresh client (cold client cache): the
                      database's limit for one reader (bench_cold_read's raw)
    loadBefore fresh  the same past ZEO's client cache (what wcfs does for
                      block records): no 2 MiB write into the cache file
    ... 4 threads     the same by 4 threads at once (wcfs's prefetch)
    unpickle          zformat.decode_record of each record: the state's
                      bytes copied out of the record (wcfs before issue 11)
    decode            zformat.decode_data_record: the state is a view of the
                      record, nothing copied (wcfs now)
    slice             the 1 MiB pieces a FUSE read took out of a decoded
                      block as bytes (before issue 11)
    memmove           copying 1 MiB pieces into a ctypes buffer: the one copy
                      left, into libfuse's buffer
    wcfs              the whole path through a fresh mount: mkdir, then a
                      sequential read of head/data in 1 MiB pieces; with the
                      CPU seconds of the wcfs process and of the ZEO server

    python bench/profile_cold_read.py [--size MiB]
"""

import ctypes
import functools
import os
import threading
import time

import ZEO.ClientStorage
from ZODB.utils import p64, u64

import common
from common import CHUNK, MiB
from wcfs_lib.zodb import zformat, zstorage

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


def time_loadbefore(addr, at, zblks, fresh=False, nthreads=1):
    storage = ZEO.ClientStorage.ClientStorage(addr)
    try:
        before = p64(at + 1)
        if fresh:
            load = functools.partial(storage._call, 'loadBefore')     # ZEO-private
        else:
            load = storage.loadBefore
        todo = iter(zblks)
        lock = threading.Lock()

        def work():
            while True:
                with lock:
                    zblk = next(todo, None)
                if zblk is None:
                    return
                load(p64(zblk), before)

        threads = [threading.Thread(target=work) for _ in range(nthreads)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0
    finally:
        storage.close()


def time_decode_and_slices(addr, at, zblks):
    """-> seconds of (unpickle, decode, slice, memmove) over all blocks."""
    storage, loader = fresh_loader(addr)
    buf = (ctypes.c_char * CHUNK)()
    t_unpickle = t_dec = t_slice = t_move = 0.0
    try:
        for zblk in zblks:
            data, _serial = loader.record(zblk, at)
            t0 = time.perf_counter()
            _klass, state = zformat.decode_record(data)
            t1 = time.perf_counter()
            _klass, block = zformat.decode_data_record(data)
            t2 = time.perf_counter()
            pieces = [state[i:i + CHUNK] for i in range(0, len(state), CHUNK)]
            t3 = time.perf_counter()
            addr = block.address()
            for i in range(0, block.length, CHUNK):
                ctypes.memmove(buf, addr + i, min(CHUNK, block.length - i))
            t4 = time.perf_counter()
            assert len(pieces[0]) == CHUNK
            t_unpickle += t1 - t0
            t_dec += t2 - t1
            t_slice += t3 - t2
            t_move += t4 - t3
        return t_unpickle, t_dec, t_slice, t_move
    finally:
        storage.close()


def cpu_seconds(pid):
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def time_wcfs(b, oid, size):
    """-> (seconds, CPU seconds of wcfs, CPU seconds of the ZEO server)."""
    mnt = b.mount()
    try:
        t0 = time.perf_counter()
        c0, s0 = cpu_seconds(mnt.proc.pid), cpu_seconds(b.server.proc.pid)
        path = os.path.join(mnt.bigfile(oid), 'head', 'data')
        n, _ = common.read_all(path, bytearray(CHUNK))
        assert n == size, 'head/data: read %d bytes, want %d' % (n, size)
        return (time.perf_counter() - t0, cpu_seconds(mnt.proc.pid) - c0,
                cpu_seconds(b.server.proc.pid) - s0)
    finally:
        b.unmount(mnt)


def main():
    args = common.parse_args(__doc__.splitlines()[0], default_size=1024)
    size = args.size * MiB
    per = GiB / size
    with common.Bench('profile cold read') as b:
        oid = b.write_bigfile(size)
        b.close_db()
        at, zblks = block_oids(b.addr, oid)
        rows = [('loadBefore', time_loadbefore(b.addr, at, zblks)),
                ('loadBefore fresh', time_loadbefore(b.addr, at, zblks, fresh=True)),
                ('... 4 threads', time_loadbefore(b.addr, at, zblks, fresh=True, nthreads=4))]
        rows += zip(('unpickle', 'decode', 'slice', 'memmove'),
                    time_decode_and_slices(b.addr, at, zblks))
        t_wcfs, cpu_wcfs, cpu_zeo = time_wcfs(b, oid, size)
        rows.append(('wcfs', t_wcfs))
    for name, t in rows:
        print('%-17s %6.3f s/GiB  (%6.0f MiB/s)' % (name, t * per, size / MiB / t))
    print('wcfs: %.3f CPU s/GiB in wcfs, %.3f in the ZEO server'
          % (cpu_wcfs * per, cpu_zeo * per))
    print('profile: %d MiB in %d blocks; kernel %s' % (args.size, len(zblks), common.kernel()))


if __name__ == '__main__':
    main()
