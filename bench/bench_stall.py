"""One user's reads must not stall another's (issue 15, part 1).

An attacker process of another uid (nobody, through setpriv) reads
`@<tid>/` directories with many threads in 1 MiB pieces, dropping its page
cache after each pass so that every pass asks wcfs again:

- 64x16: a file of one 64 MiB block, 4 revisions of it, each different
  (so that no two directories share a load), 16 threads;
- 2x16 (ZEO) or 2x32 (PostgreSQL): a file of 64 blocks of 2 MiB, 16 or 32
  threads over 4 of its `@<tid>/` directories.

Meanwhile the victim (this process, root) makes a cold 4 KiB read every
0.3 s: mkdir of a fresh `@<tid>/` of a 2 MiB-block file, open, read of a
block no read asked for before. Its p50 over --reads reads (at least 30)
is compared with the same measured right before, without the attack
(target: within 5x), and wcfs's peak RSS (VmHWM, reset before each attack)
with the bound the man page names (blockcache.RSS_BOUND). The attacker's
directories are made as its attack starts (--revdir-timeout would expire
them meanwhile); `loads_rested` tells how many of wcfs's loads waited for
their user's share of a ZEO server's time (shares.py).

Then reads interleaved between two 64 MiB blocks in 1 MiB pieces:
blocks_loaded must grow by 2.

    .venv/bin/python bench/bench_stall.py [--db postgres] [--reads 30]
"""

import argparse
import os
import statistics
import subprocess
import sys
import textwrap
import time

import transaction
from ZODB.utils import u64

import common
from common import MiB, Bench, add_db_option, kernel, read_stats, reset_peak_rss, verdict
from wcfs_lib import zbig
from wcfs_lib.files import blockcache
from devtools.pgcluster import last_transaction

BIG = 64 * MiB
SMALL = 2 * MiB
TARGET_RATIO = 5
PAUSE = 0.3             # seconds between two reads of the victim
NOBODY = ['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups']
# nobody may not reach the virtual environment nor the bench's directory:
# the attacker uses the standard library only, and gets its directories open
NOBODY_PYTHON = os.path.realpath(sys.executable)

ATTACKER = textwrap.dedent('''
    import os, sys, threading
    nthreads = int(sys.argv[1])
    dirs = [int(fd) for fd in sys.argv[2:]]
    stop = threading.Event()
    passes = [0] * nthreads
    def run(i):
        n = i
        while not stop.is_set():
            dfd = dirs[n % len(dirs)]
            n += 1
            fd = os.open('data', os.O_RDONLY, dir_fd=dfd)
            try:
                off = 0
                while not stop.is_set():
                    got = len(os.pread(fd, 1 << 20, off))
                    if not got:
                        break
                    off += got
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                passes[i] += 1
            except OSError as e:
                print('error %s' % e, flush=True)
            finally:
                os.close(fd)
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(nthreads)]
    for t in threads:
        t.start()
    print('reading', flush=True)
    sys.stdin.read()
    stop.set()
    print('passes %d' % sum(passes), flush=True)
''')


def pattern(tag, size):
    seed = (b'%s:' % tag.encode()).ljust(4096, b'.')
    return (seed * (size // 4096 + 1))[:size]


class Files:
    """The files of the run, written through the bench's database."""

    def __init__(self, bench, nblk_victim):
        self.bench = bench
        self.db = bench.db()
        self.conn = self.db.open()
        self.root = self.conn.root()
        self.nvictim = nblk_victim

    def commit(self):
        transaction.commit()
        self.conn.cacheMinimize()
        return u64(last_transaction(self.db))

    def new(self, name, blksize, blocks):
        f = self.root[name] = zbig.ZBigFile(blksize)
        for blk, data in blocks.items():
            f.write_block(blk, data)
        self.commit()
        return f, u64(f._p_oid)

    def touch(self):
        self.root['counter'] = self.root.get('counter', 0) + 1
        return self.commit()

    def victim_phase(self, f, phase):
        """New content in every block of the victim's file, then a tid per
        read to come: -> those tids."""
        for blk in range(self.nvictim):
            f.write_block(blk, pattern('victim %d %d' % (phase, blk), SMALL))
            if blk % 16 == 15:
                self.commit()
        self.commit()
        return [self.touch() for _ in range(self.nvictim)]


def victim_reads(fdir, tids, phase):
    """A cold 4 KiB read of block i in a fresh @<tids[i]>/ every PAUSE s;
    -> the seconds each took (mkdir, open, read)."""
    took = []
    for blk, tid in enumerate(tids):
        path = os.path.join(fdir, '@%016x' % tid)
        t0 = time.perf_counter()
        os.mkdir(path)
        fd = os.open(os.path.join(path, 'data'), os.O_RDONLY)
        try:
            got = os.pread(fd, 4096, blk * SMALL)
        finally:
            os.close(fd)
        took.append(time.perf_counter() - t0)
        if got != pattern('victim %d %d' % (phase, blk), SMALL)[:4096]:
            raise RuntimeError('victim read %d: wrong bytes' % blk)
        time.sleep(PAUSE)
    return took


class Attacker:
    def __init__(self, dirs, nthreads):
        self.fds = [os.open(d, os.O_RDONLY | os.O_DIRECTORY) for d in dirs]
        self.proc = subprocess.Popen(
            NOBODY + [NOBODY_PYTHON, '-c', ATTACKER, str(nthreads), *map(str, self.fds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=self.fds)
        line = self.proc.stdout.readline()
        if line != b'reading\n':
            raise RuntimeError('attacker: %r' % line)

    def stop(self):
        self.proc.stdin.close()
        out = self.proc.stdout.read().decode()
        self.proc.wait(60)
        for fd in self.fds:
            os.close(fd)
        return out.strip()


def p50(xs):
    return statistics.median(xs)


def attack(mnt, name, target, nthreads, victim, files, phase):
    """-> True if both targets are met; prints the lines. `target`: (oid,
    tids) of the file the attacker reads, and the revisions it reads."""
    tids = files.victim_phase(victim, phase)
    quiet(mnt)              # what an attack before queued is served
    ref = victim_reads(mnt.bigfile(u64(victim._p_oid)), tids, phase)
    tids = files.victim_phase(victim, phase + 1)
    dirs = revdirs(mnt, *target)
    pid = mnt.proc.pid
    reset_peak_rss(pid)
    before = read_stats(mnt.path)
    attacker = Attacker(dirs, nthreads)
    try:
        time.sleep(2)       # the attack under way
        took = victim_reads(mnt.bigfile(u64(victim._p_oid)), tids, phase + 1)
    finally:
        passes = attacker.stop()
    after = read_stats(mnt.path)
    loaded, rested = (after[k] - before[k] for k in ('blocks_loaded', 'loads_rested'))
    peak = common.proc_status(pid)[1]
    ratio = p50(took) / p50(ref)
    print('attack %s: victim cold read p50 %.4f s, max %.3f s; without: p50 %.4f s; '
          'ratio %.1f (target <= %d) %s'
          % (name, p50(took), max(took), p50(ref), ratio, TARGET_RATIO,
             verdict(ratio <= TARGET_RATIO)))
    print('attack %s: attacker %s, wcfs loaded %d blocks (%d waited for their user\'s share); '
          'wcfs peak RSS %d MiB (bound %d MiB) %s'
          % (name, passes, loaded, rested, peak >> 20, blockcache.RSS_BOUND >> 20,
             verdict(peak <= blockcache.RSS_BOUND)))
    return ratio <= TARGET_RATIO and peak <= blockcache.RSS_BOUND


def revdirs(mnt, oid, tids):
    """Make the attacker's @<tid>/ directories, as its attack starts (made
    sooner, --revdir-timeout could expire them meanwhile); -> their paths."""
    fdir = mnt.bigfile(oid)
    dirs = [os.path.join(fdir, '@%016x' % t) for t in tids]
    for d in dirs:
        os.mkdir(d)
    return dirs


def quiet(mnt, pause=2.0, timeout=120):
    """Wait until wcfs loads nothing for `pause` s: the reads the kernel
    queued for the attacker are served after it is gone."""
    deadline = time.monotonic() + timeout
    last = read_stats(mnt.path)['blocks_loaded']
    while time.monotonic() < deadline:
        time.sleep(pause)
        now = read_stats(mnt.path)['blocks_loaded']
        if now == last:
            return now
        last = now
    raise RuntimeError('wcfs still loading %s s after the attack' % timeout)


def interleaved(mnt, oid):
    data = os.path.join(mnt.bigfile(oid), 'head', 'data')
    before = quiet(mnt)
    fd = os.open(data, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for piece in range(0, BIG, MiB):
            for blk in (0, 1):
                os.pread(fd, MiB, blk * BIG + piece)
    finally:
        os.close(fd)
    loaded = read_stats(mnt.path)['blocks_loaded'] - before
    print('interleaved reads of two 64 MiB blocks in 1 MiB pieces: %d blocks loaded '
          '(target 2) %s' % (loaded, verdict(loaded == 2)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_db_option(p)
    p.add_argument('--reads', type=int, default=30, help='victim reads per phase (>= 30)')
    p.add_argument('--attacks', default='64,2',
                   help='block sizes in MiB of the attacks to run (default 64,2)')
    args = p.parse_args()
    attacks = set(args.attacks.split(','))
    threads2 = 32 if args.db == 'postgres' else 16
    with Bench('stall', db=args.db) as b:
        files = Files(b, args.reads)
        big, big_oid = files.new('big', BIG, {0: pattern('big 0', BIG)})
        big_tids = []
        for rev in range(1, 5):
            big.write_block(0, pattern('big %d' % rev, BIG))
            big_tids.append(files.commit())
        two, two_oid = files.new('two', BIG, {0: pattern('two 0', BIG), 1: pattern('two 1', BIG)})
        mid, mid_oid = files.new('mid', SMALL, {blk: pattern('mid %d' % blk, SMALL)
                                                for blk in range(64)})
        mid_tids = [files.touch() for _ in range(4)]
        victim, _ = files.new('victim', SMALL, {})
        mnt = b.mount('-o', 'allow_other')     # the attacker is another user
        print('kernel: %s, database: %s, %d victim reads per phase'
              % (kernel(), args.db, args.reads))
        if '64' in attacks:
            attack(mnt, '64MiBx16', (big_oid, big_tids), 16, victim, files, 0)
        if '2' in attacks:
            attack(mnt, '2MiBx%d' % threads2, (mid_oid, mid_tids), threads2, victim, files, 2)
        interleaved(mnt, two_oid)
        files.conn.close()


if __name__ == '__main__':
    main()
