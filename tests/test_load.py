"""Load (issue 5, item 4): one wcfs serving 1000 visible bigfiles and 1000
open channels, 100 of them subscribed by client processes that ack every
`have` (5 processes, 20 channels each, in poll), while 2 reader processes
stream head/data and a writer commits changes to 10 files (5 of them
subscribed) for WRITE_SECONDS: 20 commits a second, then a burst as fast as
it can, which wcfs has to catch up with.

Checked: nothing is lost (after the writer stops, head/at of every changed
file reaches the last tid and head/data is the writer's content; every `have`
a client got names exactly the blocks the writer changed since the client's
previous `have`, so their union covers every block changed while it was
subscribed); no client gets an error; no client is killed; every page a
reader reads is whole and of its own file and block; wcfs's RSS stays below
RSS_BOUND. Measured and printed, not asserted: how far the watcher falls
behind and how fast it catches up, and one update with the 100 subscribers
acking (SPEC §6 "scale"), from the commit until all 100 acked and head/at
moved.

Then a client makes `@<tid>/` directories, 20000 of them over the writer's
tids and the files: wcfs makes one uid alone four fifths of MAX_REVDIRS
(SPEC §4.6: it keeps a fifth free) and refuses the rest with ENOSPC, and its RSS stays bounded.

This file run as a script is the client or the reader process:

    python test_load.py client MOUNTPOINT CAT LOG OID...
    python test_load.py reader MOUNTPOINT LOG OIDS_JSON

Each writes JSON lines to LOG and ends on a `stop` line on its stdin.
"""

import errno
import json
import os
import random
import resource
import select
import statistics
import subprocess
import sys
import threading
import time

BS = 16 * 1024                  # blksize of every file
UNIT = 32                       # a block is one 32-byte unit repeated: its file, blk and seq
PAGE = 4096
NFILES = 1000
NBLK_WRITTEN = 8                # blocks of the files the writer changes
NBLK_OTHER = 2                  # blocks of the others
WRITTEN = range(10)             # files the writer changes
SUBSCRIBERS = {0: 60, 1: 10, 2: 10, 3: 10, 4: 10}   # file -> subscribed channels
NCLIENTS = 5                    # client processes, 20 channels each
NREADERS = 2
NCHANNELS = 1000
WRITE_SECONDS = 30
COMMIT_INTERVAL = 0.05          # the writer commits at most 20 times a second, ...
BURST_SECONDS = 10              # ... but as fast as it can in its last seconds,
BURST_COMMITS = 1000            # up to this many commits
MEASURED_UPDATES = 5
REVDIR_MKDIRS = 20000
RSS_BOUND = 1 << 30


def unit(f, blk, seq):
    return (b'f%05d b%03d s%07d' % (f, blk, seq)).ljust(UNIT - 1) + b'\n'


def block(f, blk, seq):
    return unit(f, blk, seq) * (BS // UNIT)


def check_block(data, f, blk):
    """-> (what is wrong or None, whether the block mixes revisions).

    A page of head/data comes from one read of one revision, so each page
    must be whole and of its file and block. The pages of one block may come
    from different revisions when a read races with an update: reads of
    head/data are not isolated (that is what the protocol is for).
    """
    if len(data) != BS:
        return 'f%d blk %d: %d bytes' % (f, blk, len(data)), False
    units = set()
    for off in range(0, BS, PAGE):
        u = data[off:off + UNIT]
        if not u.startswith(b'f%05d b%03d s' % (f, blk)):
            return 'f%d blk %d page %d: it is %r' % (f, blk, off // PAGE, u), False
        if data[off:off + PAGE] != u * (PAGE // UNIT):
            return 'f%d blk %d page %d: torn (starts %r)' % (f, blk, off // PAGE, u), False
        units.add(u)
    return None, len(units) > 1


def hex16(n):
    return '%016x' % n


# ==== the processes ====

def _log(logf, **what):
    logf.write(json.dumps(what) + '\n')
    logf.flush()


def client_main(mountpoint, cat, logpath, oids):
    """Subscribe a channel to each file of oids at cat; ack every have; log it."""
    logf = open(logpath, 'a')
    fds = []
    for oid in oids:
        path = os.path.join(mountpoint, 'bigfile', oid, 'head', 'invalidations')
        fds.append(os.open(path, os.O_RDWR | os.O_NONBLOCK))
    ch_of = {fd: i for i, fd in enumerate(fds)}
    bufs = {fd: b'' for fd in fds}
    subscribed = set()
    live = set(fds)
    poll_misses = 0
    for fd in fds:
        os.write(fd, b'want %s\n' % cat.encode())
    p = select.poll()
    for fd in fds + [0]:
        p.register(fd, select.POLLIN)

    def drain(fd):
        """Read what is pending on fd; -> whether there was something."""
        got = False
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return got
            except OSError as e:
                _log(logf, ch=ch_of[fd], oserror=errno.errorcode.get(e.errno, e.errno))
                p.unregister(fd)
                live.discard(fd)
                return got
            if not data:
                _log(logf, ch=ch_of[fd], oserror='EOF')
                p.unregister(fd)
                live.discard(fd)
                return got
            got = True
            bufs[fd] += data
            while b'\n' in bufs[fd]:
                line, _, bufs[fd] = bufs[fd].partition(b'\n')
                on_line(fd, line.decode('ascii', 'backslashreplace'))

    def on_line(fd, line):
        words = line.split(' ')
        ch = ch_of[fd]
        if words[0] != 'have':
            _log(logf, ch=ch, error=line)
            return
        if words[2:] == ['wait']:
            _log(logf, ch=ch, wait=words[1])
            return
        try:
            os.write(fd, b'ack\n')
        except OSError as e:
            _log(logf, ch=ch, oserror=errno.errorcode.get(e.errno, e.errno))
            return
        _log(logf, ch=ch, tid=words[1], ranges=[[int(x) for x in w.split('-')] for w in words[2:]],
             t=time.monotonic())
        if ch not in subscribed:
            subscribed.add(ch)
            if len(subscribed) == len(fds):
                _log(logf, ready=len(fds))

    while True:
        events = p.poll(1000)
        if not events:                      # nothing, says poll: check that it is so
            poll_misses += sum(drain(fd) for fd in list(live))
            continue
        for fd, _ in events:
            if fd == 0:
                if os.read(0, 100).strip() in (b'stop', b''):
                    _log(logf, done=True, poll_misses=poll_misses)
                    return
                continue
            drain(fd)


def reader_main(mountpoint, logpath, oids_json):
    """Read head/at and head/data of files, again and again; check every block."""
    oids = json.load(open(oids_json))
    logf = open(logpath, 'a')
    rng = random.Random(os.getpid())
    os.set_blocking(0, False)
    reads = nbytes = nmixed = 0
    errors = []
    while True:
        try:
            if os.read(0, 100) is not None:
                break
        except BlockingIOError:
            pass
        f = rng.choice(list(WRITTEN)) if rng.random() < 0.5 else rng.randrange(len(oids))
        fdir = os.path.join(mountpoint, 'bigfile', oids[f])
        try:
            with open(os.path.join(fdir, 'head', 'at'), 'rb') as at:
                assert len(at.read()) == 17
            with open(os.path.join(fdir, 'head', 'data'), 'rb', buffering=0) as df:
                data = df.read()
        except OSError as e:
            errors.append('f%d: %s' % (f, e))
            continue
        reads += 1
        nbytes += len(data)
        nblk = NBLK_WRITTEN if f in WRITTEN else NBLK_OTHER
        if len(data) != nblk * BS:
            errors.append('f%d: %d bytes' % (f, len(data)))
            continue
        for blk in range(nblk):
            bad, mixed = check_block(data[blk * BS:(blk + 1) * BS], f, blk)
            if bad:
                errors.append(bad)
            nmixed += mixed
    _log(logf, reads=reads, bytes=nbytes, mixed=nmixed, errors=errors[:20], nerrors=len(errors))


if __name__ == '__main__':
    if sys.argv[1] == 'client':
        client_main(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    else:
        reader_main(sys.argv[2], sys.argv[3], sys.argv[4])
    sys.exit(0)


# ==== the test ====

import pytest  # noqa: E402  (the processes above need none of this)

from devtools.procs import wait_for  # noqa: E402
from wcfs_lib import zbig  # noqa: E402
from wcfs_lib.files.bigfile import MAX_REVDIRS  # noqa: E402
from zhelp import Writer, head_at, read_bytes, stats  # noqa: E402

MiB = 1 << 20


def rss(pid):
    """VmRSS of a process, in bytes."""
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    raise AssertionError('no VmRSS for pid %d' % pid)


class RSSWatch:
    """Samples the RSS of a process every 0.2 s in a thread; .peak, .stop()."""

    def __init__(self, pid):
        self.pid = pid
        self.peak = rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.2):
            try:
                self.peak = max(self.peak, rss(self.pid))
            except (OSError, AssertionError):
                return

    def stop(self):
        self._stop.set()
        self._thread.join()


class LagWatch:
    """How many of the writer's commits wcfs's zhead is behind, sampled every 0.5 s."""

    def __init__(self, mnt, history):
        self.mnt = mnt
        self.history = history          # (tid, ...) appended by the writer
        self.max_behind = 0
        self.last_commit = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.5):
            zhead = int(stats(self.mnt)['zhead'], 16)
            tids = [t for t, *_ in list(self.history)]
            self.max_behind = max(self.max_behind, sum(t > zhead for t in tids))

    def stop(self):
        self._stop.set()
        self._thread.join()


class Proc:
    """One process of this file run as a script, logging JSON lines to logpath."""

    def __init__(self, args, logpath):
        self.logpath = str(logpath)
        open(self.logpath, 'w').close()
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *map(str, args)],
                                     stdin=subprocess.PIPE)
        self.pid = self.proc.pid
        self._pos = 0
        self._part = b''
        self.records = []

    def poll_log(self):
        """Read the JSON lines logged since the last call; -> them."""
        with open(self.logpath, 'rb') as f:
            f.seek(self._pos)
            data = f.read()
        self._pos += len(data)
        data = self._part + data
        *lines, self._part = data.split(b'\n')
        new = [json.loads(line) for line in lines]
        self.records += new
        return new

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=30):
        """Tell it to stop and wait for it; -> its exit code."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'stop\n')
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.poll_log()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def ranges_to_blocks(ranges):
    out = set()
    for start, stop in ranges:
        assert start % BS == 0 and stop % BS == 0, (start, stop)
        out |= set(range(start // BS, stop // BS))
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_load_1000_files_1000_channels_100_subscribers_readers_and_a_writer(zeo, wcfs_mount,
                                                                            tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    assert hard >= NCHANNELS + 100, 'RLIMIT_NOFILE hard limit %d is too low' % hard
    procs = []
    idle = []
    report = {}
    try:
        _run_load(zeo, wcfs_mount, tmp_path, procs, idle, report)
    finally:
        for fd in idle:
            os.close(fd)
        for p in procs:
            p.kill()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        print('load report:', json.dumps(report, indent=1))


def _run_load(zeo, wcfs_mount, tmp_path, procs, idle, report):
    rng = random.Random(5)
    w = Writer(zeo.db())

    # 1000 files in 10 commits
    files = []
    for i in range(NFILES):
        f = zbig.ZBigFile(BS)
        for blk in range(NBLK_WRITTEN if i in WRITTEN else NBLK_OTHER):
            f.write_block(blk, block(i, blk, 0), 'ZBlk0' if blk % 2 else 'ZBlk1')
        w.root['f%04d' % i] = f
        files.append(f)
        if i % 100 == 99:
            t0 = w.commit()
    oids = [hex16(int.from_bytes(f._p_oid, 'big')) for f in files]
    oids_json = tmp_path / 'oids.json'
    oids_json.write_text(json.dumps(oids))

    mnt = wcfs_mount(zeo.zurl, '--revdir-timeout', '3600')
    t = time.monotonic()
    for oid in oids:
        os.mkdir(os.path.join(mnt.path, 'bigfile', oid))
    report['mkdir 1000 bigfiles, s'] = round(time.monotonic() - t, 1)
    report['rss after mkdir of 1000 bigfiles, MiB'] = rss(mnt.pid) // MiB
    watch = RSSWatch(mnt.pid)

    # 100 subscribed channels in client processes, 900 idle ones here
    chans = [f for f, n in SUBSCRIBERS.items() for _ in range(n)]
    rng.shuffle(chans)
    per = len(chans) // NCLIENTS
    clients = []
    for c in range(NCLIENTS):
        mine = chans[c * per:(c + 1) * per]
        p = Proc(['client', mnt.path, hex16(t0), tmp_path / ('client%d.log' % c),
                  *(oids[f] for f in mine)], tmp_path / ('client%d.log' % c))
        p.files = mine
        clients.append(p)
        procs.append(p)
    for f in range(NFILES - (NCHANNELS - len(chans)), NFILES):
        idle.append(os.open(os.path.join(mnt.path, 'bigfile', oids[f], 'head', 'invalidations'),
                            os.O_RDWR | os.O_NONBLOCK))

    def all_ready():
        for p in clients:
            assert p.alive(), 'client %d exited: %r' % (p.pid, p.poll_log()[-3:])
            p.poll_log()
        return all(any('ready' in r for r in p.records) for p in clients)

    wait_for(all_ready, 60, 'clients to subscribe')
    st = stats(mnt)
    assert (int(st['channels']), int(st['subscribed'])) == (NCHANNELS, len(chans)), st
    report['rss with 1000 channels, MiB'] = rss(mnt.pid) // MiB

    readers = [Proc(['reader', mnt.path, tmp_path / ('reader%d.log' % r), oids_json],
                    tmp_path / ('reader%d.log' % r)) for r in range(NREADERS)]
    procs += readers

    # the writer: seq of every block of the written files, by tid
    seq = {f: [0] * NBLK_WRITTEN for f in WRITTEN}
    history = []                    # (tid, {f: {blk}})
    n = 0
    lag = LagWatch(mnt, history)
    paced_until = time.monotonic() + WRITE_SECONDS - BURST_SECONDS
    deadline = paced_until + BURST_SECONDS
    burst = 0
    while time.monotonic() < deadline and burst < BURST_COMMITS:
        if time.monotonic() < paced_until:
            time.sleep(max(0, COMMIT_INTERVAL - (time.monotonic() - lag.last_commit)))
        else:
            burst += 1
        changed = {}
        for f in rng.sample(list(WRITTEN), rng.randint(1, 3)):
            changed[f] = set(rng.sample(range(NBLK_WRITTEN), rng.randint(1, 3)))
            for blk in changed[f]:
                n += 1
                seq[f][blk] = n
                files[f].write_block(blk, block(f, blk, n), rng.choice(zbig.KINDS))
        history.append((w.commit(), changed, {f: list(s) for f, s in seq.items()}))
        lag.last_commit = time.monotonic()
        for p in clients + readers:
            assert p.alive(), 'pid %d exited with %s' % (p.pid, p.proc.returncode)
    last = history[-1][0]
    behind = sum(t > int(stats(mnt)['zhead'], 16) for t, *_ in history)
    report['commits'] = len(history)
    report['commits in the burst'] = burst

    # nothing lost: head/at and data of every written file
    fdirs = {f: os.path.join(mnt.path, 'bigfile', oids[f]) for f in WRITTEN}
    try:
        wait_for(lambda: all(head_at(d) == last for d in fdirs.values()), 180,
                 'head/at of the written files to reach the last tid')
    except AssertionError:
        raise AssertionError('last tid %s, zhead %s, head/at of the written files: %s' % (
            hex16(last), stats(mnt)['zhead'],
            {f: hex16(head_at(d)) for f, d in fdirs.items()})) from None
    catch_up = time.monotonic() - lag.last_commit
    lag.stop()
    report['watcher lag, max commits behind'] = lag.max_behind
    report['commits behind when the writer stopped'] = behind
    report['catching up after the writer stopped, s'] = round(catch_up, 1)
    report['transactions/s wcfs applied while catching up'] = round(behind / catch_up)
    for f, d in fdirs.items():
        assert read_bytes(os.path.join(d, 'head', 'data')) == files[f].read(), f

    for p in readers:
        assert p.stop() == 0
        (r,) = p.records
        report.setdefault('readers', []).append({k: r[k] for k in ('reads', 'bytes', 'mixed',
                                                                  'nerrors')})
        assert r['nerrors'] == 0, r['errors']
        assert r['reads'] > 0

    # one update with the 100 subscribers acking, measured
    times = []
    for _ in range(MEASURED_UPDATES):
        changed = {}
        for f in SUBSCRIBERS:
            n += 1
            seq[f][0] = n
            files[f].write_block(0, block(f, 0, n), 'ZBlk0')
            changed[f] = {0}
        t_start = time.monotonic()
        tid = w.commit()
        t_committed = time.monotonic()
        history.append((tid, changed, {f: list(s) for f, s in seq.items()}))
        fdirs = [os.path.join(mnt.path, 'bigfile', oids[f]) for f in SUBSCRIBERS]
        while any(head_at(d) != tid for d in fdirs):
            assert time.monotonic() - t_start < 60, 'update did not complete within 60 s'
            time.sleep(0.001)
        t_moved = time.monotonic()
        acks = []

        def all_acked():
            for p in clients:
                p.poll_log()
            acks[:] = [r['t'] for p in clients for r in p.records if r.get('tid') == hex16(tid)]
            return len(acks) == len(chans)

        wait_for(all_acked, 10, 'all clients to log their ack')
        times.append({'commit': round(t_committed - t_start, 4),
                      'commit->all acked': round(max(acks) - t_committed, 4),
                      'commit->head/at moved': round(t_moved - t_committed, 4)})
    report['update with 100 subscribers, s'] = times
    report['update with 100 subscribers, median commit->head/at moved, s'] = \
        statistics.median(t['commit->head/at moved'] for t in times)

    st = stats(mnt)
    report['stats after load'] = {k: st[k] for k in ('bigfiles', 'channels', 'subscribed',
                                                     'invalidations_sent', 'clients_killed',
                                                     'reads', 'blocks_loaded')}
    assert int(st['clients_killed']) == 0
    assert (int(st['channels']), int(st['subscribed'])) == (NCHANNELS, len(chans)), st

    # every client: alive, no error, each have names exactly what changed since the last
    for p in clients:
        assert p.alive(), 'client %d was killed' % p.pid
        assert p.stop() == 0
        assert p.records[-1].get('done'), p.records[-3:]
        report.setdefault('client poll misses', []).append(p.records[-1]['poll_misses'])
        bad = [r for r in p.records if 'error' in r or 'oserror' in r]
        assert bad == [], bad[:5]
        for ch, f in enumerate(p.files):
            haves = [r for r in p.records if r.get('ch') == ch and 'tid' in r]
            assert int(haves[0]['tid'], 16) == t0 and haves[0]['ranges'] == [], haves[0]
            prev = t0
            for h in haves[1:]:
                tid = int(h['tid'], 16)
                assert tid > prev
                want = set().union(*(c.get(f, set()) for t, c, _ in history if prev < t <= tid))
                assert ranges_to_blocks(h['ranges']) == want, (f, h)
                prev = tid
            last_change = max(t for t, c, _ in history if f in c)
            assert prev >= last_change, 'f%d: last have %x before last change %x' % (
                f, prev, last_change)
    for fd in idle:
        try:
            os.read(fd, 100)
            raise AssertionError('idle channel got a reply')
        except BlockingIOError:
            pass
    report['rss peak during load, MiB'] = watch.peak // MiB
    assert watch.peak < RSS_BOUND

    # a client making 20000 @<tid>/ directories over the writer's tids and the files
    tids = [t for t, _, _ in history]
    pairs = [(f, t) for f in range(NFILES) for t in tids][:REVDIR_MKDIRS]
    assert len(pairs) == REVDIR_MKDIRS
    outcomes = {}
    made = []
    t = time.monotonic()
    for f, tid in pairs:
        try:
            os.mkdir(os.path.join(mnt.path, 'bigfile', oids[f], '@' + hex16(tid)))
            e = 'ok'
            made.append((f, tid))
        except OSError as exc:
            e = errno.errorcode.get(exc.errno, exc.errno)
        outcomes[e] = outcomes.get(e, 0) + 1
    report['revdir mkdirs'] = outcomes
    report['revdir mkdirs/s'] = round(len(pairs) / (time.monotonic() - t))
    report['stats revdirs'] = int(stats(mnt)['revdirs'])
    report['rss after revdirs, MiB'] = rss(mnt.pid) // MiB
    watch.stop()
    report['rss peak, MiB'] = watch.peak // MiB
    share = MAX_REVDIRS - MAX_REVDIRS // 5     # of one uid alone
    assert outcomes == {'ok': share, 'ENOSPC': REVDIR_MKDIRS - share}, outcomes
    assert int(stats(mnt)['revdirs']) == share
    for f, tid in rng.sample(made, 20):
        fseq = next((s for t, _, s in reversed(history) if t <= tid), None)
        nblk = NBLK_WRITTEN if f in WRITTEN else NBLK_OTHER
        want = b''.join(block(f, blk, fseq[f][blk] if f in WRITTEN else 0) for blk in range(nblk))
        got = read_bytes(os.path.join(mnt.path, 'bigfile', oids[f], '@' + hex16(tid), 'data'))
        assert got == want, (f, hex16(tid))
    assert watch.peak < RSS_BOUND
    assert mnt.proc.poll() is None
