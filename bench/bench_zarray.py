"""ZBigArrays through wcfs (issue 17): a whole ZBigArray read as the numpy
array `client.asarray` gives, against its ZBigFile's head/data read with
numpy.memmap in the same run; cold (a fresh wcfs mount each run, the same
ZEO server) and warm (all in the page cache). Target: ratio >= 0.9 both.

Also, cold, against the real wendelin.core 0.13 reading the same ZBigArray
in its own process (Python 3.7, .venv37: devtools/wendelin37.py) from the
same ZEO server: a fresh process each run, timed from opening its
connection to the end of the same sum. Target: asarray / wendelin.core >= 3.

Last, a sparse ZBigArray of 16 GiB (a few blocks written): the time of
asarray on a fresh mount, from the call to the array, and how much the
process's RSS grew. Targets: <= 0.5 s, < 10 MiB.

"Read" is the same numpy reduction over both arrays (the sum of the array
viewed as uint64), so every page is touched once, in order. Cold runs are
timed from opening a fresh ZODB connection (asarray) or from mkdir
bigfile/<oid> (memmap) to the end of the sum; warm runs from asarray on a
connection that made one before (or from opening head/data) to the end of
the sum. Runs alternate, best of 3 each.
"""

import os
import time

import numpy
import transaction
from ZODB.utils import u64

import common
from common import BLKSIZE, COMMIT_EVERY, MiB
from devtools import wendelin37
from wcfs_lib import client, zbig

RUNS = 3
TARGET = 0.9
TARGET_WENDELIN = 3.0
SPARSE = 16 << 30           # bytes of the sparse array
TARGET_SPARSE_S = 0.5
TARGET_SPARSE_RSS = 10 * MiB

# run by wendelin37 in .venv37: prints seconds and the sum
WENDELIN_READ = '''
import time
db = open_db()
t0 = time.perf_counter()
conn = db.open()
a = conn.root()['A']
total = int(a[:].view('uint64').sum())
print(time.perf_counter() - t0, total)
conn.close()
db.close()
'''


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


def sum_asarray(zarray, wc, size):
    """-> (seconds, sum) for asarray of zarray, loaded already."""
    t0 = time.perf_counter()
    a = client.asarray(zarray, wc=wc)
    total = int(a.view('uint64').sum())
    t = time.perf_counter() - t0
    assert a.nbytes == size, 'asarray: %d bytes, want %d' % (a.nbytes, size)
    return t, total


def warm(b, mnt, oid, size, sums):
    """Both reads with everything in the page cache; asarray on one open
    connection (its channel made once, as a program's)."""
    db = b.new_db()
    try:
        with client.connect(mnt.path) as wc:
            conn = db.open(transaction.TransactionManager())
            zarray = conn.root()['A']
            sum_asarray(zarray, wc, size)           # the channel, the pages: all cached
            read_memmap(mnt, oid, size)
            best = measure(size, RUNS, lambda name: sum_asarray(zarray, wc, size)
                           if name == 'asarray' else read_memmap(mnt, oid, size), sums)
            conn.close()
        return best
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


def measure(size, runs, read, sums):
    """-> {name: best MiB/s} of read(name) for asarray and memmap, alternating;
    every sum must agree (sums: those seen)."""
    best = {'asarray': 0.0, 'memmap': 0.0}
    for run in range(runs):
        for name in best:
            t, total = read(name)
            sums.add(total)
            speed = common.mibps(size, t)
            best[name] = max(best[name], speed)
            print('run %d %-8s %7.0f MiB/s' % (run + 1, name, speed))
    assert len(sums) == 1, 'the two reads disagree: sums %s' % sorted(sums)
    return best


def read_wendelin(b):
    """-> (seconds, sum) for wendelin.core 0.13 in a fresh process of its own."""
    t, total = wendelin37.run(WENDELIN_READ, b.addr, timeout=1800).split()
    return float(t), int(total)


def measure_wendelin(b, args, size, sums):
    """-> best MiB/s of wendelin.core 0.13 reading the array cold, or why not."""
    why = wendelin37.unavailable() if args.db == 'zeo' else 'its helper speaks ZEO only'
    if why:
        return why
    best = 0.0
    for run in range(RUNS):
        t, total = read_wendelin(b)
        assert total in sums, 'wendelin.core read sum %d, wcfs %s' % (total, sorted(sums))
        best = max(best, common.mibps(size, t))
        print('run %d wendelin %7.0f MiB/s' % (run + 1, common.mibps(size, t)))
    return best


def report_wendelin(cold_best, wendelin):
    if isinstance(wendelin, str):
        print('zarray cold read against wendelin.core 0.13: not measured: %s' % wendelin)
        return
    ratio = cold_best['asarray'] / wendelin
    print('zarray cold read: asarray %.0f MiB/s, wendelin.core 0.13 in its own process '
          '%.0f MiB/s, ratio %.2f (target >= %.1f: %s)'
          % (cold_best['asarray'], wendelin, ratio, TARGET_WENDELIN,
             common.verdict(ratio >= TARGET_WENDELIN)))


def write_sparse(b):
    """Commit root['S'], a ZBigArray of SPARSE bytes with its first and last
    blocks written."""
    conn = b.db().open()
    try:
        n = SPARSE // 8
        s = conn.root()['S'] = zbig.ZBigArray((n,), 'int64', blksize=BLKSIZE)
        s[:4] = [1, 2, 3, 4]
        s[n - 4:] = [5, 6, 7, 8]
        transaction.commit()
    finally:
        conn.close()


def sparse(b):
    """-> (seconds of asarray, RSS growth) of the sparse array on a fresh mount."""
    mnt = b.mount()
    db = b.new_db()
    try:
        with client.connect(mnt.path) as wc:
            conn = db.open(transaction.TransactionManager())
            zarray = conn.root()['S']
            zarray._p_activate()
            rss = common.proc_status(os.getpid())[0]
            t0 = time.perf_counter()
            a = client.asarray(zarray, wc=wc)
            t = time.perf_counter() - t0
            grown = common.proc_status(os.getpid())[0] - rss
            assert a.nbytes == SPARSE and a[-1] == 8, 'the sparse array reads wrong'
            del a
            conn.close()
        return t, grown
    finally:
        db.close()
        b.unmount(mnt)


def report_sparse(t, grown):
    print('zarray of 16 GiB, sparse: asarray %.3f s (target <= %.1f s: %s), RSS grew %.1f MiB '
          '(target < %d MiB: %s)' % (t, TARGET_SPARSE_S, common.verdict(t <= TARGET_SPARSE_S),
                                     grown / MiB, TARGET_SPARSE_RSS // MiB,
                                     common.verdict(grown < TARGET_SPARSE_RSS)))


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
        sums = set()
        cold_best = measure(size, RUNS, lambda name: cold(b, oid, size, name), sums)
        wendelin = measure_wendelin(b, args, size, sums)
        mnt = b.mount()
        try:
            warm_best = warm(b, mnt, oid, size, sums)
        finally:
            b.unmount(mnt)
        write_sparse(b)
        b.close_db()
        sparse_t, sparse_grown = sparse(b)
    report('cold', args, cold_best)
    report('warm', args, warm_best)
    report_wendelin(cold_best, wendelin)
    report_sparse(sparse_t, sparse_grown)


if __name__ == '__main__':
    main()
