"""How long a malformed record holds up the other files (issue 15, item 2).

Two files, A and B, visible through one wcfs. A database writer stores, as
A's blktab, a record of --size MiB of NONE opcodes without STOP; right after,
a one-block commit to B. Prints the time from that commit to B's head/at
showing it (the target: within 1 s), against the same time for ordinary
commits to B in the same run; wcfs VmRSS before and after, and VmHWM across
the bad record; and that A now gives EIO with the refusal in wcfs's log.

    .venv/bin/python bench/bench_bad_record.py [--size 100] [--db zeo|postgres]
"""

import argparse
import errno
import os
import statistics
import time

import common
from common import MiB
from ZODB.utils import u64

from wcfs_lib import zbig
from devtools.pgcluster import last_transaction
from devtools.records import raw_store

BLKSIZE = 64 << 10
TARGET = 1.0            # seconds from B's commit to B's head/at
ORDINARY = 5            # ordinary commits to B measured first
CLASS = b'\x80\x03cBTrees.LOBTree\nLOBTree\nq\x00.'


def commit_block(db, conn, f):
    """A new block 0 for the ZBigFile f; -> (tid, time.time() after the commit)."""
    f.write_block(0, os.urandom(BLKSIZE))
    conn.transaction_manager.commit()
    return u64(last_transaction(db)), time.time()


def follow(fd, tid, committed, timeout):
    """Seconds from `committed` until head/at at fd shows tid; None after timeout."""
    seen = common.wait_at(fd, tid, timeout)
    return None if seen is None else seen - committed


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--size', type=int, default=100, metavar='MiB',
                   help='size of the malformed record in MiB (default 100)')
    p.add_argument('--timeout', type=float, default=300, help='longest wait, seconds')
    common.add_db_option(p)
    args = p.parse_args()
    print('kernel: %s, database: %s' % (common.kernel(), args.db))
    with common.Bench('bad record', db=args.db) as b:
        db = b.db()
        conn = db.open()
        files = conn.root()['files'] = [zbig.ZBigFile(BLKSIZE) for _ in range(2)]
        for f in files:
            f.write_block(0, os.urandom(BLKSIZE))
            f.write_block(1, os.urandom(BLKSIZE))
        conn.transaction_manager.commit()
        a, bf = files
        mnt = b.mount()
        dir_a, dir_b = (mnt.bigfile(u64(f._p_oid)) for f in files)
        fd = os.open(os.path.join(dir_b, 'head', 'at'), os.O_RDONLY)
        try:
            lags = []
            for _ in range(ORDINARY):
                tid, t = commit_block(db, conn, bf)
                lags.append(follow(fd, tid, t, args.timeout))
            if None in lags:
                print('bad record: an ordinary commit to B was not followed within %s s: MISS'
                      % args.timeout)
                return
            reference = statistics.median(lags)
            rss_before, _ = common.proc_status(mnt.proc.pid)
            common.reset_peak_rss(mnt.proc.pid)
            record = CLASS + b'N' * (args.size * MiB)
            t0 = time.time()
            bad_tid = raw_store(db.storage, {u64(a.blktab._p_oid): record})
            t_bad = time.time()
            del record
            conn.transaction_manager.abort()
            tid, t = commit_block(db, conn, bf)
            lag = follow(fd, tid, t, args.timeout)
            rss_after, hwm = common.proc_status(mnt.proc.pid)
        finally:
            os.close(fd)
        try:
            common.read_all(os.path.join(dir_a, 'head', 'data'), bytearray(MiB))
            a_state = 'A READS (expected EIO)'
        except OSError as e:
            a_state = 'A gives %s' % errno.errorcode.get(e.errno, e.errno)
        refused = any('@%016x' % bad_tid in line and 'bytes refused' in line
                      for line in mnt.log().splitlines())
        print('bad record: %d MiB of NONE without STOP as A\'s blktab, stored in %.2f s; %s; '
              'refused by its size in the log: %s' % (args.size, t_bad - t0, a_state,
                                                      'yes' if refused else 'NO'))
        print('bad record: wcfs VmRSS %.0f MiB before, %.0f MiB after, VmHWM %.0f MiB across it'
              % (rss_before / MiB, rss_after / MiB, hwm / MiB))
        if lag is None:
            print('bad record: B\'s head/at did not follow within %s s: MISS' % args.timeout)
            return
        print('bad record: B\'s head/at followed its commit after %.3f s (ordinary commits: '
              'median %.3f s, ratio %.0f) (target <= %.1f s: %s)'
              % (lag, reference, lag / reference, TARGET, common.verdict(lag <= TARGET)))


if __name__ == '__main__':
    main()
