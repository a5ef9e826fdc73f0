"""Memory (SPEC §6): wcfs's RSS after reading 4 GiB over 10 bigfiles.
Target: RSS <= 150 MiB; on PostgreSQL (--db postgres, issue 18) RSS <= 120 MiB
and VmHWM <= 150 MiB.

10 ZBigFiles of 400 MiB each (2 MiB ZBlk0 blocks of random bytes, written
in 64 MiB transactions so that the writer stays small) are made visible
(mkdir) and read whole through one wcfs, sequentially, file by file, in
1 MiB reads. VmRSS and VmHWM of the wcfs process (/proc/<pid>/status) are
printed after the mount, after the mkdirs, after each file, right after the
last read (the verdict) and after a few idle seconds.

The database is about the size of the data (4 GiB): it goes in a temporary
directory under --dir (default: the system's temporary directory), whose
free space is checked first, and it is removed at the end.
"""

import argparse
import os
import shutil
import tempfile
import time

import transaction
from ZODB.utils import u64

import common
from common import BLKSIZE, CHUNK, MiB
from wcfs_lib import zbig

TARGET_MIB = 150
# issue 18's sharper targets on PostgreSQL: RSS after the reads, and peak
PG_TARGET_MIB, PG_TARGET_PEAK_MIB = 120, 150
IDLE = 5            # seconds after the reads before the last look at RSS
ROOM = 1.2          # free space wanted, over the data's size


def status(pid):
    """(VmRSS, VmHWM) of pid in MiB."""
    return tuple(v / MiB for v in common.proc_status(pid))


def database_size(b):
    if b.cluster is not None:
        return b.cluster.sql('SELECT pg_database_size(%s)', common.PG_DBNAME)[0][0]
    return os.path.getsize(b.dir / 'Data.fs')


def write_bigfiles(b, nfiles, size):
    """Commit root['f0'].. as ZBigFiles of size bytes; -> their oids."""
    db = b.db()
    conn = db.open()
    oids = []
    try:
        root = conn.root()
        for i in range(nfiles):
            f = root['f%d' % i] = zbig.ZBigFile(BLKSIZE)
            transaction.commit()
            oids.append(u64(f._p_oid))
            pending = 0
            for blk in range(size // BLKSIZE):
                f.write_block(blk, common.block_data())
                pending += BLKSIZE
                if pending >= common.COMMIT_EVERY:
                    transaction.commit()
                    conn.cacheMinimize()
                    pending = 0
            transaction.commit()
            conn.cacheMinimize()
        return oids
    finally:
        conn.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--size', type=int, default=400, metavar='MiB',
                   help='size of each file in MiB, a multiple of 2 (default 400)')
    p.add_argument('--files', type=int, default=10, help='number of files (default 10)')
    p.add_argument('--dir', default=None,
                   help='where to put the temporary directory with the database '
                        '(default: %s)' % tempfile.gettempdir())
    common.add_db_option(p)
    args = p.parse_args()
    if args.size <= 0 or args.size * MiB % BLKSIZE or args.files <= 0:
        p.error('--size must be a positive multiple of 2, --files positive')
    size = args.size * MiB
    total = size * args.files
    if args.dir:
        tempfile.tempdir = args.dir
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < total * ROOM:
        p.error('%s: %.1f GiB free, the database needs about %.1f GiB: use --dir'
                % (tempfile.gettempdir(), free / (1 << 30), total * ROOM / (1 << 30)))

    seen = []
    with common.Bench('memory', db=args.db) as b:
        t0 = time.monotonic()
        oids = write_bigfiles(b, args.files, size)
        b.close_db()
        t_write = time.monotonic() - t0
        dbsize = database_size(b)

        mnt = b.mount()
        pid = mnt.proc.pid
        seen.append(('mounted',) + status(pid))
        paths = [os.path.join(mnt.bigfile(oid), 'head', 'data') for oid in oids]
        seen.append(('after %d mkdirs' % len(oids),) + status(pid))

        buf = bytearray(CHUNK)
        nread = 0
        t0 = time.monotonic()
        for i, path in enumerate(paths):
            n, _ = common.read_all(path, buf)
            assert n == size, '%s: read %d bytes, want %d' % (path, n, size)
            nread += n
            seen.append(('after file %d' % (i + 1),) + status(pid))
        t_read = time.monotonic() - t0
        rss, hwm = status(pid)
        stats = common.read_stats(mnt.path)
        time.sleep(IDLE)
        rss_idle, hwm_idle = status(pid)

    for what, r, h in seen:
        print('  %-16s VmRSS %6.1f MiB  VmHWM %6.1f MiB' % (what, r, h))
    print('  %-16s VmRSS %6.1f MiB  VmHWM %6.1f MiB' % ('%d s later' % IDLE, rss_idle, hwm_idle))
    print('memory: %s, %d files of %d MiB (%d MiB blocks; written in %.0f s, database %.2f GiB), '
          '%.2f GiB read through wcfs in %.0f s (%.0f MiB/s), blocks_loaded %d; wcfs right after '
          'the reads: VmRSS %.1f MiB, VmHWM %.1f MiB; %d s later VmRSS %.1f MiB'
          % (args.db, args.files, args.size, BLKSIZE // MiB, t_write, dbsize / (1 << 30),
             nread / (1 << 30), t_read, common.mibps(nread, t_read), stats['blocks_loaded'],
             rss, hwm, IDLE, rss_idle))
    print('memory: wcfs VmRSS %.1f MiB after reading %.2f GiB over %d bigfiles (target <= %d MiB: '
          '%s), VmHWM %.1f MiB; kernel %s'
          % (rss, nread / (1 << 30), args.files, TARGET_MIB, common.verdict(rss <= TARGET_MIB),
             hwm, common.kernel()))
    if args.db == 'postgres':
        print('memory: issue 18 on PostgreSQL: VmRSS %.1f MiB (target <= %d MiB: %s), VmHWM %.1f '
              'MiB (target <= %d MiB: %s)'
              % (rss, PG_TARGET_MIB, common.verdict(rss <= PG_TARGET_MIB), hwm,
                 PG_TARGET_PEAK_MIB, common.verdict(hwm <= PG_TARGET_PEAK_MIB)))


if __name__ == '__main__':
    main()
