"""Big file (issue 9): what one ZBigFile of N 4 KiB blocks costs wcfs.

The database holds `big`, a ZBigFile of N blocks of 4 KiB (default 500 000;
each a ZBlk0 of 17 bytes, `%016x\\n` of its block number, the rest zeros), and
`small`, a ZBigFile of a few such blocks. `big` has GAP holes in the middle,
where blocks are inserted later; before that, enough of the holes are filled
that the B-tree bucket they fall in is a few entries short of splitting. Both
are written straight into the Data.fs before runzeo starts (through ZEO it
would take minutes), in transactions of COMMIT_EVERY blocks. One wcfs serves
them; bigfile/<small> is made first.

Every time "from the tid" starts at the wall-clock time the ZEO server put in
the transaction's tid when it took the commit lock (an upper bound of the time
from the commit, as in bench_latency.py), and ends when head/at, read every
0.5 ms at offset 0 of an open fd (it is direct_io), shows the tid, or when a
subscribed client read the `have`.

1. unrelated commits, `big` not visible: UNRELATED one-block commits to
   `small`, each waited for: from the tid to small's head/at. The baseline.
2. mkdir bigfile/<big>, in a thread; its time (target <= 2 s). VmRSS of wcfs
   (/proc/<pid>/status) before and right after, over N: bytes per visible
   block (target <= 64); VmHWM, reset just before the mkdir (clear_refs),
   is the peak of the load. Meanwhile, every MOVING_PAUSE s while the mkdir
   is not done, a one-block commit to `small`: from the tid to small's
   head/at (target: the largest <= 0.5 s, other heads keep moving).
3. unrelated commits, `big` visible: as 1 (target: median within 2x of 1's).
4. With a client subscribed to big's head/invalidations (bench_latency.py's
   client process: `want` head/at, acks every `have` at once):
   - CHANGES content changes: new content for an existing block (only its
     ZBlk0 changes); from the tid to the client's `have` (target median
     <= 5 ms, as with one small file) and to head/at;
   - CHANGES inserts of a new block into the holes (a bucket insert; one of
     them splits the bucket, the line says which), then CHANGES deletes of
     them (bucket deletes): blktab changes, from the tid to the client's
     `have` and to head/at (target: head/at median <= 20 ms).
5. READS random cold 4 KiB reads of big's head/data (pread of blocks never
   read through this mount: nothing of them in the page cache or in wcfs;
   the server's Data.fs may be in the OS's cache), each checked: reads per
   second, and blocks_loaded of .wcfs/stats per read. No target: the
   baseline of issue 11.

Waits are bounded by --timeout: a mkdir or head/at that takes longer prints
MISS with what was seen, and what needs it is not measured.
"""

import argparse
import contextlib
import itertools
import os
import random
import statistics
import threading
import time

import transaction
from BTrees.LOBTree import LOBTree, LOBucket
from ZODB.TimeStamp import TimeStamp
from ZODB.utils import p64, u64

import common
from bench_latency import Client
from wcfs_lib import zbig

BLKSIZE = 4096
SMALL_BLOCKS = 4
GAP = 64                # holes in the middle of `big`
SPLIT_AFTER = 4         # the holes' bucket is filled so that this many inserts split it
COMMIT_EVERY = 50000    # blocks per transaction while writing
MOVING_PAUSE = 0.2      # seconds between commits to `small` while the mkdir loads
PAUSE = 0.05            # seconds between measured commits

TARGET_MKDIR = 2.0      # seconds
TARGET_RSS = 64         # bytes per visible block
TARGET_MOVING = 0.5     # seconds, the largest lag of `small` during the mkdir
TARGET_RATIO = 2.0      # unrelated commits, `big` visible over not
TARGET_BLKTAB = 0.020   # seconds, median
TARGET_HAVE = 0.005     # seconds, median


def content(blk):
    return b'%016x\n' % blk


def tid_time(tid):
    return TimeStamp(p64(tid)).timeTime()


def report(what, figure, target, ok):
    print('%s: %s (target %s): %s' % (what, figure, target, common.verdict(ok)))


def ms(seconds):
    return '%.1f ms' % (seconds * 1000)


# ---- the database ----

def bucket_of(tree, key):
    """(the bucket of the LOBTree `tree` that holds key or would get it, its
    number of entries); a tree of one bucket keeps it inline: (tree, n)."""
    node = tree
    while True:
        children = node.__getstate__()[0]
        if len(children) == 1 and isinstance(children[0], tuple):
            return node, len(children[0]) // 2
        i = 0
        for j in range(1, len(children), 2):   # child, key, child, ...: key starts the next child
            if key < children[j]:
                break
            i = j + 1
        child = children[i]
        if isinstance(child, LOBucket):
            return child, len(child)
        node = child


class Layout:
    """Which blocks `big` has: [0, mid) and [mid + GAP, nblocks + GAP), and
    the holes [mid, first_free) filled to bring their bucket near a split."""

    def __init__(self, nblocks):
        self.nblocks = nblocks
        self.mid = nblocks // 2
        self.first_free = self.mid

    def written(self):
        return itertools.chain(range(self.mid), range(self.mid + GAP, self.nblocks + GAP))

    @property
    def visible(self):
        return self.nblocks + self.first_free - self.mid


def write_database(b, layout):
    """Commit `big` and `small` into the Data.fs; -> (big's oid, small's oid)."""
    db = b.file_db()
    try:
        conn = db.open()
        root = conn.root()
        small = root['small'] = zbig.ZBigFile(BLKSIZE)
        for blk in range(SMALL_BLOCKS):
            small.write_block(blk, content(blk))
        big = root['big'] = zbig.ZBigFile(BLKSIZE)
        transaction.commit()
        for i, blk in enumerate(layout.written()):
            big.write_block(blk, content(blk))
            if i % COMMIT_EVERY == COMMIT_EVERY - 1:
                transaction.commit()
                conn.cacheMinimize()
        transaction.commit()
        fill = LOBTree.max_leaf_size + 1 - SPLIT_AFTER
        while bucket_of(big.blktab, layout.first_free)[1] < fill and \
                layout.first_free < layout.mid + GAP // 2:
            big.write_block(layout.first_free, content(layout.first_free))
            layout.first_free += 1
        transaction.commit()
        oids = u64(big._p_oid), u64(small._p_oid)
        conn.close()
        return oids
    finally:
        db.close()


class Writer:
    """The benchmark's ZEO connection; commit(change) -> the tid."""

    def __init__(self, b):
        self.db = b.db()
        self.conn = self.db.open()
        self.root = self.conn.root()

    def commit(self, change):
        change(self.root)
        transaction.commit()
        return u64(self.db.storage.lastTransaction())

    def touch_small(self, i):
        return self.commit(lambda root: root['small'].write_block(i % SMALL_BLOCKS,
                                                                  b'%d' % time.time_ns()))


# ---- the measurements ----

def unrelated_lags(w, small_at, n, timeout):
    """n one-block commits to `small`: seconds from the tid to its head/at, or
    None for one that did not show within timeout (the rest not measured)."""
    lags = []
    for i in range(n):
        tid = w.touch_small(i)
        t = common.wait_at(small_at, tid, timeout)
        lags.append(t - tid_time(tid) if t is not None else None)
        if t is None:
            break
        time.sleep(PAUSE)
    return lags


class Mkdir(threading.Thread):
    """mkdir of one path, timed; .seconds once done, .error if it failed."""

    def __init__(self, path):
        super().__init__(name='mkdir', daemon=True)   # wcfs's end ends a mkdir that hangs
        self.path = path
        self.seconds = None
        self.error = None

    def run(self):
        t0 = time.perf_counter()
        try:
            os.mkdir(self.path)
        except OSError as e:
            self.error = e
        self.seconds = time.perf_counter() - t0


def mkdir_big(w, mnt, oid, small_at, timeout):
    """mkdir bigfile/<big> while `small` keeps being committed to; -> (the
    Mkdir, RSS before, RSS after, peak, [lags of small during it])."""
    pid = mnt.proc.pid
    common.reset_peak_rss(pid)
    rss0, _ = common.proc_status(pid)
    mk = Mkdir(os.path.join(mnt.path, 'bigfile', '%016x' % oid))
    deadline = time.monotonic() + timeout
    mk.start()
    lags = []
    while True:
        mk.join(MOVING_PAUSE)
        if not mk.is_alive() or time.monotonic() > deadline:
            break
        tid = w.touch_small(len(lags))
        t = common.wait_at(small_at, tid, max(0.0, deadline - time.monotonic()))
        lags.append(t - tid_time(tid) if t is not None else None)
        if t is None:
            break
    mk.join(max(0.0, deadline - time.monotonic()))
    rss1, hwm = common.proc_status(pid)
    return mk, rss0, rss1, hwm, lags


def subscribed_lags(w, client, big_at, changes, timeout):
    """Each change(root, i) committed and waited for: -> [(i, lag to the
    client's `have`, lag to head/at, what the change did)], ending early at
    the first one not seen within timeout (lags None)."""
    out = []
    for i, change in changes:
        tid = w.commit(lambda root: change(root, i))
        t0 = tid_time(tid)
        try:
            words = client.line(timeout).split(' ')
        except RuntimeError:
            out.append((i, None, None, 'no have'))
            break
        assert words[0] == 'have' and int(words[1], 16) == tid, \
            'commit %016x: the client read %r' % (tid, words)
        t_at = common.wait_at(big_at, tid, timeout)
        out.append((i, float(words[3]) - t0, t_at - t0 if t_at is not None else None, ''))
        if t_at is None:
            break
        time.sleep(PAUSE)
    return out


def blktab_changes(layout, n):
    """(i, change) for n inserts into the holes, then n deletes of them;
    each change notes in `splits` the keys whose commit split a bucket."""
    keys = range(layout.first_free, layout.first_free + n)
    splits = set()

    def insert(root, key):
        before = bucket_of(root['big'].blktab, key)
        root['big'].write_block(key, content(key))
        after = bucket_of(root['big'].blktab, key)
        if after[0] is not before[0] or after[1] != before[1] + 1:
            splits.add(key)

    def delete(root, key):
        root['big'].delete_block(key)

    return [(k, insert) for k in keys] + [(k, delete) for k in keys], splits


def cold_reads(mnt, oid, layout, n, rng):
    """n preads of random blocks never read; -> (seconds, blocks loaded)."""
    blocks = rng.sample(range(layout.mid), n // 2) + \
        rng.sample(range(layout.mid + GAP, layout.nblocks + GAP), n - n // 2)
    rng.shuffle(blocks)
    loaded0 = common.read_stats(mnt.path)['blocks_loaded']
    fd = os.open(os.path.join(mnt.path, 'bigfile', '%016x' % oid, 'head', 'data'), os.O_RDONLY)
    try:
        t0 = time.perf_counter()
        for blk in blocks:
            data = os.pread(fd, BLKSIZE, blk * BLKSIZE)
            if data.rstrip(b'\0') != content(blk):
                raise RuntimeError('big block %d: read %r' % (blk, data[:40]))
        t = time.perf_counter() - t0
    finally:
        os.close(fd)
    return t, common.read_stats(mnt.path)['blocks_loaded'] - loaded0


# ---- printing ----

def summary(lags):
    ok = [x for x in lags if x is not None]
    if not ok:
        return None, 'none seen'
    text = 'median %s, max %s over %d' % (ms(statistics.median(ok)), ms(max(ok)), len(ok))
    if len(ok) < len(lags):
        text += ', then one not seen'
    return statistics.median(ok), text


def print_mkdir(mk, n, rss0, rss1, hwm, lags, timeout):
    if mk.seconds is None:
        report('mkdir of %d blocks' % n, 'not done after %d s' % timeout,
               '<= %g s' % TARGET_MKDIR, False)
        report('RSS per visible block', 'not measured (mkdir not done; VmRSS grew by %.1f MiB)'
               % ((rss1 - rss0) / common.MiB), '<= %d B' % TARGET_RSS, False)
    else:
        report('mkdir of %d blocks' % n, '%.2f s' % mk.seconds, '<= %g s' % TARGET_MKDIR,
               mk.error is None and mk.seconds <= TARGET_MKDIR)
        per_blk = (rss1 - rss0) / n
        report('RSS per visible block', '%.0f B (VmRSS %.1f -> %.1f MiB, peak VmHWM %.1f MiB)'
               % (per_blk, rss0 / common.MiB, rss1 / common.MiB, hwm / common.MiB),
               '<= %d B' % TARGET_RSS, mk.error is None and per_blk <= TARGET_RSS)
    if not lags:
        report('small file during the mkdir', 'no commit: the mkdir took under %g s'
               % MOVING_PAUSE, '<= %g s' % TARGET_MOVING, True)
        return
    worst = None if None in lags else max(lags)
    if worst is None:
        figure = 'commits: %d, the last not seen in head/at within %d s' % (len(lags), timeout)
    else:
        figure = 'commits: %d, from the tid to head/at: %s' % (len(lags), summary(lags)[1])
    report('small file during the mkdir', figure, 'the largest <= %g s' % TARGET_MOVING,
           worst is not None and worst <= TARGET_MOVING)


def print_changes(kind, rows, split_rows, target, via):
    """One line of the lags of `rows` (subscribed_lags) and of those of
    them that split a bucket, the verdict on the median of `via`."""
    have = summary([r[1] for r in rows])
    at = summary([r[2] for r in rows])
    med = have[0] if via == 'have' else at[0]
    note = ''
    if split_rows:
        note = '; the insert of block %s split its bucket: have %s, head/at %s' % (
            ', '.join(str(r[0]) for r in split_rows),
            ', '.join(ms(r[1]) for r in split_rows),
            ', '.join(ms(r[2]) if r[2] is not None else '-' for r in split_rows))
    report(kind, 'from the tid to `have`: %s; to head/at: %s%s' % (have[1], at[1], note),
           '%s median <= %s' % (via, ms(target)), med is not None and med <= target)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--blocks', type=int, default=500000,
                   help='blocks of the big file (default 500000)')
    p.add_argument('--changes', type=int, default=10,
                   help='commits of each kind to the big file: content, insert, delete (default 10)')
    p.add_argument('--unrelated', type=int, default=20,
                   help='commits to the small file, without and with the big one (default 20)')
    p.add_argument('--reads', type=int, default=3000, help='random cold reads (default 3000)')
    p.add_argument('--timeout', type=float, default=240,
                   help='seconds a mkdir or a head/at may take before MISS (default 240)')
    p.add_argument('--seed', type=int, default=1)
    args = p.parse_args()
    if args.blocks < 2 * args.reads or min(args.changes, args.unrelated, args.reads) <= 0:
        p.error('counts must be positive, --blocks at least twice --reads')
    if args.changes > GAP // 2:
        p.error('--changes is at most %d' % (GAP // 2))
    rng = random.Random(args.seed)
    layout = Layout(args.blocks)

    print('kernel: %s' % common.kernel())
    with common.Bench('bigfile') as b, contextlib.ExitStack() as stack:
        def open_at(bigfile_dir):
            fd = os.open(os.path.join(bigfile_dir, 'head', 'at'), os.O_RDONLY)
            stack.callback(os.close, fd)
            return fd

        t0 = time.monotonic()
        big, small = write_database(b, layout)
        print('wrote %d blocks of 4 KiB in %.0f s' % (layout.visible, time.monotonic() - t0))
        w = Writer(b)
        mnt = b.mount()
        small_at = open_at(mnt.bigfile(small))

        before = unrelated_lags(w, small_at, args.unrelated, args.timeout)
        mk, rss0, rss1, hwm, moving = mkdir_big(w, mnt, big, small_at, args.timeout)
        print_mkdir(mk, layout.visible, rss0, rss1, hwm, moving, args.timeout)
        if mk.seconds is None or mk.error is not None:
            if mk.error is not None:
                print('mkdir bigfile/%016x: %s' % (big, mk.error))
            print('the rest needs the big file visible: not measured')
            return

        after = unrelated_lags(w, small_at, args.unrelated, args.timeout)
        m0, m1 = summary(before), summary(after)
        ratio = m1[0] / m0[0] if m0[0] and m1[0] is not None else None
        report('unrelated commit, from the tid to head/at',
               'big file visible: %s; not visible: %s; ratio %s'
               % (m1[1], m0[1], '%.2f' % ratio if ratio is not None else '-'),
               'ratio <= %g' % TARGET_RATIO, ratio is not None and ratio <= TARGET_RATIO)

        bigdir = os.path.join(mnt.path, 'bigfile', '%016x' % big)
        big_at = open_at(bigdir)
        client = Client(os.path.join(bigdir, 'head', 'invalidations'), common.read_at(big_at))
        stack.callback(client.stop)
        line = client.line(common.START_TIMEOUT + args.timeout)    # a process starts
        assert line == 'ready', 'client: %r' % line

        def content_change(root, blk):
            root['big'].write_block(blk, b'%d' % time.time_ns())

        rows = subscribed_lags(w, client, big_at,
                               [(blk, content_change) for blk in range(args.changes)],
                               args.timeout)
        print_changes('block content change', rows, [], TARGET_HAVE, 'have')
        changes, splits = blktab_changes(layout, args.changes)
        rows = subscribed_lags(w, client, big_at, changes, args.timeout)
        n = args.changes
        split_rows = [r for r in rows[:n] if r[0] in splits and r[1] is not None]
        print_changes('blktab change (%d inserts, %d deletes)' % (n, n), rows, split_rows,
                      TARGET_BLKTAB, 'head/at')
        for kind, part in (('insert', rows[:n]), ('delete', rows[n:])):
            print('  %s: to `have` %s; to head/at %s'
                  % (kind, summary([r[1] for r in part])[1], summary([r[2] for r in part])[1]))

        t, loaded = cold_reads(mnt, big, layout, args.reads, rng)
        print('random cold 4 KiB reads: %d in %.2f s: %.0f reads/s, %.2f blocks loaded per read '
              '(no target: the baseline of issue 11)'
              % (args.reads, t, args.reads / t, loaded / args.reads))


if __name__ == '__main__':
    main()
