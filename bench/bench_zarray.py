"""ZBigArrays through wcfs (issue 17): a whole ZBigArray read as the numpy
array `client.asarray` gives, against its ZBigFile's head/data read with
numpy.memmap in the same run; cold (a fresh wcfs mount each run, the same
ZEO server) and warm (all in the page cache). Target: ratio >= 0.9 both.

"Read" is the same numpy reduction over both arrays (the sum of the array
viewed as uint64), so every page is touched once, in order. Cold runs are
timed from opening a fresh ZODB connection (asarray) or from mkdir
bigfile/<oid> (memmap) to the end of the sum; they alternate, best of 3 each.
"""

import os
import time

import numpy
import transaction
from ZODB.utils import u64

import common
from common import BLKSIZE, COMMIT_EVERY, MiB
from wcfs_lib import client, zbig

RUNS = 3
TARGET = 0.9


def write_array(b, size):
    """Commit root['A'], a ZBigArray of size bytes (uint64, 2 MiB blocks of
    random bytes); -> the oid of its ZBigFile."""
    zbig.install()
    conn = b.db().open()
    try:
        a = conn.root()['A'] = zbig.ZBigArray((0,), 'uint64', blksize=BLKSIZE)
        pending = 0
        for _ in range(size // BLKSIZE):
            a.append(numpy.frombuffer(common.block_data(), 'uint64'))
            pending += BLKSIZE
            if pending >= COMMIT_EVERY:
                transaction.commit()
                conn.cacheMinimize()
                pending = 0
        transaction.commit()
        return u64(a.zfile._p_oid)
    finally:
        conn.close()


def read_asarray(b, mnt, size):
    """-> (seconds, sum) for a fresh ZODB connection's asarray of root['A']."""
    db = b.new_db()
    try:
        with client.connect(mnt.path) as wc:
            t0 = time.perf_counter()
            conn = db.open(transaction.TransactionManager())
            a = client.asarray(conn.root()['A'], wc=wc)
            total = int(a.view('uint64').sum())
            t = time.perf_counter() - t0
            assert a.nbytes == size, 'asarray: %d bytes, want %d' % (a.nbytes, size)
            del a
            conn.close()
        return t, total
    finally:
        db.close()


def read_memmap(mnt, oid, size):
    """-> (seconds, sum) for numpy.memmap of head/data."""
    t0 = time.perf_counter()
    a = numpy.memmap(os.path.join(mnt.bigfile(oid), 'head', 'data'), 'uint64', 'r')
    total = int(a.sum())
    t = time.perf_counter() - t0
    assert a.nbytes == size, 'memmap: %d bytes, want %d' % (a.nbytes, size)
    return t, total


def cold(b, oid, size, name):
    mnt = b.mount()
    try:
        return read_asarray(b, mnt, size) if name == 'asarray' else read_memmap(mnt, oid, size)
    finally:
        b.unmount(mnt)


def measure(size, runs, read):
    """-> {name: best MiB/s} of read(name) for asarray and memmap, alternating;
    the sums of both must agree."""
    best, sums = {'asarray': 0.0, 'memmap': 0.0}, set()
    for run in range(runs):
        for name in best:
            t, total = read(name)
            sums.add(total)
            speed = common.mibps(size, t)
            best[name] = max(best[name], speed)
            print('run %d %-8s %7.0f MiB/s' % (run + 1, name, speed))
    assert len(sums) == 1, 'the two reads disagree: sums %s' % sorted(sums)
    return best


def report(what, args, best):
    ratio = best['asarray'] / best['memmap']
    print('zarray %s read: %s, %d MiB, best of %d: asarray %.0f MiB/s, memmap of head/data '
          '%.0f MiB/s, ratio %.2f (target >= %.1f: %s); kernel %s'
          % (what, args.db, args.size, RUNS, best['asarray'], best['memmap'], ratio, TARGET,
             common.verdict(ratio >= TARGET), common.kernel()))


def main():
    args = common.parse_args(__doc__.splitlines()[0], default_size=1024, db_option=True)
    size = args.size * MiB
    with common.Bench('zarray', db=args.db) as b:
        oid = write_array(b, size)
        b.close_db()
        cold_best = measure(size, RUNS, lambda name: cold(b, oid, size, name))
        mnt = b.mount()
        try:
            read_memmap(mnt, oid, size)             # everything into the page cache
            warm_best = measure(size, RUNS, lambda name: read_asarray(b, mnt, size)
                                if name == 'asarray' else read_memmap(mnt, oid, size))
        finally:
            b.unmount(mnt)
    report('cold', args, cold_best)
    report('warm', args, warm_best)


if __name__ == '__main__':
    main()
