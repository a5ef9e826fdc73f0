"""Many workstations on one PostgreSQL (issue 18): N wcfs mounts on one
machine (each its own process and mount point, --db-connections 2) follow one
private cluster, whose max_connections this script raises first; a writer
commits one block a second. After every commit, each mount's subscribed
client (bench_latency.py's client process, acking every `have`) must read
that tid's `have`, and each mount's head/at and the block's bytes in
head/data must be the writer's: any difference is a MISS.

Prints commit() returned -> `have` over all mounts (median, p99), how the
mounts follow the database (told by wcfs's trigger, default; polling with
--no-notify), and the statements the server ran a second while nothing was
committed afterwards (log_statement = all for --idle seconds), with the
load average. Targets: every mount exact; p99 <= 100 ms.
"""

import argparse
import os
import statistics
import time

import transaction
from ZODB.utils import u64

import bench_latency
import common
from common import BLKSIZE, MiB, last_transaction
from devtools.pgcluster import NOTIFY_SQL

TARGET_P99_MS = 100
MAX_CONNECTIONS = 400       # each wcfs holds --db-connections + 3, + 1 to listen
TIMEOUT = 30                # seconds a mount may take to show a commit


def raise_max_connections(b):
    """A restart of the server: the writer's DB is closed first (RelStorage
    would log the dropped connection)."""
    b.close_db()
    b.cluster.sql('ALTER SYSTEM SET max_connections = %d' % MAX_CONNECTIONS)
    b.server.stop()
    b.server.start()


class Workstation:
    """One wcfs mount, its subscribed client, its open head/at and head/data."""

    def __init__(self, b, oid, args):
        self.mnt = b.mount('--db-connections', '2')
        bigfile = self.mnt.bigfile(oid)
        self.at_fd = os.open(os.path.join(bigfile, 'head', 'at'), os.O_RDONLY)
        self.data_fd = os.open(os.path.join(bigfile, 'head', 'data'), os.O_RDONLY)
        self.client = bench_latency.Client(os.path.join(bigfile, 'head', 'invalidations'),
                                           common.read_at(self.at_fd))
        line = self.client.line()
        assert line == 'ready', '%s: client: %r' % (self.mnt.path, line)

    def check(self, tid, blk, data):
        """-> (wall time the `have` of tid was read, what was wrong or None)."""
        words = self.client.line(TIMEOUT).split(' ')
        if words[0] != 'have' or int(words[1], 16) != tid:
            return None, 'client read %r for %016x' % (words, tid)
        if common.wait_at(self.at_fd, tid, TIMEOUT) is None:
            return None, 'head/at %016x, not %016x' % (common.read_at(self.at_fd), tid)
        if os.pread(self.data_fd, BLKSIZE, blk * BLKSIZE) != data:
            return None, 'block %d of head/data differs as of %016x' % (blk, tid)
        return float(words[3]), None

    def close(self):
        self.client.stop()
        os.close(self.at_fd)
        os.close(self.data_fd)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--mounts', type=int, default=20, help='wcfs mounts (default 20)')
    p.add_argument('--commits', type=int, default=60, help='commits, one a second (default 60)')
    p.add_argument('--every', type=float, default=1.0, help='seconds between commits (default 1)')
    p.add_argument('--idle', type=float, default=20,
                   help='seconds the statements of the idle fleet are counted (default 20)')
    p.add_argument('--no-notify', dest='notify', action='store_false',
                   help="without wcfs's trigger: every mount polls")
    args = p.parse_args()
    if min(args.mounts, args.commits) <= 0 or args.every < 0 or args.idle <= 0:
        p.error('counts and --idle must be positive, --every not negative')
    nblk = 8
    lat, wrong, fleet = [], [], []
    with common.Bench('fleet', db='postgres') as b:
        oid = b.write_bigfile(nblk * BLKSIZE)
        raise_max_connections(b)
        if args.notify:
            b.cluster.psql_file(NOTIFY_SQL, common.PG_DBNAME)
        try:
            for _ in range(args.mounts):
                fleet.append(Workstation(b, oid, args))
            modes = sorted({bench_latency.following(w.mnt.path) for w in fleet})
            db = b.db()
            conn = db.open()
            f = conn.root()['f']
            for i in range(args.commits):
                blk, data = i % nblk, os.urandom(BLKSIZE)
                f.write_block(blk, data)
                transaction.commit()
                returned = time.time()
                tid = u64(last_transaction(db))
                conn.cacheMinimize()
                for w in fleet:
                    seen, why = w.check(tid, blk, data)
                    if why:
                        wrong.append('%s: %s' % (w.mnt.path, why))
                    else:
                        lat.append((seen - returned) * 1000)
                time.sleep(args.every)
            conn.close()
            idle = b.cluster.statements_during(args.idle)
        finally:
            for w in fleet:
                w.close()
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float('inf')
    print('fleet: %d wcfs on one PostgreSQL (%s), %d commits of one %d MiB block, %.1f s apart; '
          'commit() returned -> `have`: median %.1f ms, p99 %.1f ms over %d (target p99 <= %d '
          'ms: %s); kernel %s'
          % (args.mounts, ', '.join(modes), args.commits, BLKSIZE // MiB, args.every,
             statistics.median(lat) if lat else float('nan'), p99, len(lat), TARGET_P99_MS,
             common.verdict(p99 <= TARGET_P99_MS), common.kernel()))
    print('fleet: every mount exact (have, head/at, the block): %s%s'
          % (common.verdict(not wrong), '' if not wrong else ' (%d wrong; first: %s)'
             % (len(wrong), wrong[0])))
    print('fleet: the idle fleet: %d statements in %g s, %.1f a second (%.2f per wcfs); '
          'load average %s' % (idle, args.idle, idle / args.idle, idle / args.idle / args.mounts,
                               '%.2f %.2f %.2f' % os.getloadavg()))


if __name__ == '__main__':
    main()
