"""Many files (issue 9): what N visible files cost wcfs per transaction.

The database holds N ZBigFiles `f0`.. of a few 4 KiB blocks (ZBlk0 of a few
bytes each), and `idle`, one more that is never made visible; written straight
into the Data.fs before runzeo starts. A one-file commit gives new content to
one block of one file: it modifies only that block's ZBlk0.

Everything is measured twice on one wcfs: (A) with only f0 visible, then (B)
after mkdir of the N - 1 others. In each:

- per-transaction CPU: COMMITS one-file commits, PAUSE s apart (wcfs handles
  each alone), then the wait for the last one's head/at; the CPU time wcfs
  used meanwhile (all its threads, clock_getcpuclockid(3)) over COMMITS.
  Twice: every commit touching a visible file (A: f0; B: a random one of the
  N) and touching none (`idle`). Target: B within 2x of A, for each. wcfs's
  CPU while idle is printed for scale.
- `.wcfs/stats` read time (open, read, close): median of STATS_READS.
  Target: B within 2x of A (O(1) in the number of files).
- commit -> `have`: a client subscribed to f0's head/invalidations
  (bench_latency.py's client process: acks every `have` at once), LATENCY
  one-block commits to f0 one after the other: from the tid (the wall-clock
  time the ZEO server put in it when it took the commit lock: an upper
  bound) to the client reading the `have`, median and p99. Target: B's
  median <= 5 ms.

Then, in (B) only, the burst: BURST one-file commits, each to a random file
of the N, as fast as the writer goes (one ZEO connection, one thread);
from the writer's last commit, the time until `.wcfs/stats` shows its tid
as zhead and then until every touched file's head/at (open fds, read at
offset 0 in sweeps) shows the last tid that touched it. Target <= 0.5 s.
Also printed: how many of the burst's transactions zhead was behind when
the writer was done.

Waits are bounded by --timeout: one that takes longer prints MISS with what
was seen.
"""

import argparse
import contextlib
import os
import random
import statistics
import time

import transaction
from ZODB.TimeStamp import TimeStamp
from ZODB.utils import p64, u64

import common
from bench_latency import Client, percentile
from wcfs_lib import zbig

BLKSIZE = 4096
PAUSE = 0.02            # seconds between the commits of the CPU and latency measurements
IDLE = 1.0              # seconds wcfs's CPU is measured with nothing happening
TARGET_RATIO = 2.0      # B over A
TARGET_BURST = 0.5      # seconds
TARGET_HAVE = 0.005     # seconds, median


def tid_time(tid):
    return TimeStamp(p64(tid)).timeTime()


def report(what, figure, target, ok):
    print('%s: %s (target %s): %s' % (what, figure, target, common.verdict(ok)))


def ratio_report(what, a, b):
    """The verdict line of a time measured with 1 file (a) and N (b), in s."""
    if a is None or b is None:
        report(what, 'not measured: a wait timed out', 'ratio <= %g' % TARGET_RATIO, False)
        return
    report(what, '1 file %.3f ms, N files %.3f ms: ratio %.2f' % (a * 1000, b * 1000, b / a),
           'ratio <= %g' % TARGET_RATIO, b <= a * TARGET_RATIO)


def write_database(b, nfiles, nblocks):
    """Commit f0.. and `idle` into the Data.fs; -> {name: oid}."""
    db = b.file_db()
    try:
        conn = db.open()
        root = conn.root()
        names = ['f%d' % i for i in range(nfiles)] + ['idle']
        for name in names:
            f = root[name] = zbig.ZBigFile(BLKSIZE)
            for blk in range(nblocks):
                f.write_block(blk, b'%s %d\n' % (name.encode(), blk))
        transaction.commit()
        oids = {name: u64(root[name]._p_oid) for name in names}
        conn.close()
        return oids
    finally:
        db.close()


class Writer:
    """The benchmark's ZEO connection."""

    def __init__(self, b, nblocks, rng):
        self.db = b.db()
        self.conn = self.db.open()
        self.root = self.conn.root()
        self.nblocks = nblocks
        self.rng = rng

    def touch(self, name):
        """Commit new content of a random block of `name`; -> the tid."""
        self.root[name].write_block(self.rng.randrange(self.nblocks), b'%d' % time.time_ns())
        transaction.commit()
        return u64(self.db.storage.lastTransaction())


class Mounted:
    """The wcfs of the benchmark and the head/at fds of the visible files."""

    def __init__(self, mnt, oids, stack):
        self.mnt = mnt
        self.pid = mnt.proc.pid
        self.oids = oids
        self.stack = stack
        self.at = {}            # name -> fd of its head/at

    def mkdir(self, name):
        path = self.mnt.bigfile(self.oids[name])
        fd = os.open(os.path.join(path, 'head', 'at'), os.O_RDONLY)
        self.stack.callback(os.close, fd)
        self.at[name] = fd
        return path


# ---- the measurements ----

def idle_cpu(m):
    """Seconds of CPU wcfs uses per second with nothing happening."""
    c0 = common.cpu_seconds(m.pid)
    time.sleep(IDLE)
    return (common.cpu_seconds(m.pid) - c0) / IDLE


def cpu_per_txn(w, m, pick, n, timeout):
    """n commits to pick(), PAUSE apart; -> wcfs's CPU seconds per
    transaction, or None if the last one was not seen within timeout."""
    c0 = common.cpu_seconds(m.pid)
    for _ in range(n):
        name = pick()
        tid = w.touch(name)
        time.sleep(PAUSE)
    fd = m.at.get(name, m.at['f0'])
    if common.wait_at(fd, tid, timeout) is None:
        return None
    return (common.cpu_seconds(m.pid) - c0) / n


def stats_read(m, n):
    """Median seconds of one read of .wcfs/stats, over n."""
    path = os.path.join(m.mnt.path, '.wcfs', 'stats')
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        with open(path, 'rb') as f:
            f.read()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def have_lags(w, m, n, timeout):
    """n commits to f0 with a subscribed client; -> seconds from each tid to
    the client's `have` (ending early at one not seen within timeout)."""
    path = os.path.join(m.mnt.path, 'bigfile', '%016x' % m.oids['f0'], 'head', 'invalidations')
    client = Client(path, common.read_at(m.at['f0']))
    try:
        line = client.line(common.START_TIMEOUT + timeout)     # a process starts
        assert line == 'ready', 'client: %r' % line
        lags = []
        for _ in range(n):
            tid = w.touch('f0')
            try:
                words = client.line(timeout).split(' ')
            except RuntimeError as e:
                print('commit %016x to f0: %s' % (tid, e))
                break
            assert words[0] == 'have' and int(words[1], 16) == tid, \
                'commit %016x: the client read %r' % (tid, words)
            lags.append(float(words[3]) - tid_time(tid))
            time.sleep(PAUSE)
        return lags
    finally:
        client.stop()


def burst(w, m, names, n, timeout):
    """n commits to random files of `names` back to back; -> (seconds of the
    writer, transactions zhead was behind at its end, seconds until zhead
    caught up, until every head did: None if not within timeout, what was
    left behind then)."""
    last = {}
    tids = []
    t0 = time.monotonic()
    for _ in range(n):
        name = w.rng.choice(names)
        last[name] = w.touch(name)
        tids.append(last[name])
    t_end = time.monotonic()
    zhead = int(common.read_stats(m.mnt.path)['zhead'], 16)
    behind = sum(1 for tid in tids if tid > zhead)
    deadline = t_end + timeout
    while zhead < tids[-1] and time.monotonic() < deadline:
        time.sleep(0.002)
        zhead = int(common.read_stats(m.mnt.path)['zhead'], 16)
    t_zhead = time.monotonic() - t_end if zhead >= tids[-1] else None
    left = dict(last)
    while left and time.monotonic() < deadline:
        left = {name: tid for name, tid in left.items() if common.read_at(m.at[name]) < tid}
    t_heads = time.monotonic() - t_end if not left else None
    return t_end - t0, behind, t_zhead, t_heads, left


def phase(w, m, pick_visible, args):
    """The measurements of one phase; -> {figure: value}."""
    res = {'idle': idle_cpu(m)}
    res['cpu visible'] = cpu_per_txn(w, m, pick_visible, args.commits, args.timeout)
    res['cpu none'] = cpu_per_txn(w, m, lambda: 'idle', args.commits, args.timeout)
    res['stats'] = stats_read(m, args.stats_reads)
    res['have'] = have_lags(w, m, args.latency, args.timeout)
    return res


# ---- printing ----

def print_phase(label, res):
    def cpu(x):
        return '%.3f ms' % (x * 1000) if x is not None else 'not seen'

    have = [x * 1000 for x in res['have']]
    if have:
        lags = 'median %.1f ms, p99 %.1f ms over %d' % (statistics.median(have),
                                                        percentile(have, 99), len(have))
    else:
        lags = 'none seen'
    print('%s: wcfs CPU per transaction: %s touching a visible file, %s touching none '
          '(idle: %.2f ms/s); .wcfs/stats read: %.2f ms; commit -> have: %s'
          % (label, cpu(res['cpu visible']), cpu(res['cpu none']), res['idle'] * 1000,
             res['stats'] * 1000, lags))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--files', type=int, default=1000, help='visible files (default 1000)')
    p.add_argument('--blocks', type=int, default=4, help='blocks of each file (default 4)')
    p.add_argument('--commits', type=int, default=200,
                   help='commits of each CPU measurement (default 200)')
    p.add_argument('--burst', type=int, default=1000, help='commits of the burst (default 1000)')
    p.add_argument('--stats-reads', type=int, default=100,
                   help='reads of .wcfs/stats timed (default 100)')
    p.add_argument('--latency', type=int, default=100,
                   help='commits of the commit -> have measurement (default 100)')
    p.add_argument('--timeout', type=float, default=60,
                   help='seconds a head/at or `have` may take before MISS (default 60)')
    p.add_argument('--seed', type=int, default=1)
    args = p.parse_args()
    if min(args.files, args.blocks, args.commits, args.burst, args.stats_reads,
           args.latency) <= 0:
        p.error('counts must be positive')
    rng = random.Random(args.seed)
    names = ['f%d' % i for i in range(args.files)]

    print('kernel: %s' % common.kernel())
    with common.Bench('many files') as b, contextlib.ExitStack() as stack:
        oids = write_database(b, args.files, args.blocks)
        w = Writer(b, args.blocks, rng)
        m = Mounted(b.mount(), oids, stack)
        m.mkdir('f0')
        one = phase(w, m, lambda: 'f0', args)
        print_phase('1 visible file', one)

        t0 = time.monotonic()
        for name in names[1:]:
            m.mkdir(name)
        print('mkdir of %d more files: %.1f s' % (args.files - 1, time.monotonic() - t0))
        many = phase(w, m, lambda: rng.choice(names), args)
        print_phase('%d visible files' % args.files, many)
        writer_s, behind, t_zhead, t_heads, left = burst(w, m, names, args.burst, args.timeout)

    ratio_report('wcfs CPU per transaction touching a visible file',
                 one['cpu visible'], many['cpu visible'])
    ratio_report('wcfs CPU per transaction touching no visible file',
                 one['cpu none'], many['cpu none'])
    if t_heads is None:
        figure = 'not caught up %g s after the writer: zhead %s, %d files behind' % (
            args.timeout, 'caught up after %.3f s' % t_zhead if t_zhead is not None else 'behind',
            len(left))
    else:
        figure = '%.3f s after the writer (zhead: %.3f s)' % (t_heads, t_zhead)
    report('burst of %d one-file commits (%.1f s, %.0f/s; zhead %d transactions behind '
           'at the end) with %d files, caught up' % (args.burst, writer_s, args.burst / writer_s,
                                                     behind, args.files),
           figure, '<= %g s' % TARGET_BURST, t_heads is not None and t_heads <= TARGET_BURST)
    ratio_report('.wcfs/stats read', one['stats'], many['stats'])
    med = statistics.median(many['have']) if many['have'] else None
    report('commit -> have with %d files' % args.files,
           'median %.1f ms' % (med * 1000) if med is not None else 'none seen',
           'median <= %g ms' % (TARGET_HAVE * 1000), med is not None and med <= TARGET_HAVE)


if __name__ == '__main__':
    main()
