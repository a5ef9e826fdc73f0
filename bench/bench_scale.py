"""Scale (SPEC §6): one update of a file with 100 subscribed clients that all
ack at once. Target: median <= 1 s (commit -> head/at moved).

4 client processes open 25 channels each on head/invalidations of the file
(O_NONBLOCK), subscribe them all (`want` of head/at, `ack`), then wait in
poll(2) on the 25 channels: every `have` is acked as soon as it is read, and
once all 25 channels had the `have` of a transaction the process reports when
(CLOCK_REALTIME) its first and last `have` were read and its last `ack` was
written. The writer commits new content for one block (4 KiB of random bytes,
the rest of the 2 MiB block zero: a small record) and polls head/at (every
POLL_AT seconds) until it shows the transaction. Repeated R times; each
update waits until the previous one is over.

Times are from the tid: the wall-clock time the ZEO server put in it when it
took the commit lock, before the commit itself (an upper bound of the time
from the commit), to: all 100 `have`s read, all 100 acked, head/at moved
(which wcfs does only once every channel acked). Median and max over the
runs are printed.

This file run with `--client BIGFILE_DIR CAT N` is a client process: it prints
`ready` once its N channels are subscribed, then `tid TID FIRST LAST ACKED`
for every update, and ends when its stdin closes.
"""

import argparse
import os
import statistics
import sys
import time

import transaction
from ZODB.TimeStamp import TimeStamp
from ZODB.utils import p64, u64

import common
from common import BLKSIZE, MiB

TARGET = 1.0            # seconds
REPLY_TIMEOUT = 30      # seconds a report of a client may take before the run fails
POLL_AT = 0.002         # seconds between reads of head/at
PAUSE = 0.2             # seconds between updates


# ---- the client process ----

def client_main(bigfile, cat, n):
    """n channels: 'ready' once all are subscribed, then per update, once
    all n read it, 'tid TID FIRST-READ LAST-READ LAST-ACK'."""
    n = int(n)
    subscribed = set()
    got = {}        # tid -> [fds that read it, first read, last read, last ack]

    def say(line):
        sys.stdout.write(line + '\n')
        sys.stdout.flush()

    def on_have(fd, tid, mono, t_read, t_ack):
        if fd not in subscribed:
            subscribed.add(fd)
            if len(subscribed) == n:
                say('ready')
            return
        g = got.setdefault(tid, [0, t_read, t_read, t_ack])
        g[0] += 1
        g[1] = min(g[1], t_read)
        g[2] = max(g[2], t_read)
        g[3] = max(g[3], t_ack)
        if g[0] == n:
            say('tid %s %.6f %.6f %.6f' % (tid, g[1], g[2], g[3]))
            del got[tid]

    common.ack_haves(os.path.join(bigfile, 'head', 'invalidations'), cat, n, on_have)


class Client(common.ClientProcess):
    """A client process."""

    def __init__(self, bigfile, cat, n):
        super().__init__([sys.executable, os.path.abspath(__file__), '--client', bigfile,
                          '%016x' % cat, str(n)])

    def line(self, timeout=REPLY_TIMEOUT):
        return super().line(timeout)


# ---- the benchmark ----

def read_at(bigfile):
    with open(os.path.join(bigfile, 'head', 'at')) as f:
        return int(f.read(), 16)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--procs', type=int, default=4, help='client processes (default 4)')
    p.add_argument('--channels', type=int, default=25,
                   help='subscribed channels per process (default 25)')
    p.add_argument('--runs', type=int, default=10, help='updates measured (default 10)')
    p.add_argument('--size', type=int, default=16, metavar='MiB',
                   help='size of the file in MiB, a multiple of 2 (default 16)')
    args = p.parse_args()
    if (args.size <= 0 or args.size * MiB % BLKSIZE
            or min(args.procs, args.channels, args.runs) <= 0):
        p.error('counts must be positive, --size a positive multiple of 2')
    size = args.size * MiB
    nblk = size // BLKSIZE
    nch = args.procs * args.channels

    res = {'have': [], 'ack': [], 'at': []}
    first_have = []
    commit_s = []
    clients = []
    with common.Bench('scale') as b:
        try:
            oid = b.write_bigfile(size)
            mnt = b.mount()
            bigfile = mnt.bigfile(oid)
            at = read_at(bigfile)
            for _ in range(args.procs):
                clients.append(Client(bigfile, at, args.channels))
            for c in clients:
                line = c.line()
                assert line == 'ready', 'client %d: %r' % (c.proc.pid, line)
            stats = common.read_stats(mnt.path)
            assert stats['subscribed'] == nch, \
                'subscribed: %s, want %d' % (stats['subscribed'], nch)

            db = b.db()
            conn = db.open()
            f = conn.root()['f']
            for run in range(args.runs):
                f.write_block(run % nblk, os.urandom(4096))
                t0 = time.monotonic()
                transaction.commit()
                commit_s.append(time.monotonic() - t0)
                tid = u64(db.storage.lastTransaction())
                t_tid = TimeStamp(p64(tid)).timeTime()
                deadline = time.monotonic() + REPLY_TIMEOUT
                while read_at(bigfile) < tid:
                    if time.monotonic() > deadline:
                        raise RuntimeError('head/at did not reach %016x within %s s'
                                           % (tid, REPLY_TIMEOUT))
                    time.sleep(POLL_AT)
                t_at = time.time()
                reports = []
                for c in clients:
                    words = c.line().split(' ')
                    assert words[:2] == ['tid', '%016x' % tid], \
                        'client %d: %r, want tid %016x' % (c.proc.pid, words, tid)
                    reports.append([float(w) for w in words[2:]])
                first_have.append(min(r[0] for r in reports) - t_tid)
                res['have'].append(max(r[1] for r in reports) - t_tid)
                res['ack'].append(max(r[2] for r in reports) - t_tid)
                res['at'].append(t_at - t_tid)
                print('run %2d: first have %6.1f ms, all %d haves %6.1f ms, all acked %6.1f ms, '
                      'head/at moved %6.1f ms' % (run + 1, first_have[-1] * 1000, nch,
                                                  res['have'][-1] * 1000, res['ack'][-1] * 1000,
                                                  res['at'][-1] * 1000))
                conn.cacheMinimize()
                time.sleep(PAUSE)
            conn.close()
            stats = common.read_stats(mnt.path)
        finally:
            for c in clients:
                c.stop()

    med = {k: statistics.median(v) for k, v in res.items()}
    print('scale: %d subscribed channels in %d processes, %d one-block updates '
          '(commit itself: median %.1f ms), from the tid: first have median %.1f ms; '
          'all haves median %.1f ms (max %.1f); all acked median %.1f ms (max %.1f); '
          'head/at moved median %.1f ms (max %.1f); invalidations_sent %s, clients_killed %s'
          % (nch, args.procs, args.runs, statistics.median(commit_s) * 1000,
             statistics.median(first_have) * 1000,
             med['have'] * 1000, max(res['have']) * 1000, med['ack'] * 1000, max(res['ack']) * 1000,
             med['at'] * 1000, max(res['at']) * 1000, stats['invalidations_sent'],
             stats['clients_killed']))
    print('scale: one update with %d subscribers, commit -> head/at moved: median %.3f s '
          '(target <= %g s: %s); kernel %s'
          % (nch, med['at'], TARGET, common.verdict(med['at'] <= TARGET), common.kernel()))


if __name__ == '__main__':
    if sys.argv[1:2] == ['--client']:
        client_main(*sys.argv[2:5])
    else:
        main()
