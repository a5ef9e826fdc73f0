"""Soak (issue 15): readers through the client library and through `@<tid>/`
check every byte they read against the writer's model while a writer grows,
shrinks and changes files, for --duration seconds (default 600); ZEO, or
RelStorage with --db postgres. Targets: reads > 0 with 0 mismatches, 0
errors, 0 crashed readers, and head lag p99 <= 0.5 s.

The writer (this process) keeps NFILES ZBigFiles of different blksizes and
commits every --interval seconds (default 0.05): blocks rewritten whole, as
ZBlk0 or ZBlk1; short blocks (trailing zeros); a few 4 KiB chunks of a block
changed (one ZData of a ZBlk1); holes; growth past the end (often leaving
holes); shrinking; now and then a new blktab, a commit of two or three
files, or one that changes no file.

The model stays small: the content of a block is named by a descriptor
(seed, length, patches): `random.Random(seed).randbytes(length)`, zeros to
blksize, with each patch (chunk, seed) laying `randbytes(CHUNK)` of its seed
over that 4 KiB chunk; a hole is null. Seeds are never reused, so a block
that shows another block's or another revision's bytes is caught. After each
commit the writer appends one JSON line to the model log:
`{"tid", "t" (CLOCK_MONOTONIC when commit() returned), "files": {index:
[descriptor of each block]}}` for the files the commit changed (the first
line has every file, their oids and blksizes). Every other process tails it.

Processes, each this file run with `--reader KIND ...`, in a session of
their own (^C reaches only this process, which ends them by pid); each
exits once the stop file exists or its parent is gone:

- client readers: a `wcfs_lib.client` connection with two views of every
  file, `latest` (moved each round to the newest tid of the log: wcfs may
  not have it yet) and `lagging` (now to a recent tid, now to any tid of the
  run); now and then a view is closed and opened again. Each round checks
  every view whole, twice, a short pause apart: its `at`, its size and every
  byte against the model as of `at`.
- `@<tid>/` readers: mkdir `bigfile/<oid>/@<tid>` of a file and a tid
  (newest, recent or any), open its data, check st_size and every byte,
  read in pieces of a random size or through a shared mapping.
- the head lag sampler: for the newest record of the log, polls head/at of
  a file the commit changed (its head moves only once every view acked)
  every millisecond until it shows the tid; the lag is from commit()
  returning to then. Records that come while it waits are skipped.

Each reader writes JSON lines to a file of its own: its counts every few
seconds, each mismatch and error (the first ones in full). A reader that
dies is counted (a signal: a crash, with its faulthandler traceback; any
other exit: an error) and started again. At the end the writer stops, every
file's head/at must reach the last tid and head/data must equal the model;
wcfs's log lines with ERROR or Traceback, and `clients_killed`, are shown
(a killed client is counted as an error).

Prints reads (whole files checked), mismatches, errors, crashed readers and
head lag (median, p99, max), then one result line ending in OK or MISS; the
exit status is 0 only if every target is met over the whole duration. ^C or
SIGTERM stops the run early, after the commit in progress (twice: at once):
the figures so far are printed, but for the readers' last second (^C in a
terminal ends wcfs too), status 1.
"""

import argparse
import errno
import functools
import hashlib
import json
import mmap
import os
import random
import signal
import subprocess
import sys
import time

import transaction
from ZODB.utils import u64

import common
from common import last_transaction

sys.path.insert(0, str(common.ROOT))
from wcfs_lib import zbig  # noqa: E402

BLKSIZES = (16384, 65536, 65536, 262144)    # of the files, in turn
CHUNK = 4096                    # a patch's size: zbig's chunk of a ZBlk1
START_BLOCKS = 24
MIN_BLOCKS, MAX_BLOCKS = 4, 64  # the writer grows below, shrinks above
MAX_PATCHES = 6                 # more, and the block is written anew
LAG_TARGET = 0.5                # seconds, p99
LAG_TIMEOUT = 10                # the sampler gives up on a tid after this many seconds
CATCH_UP_TIMEOUT = 60           # after the writer stops, for head/at to reach the last tid
REPORT_EVERY = 2                # seconds between a reader's count lines
MESSAGES_KEPT = 20              # a reader writes its first mismatches and errors in full
READER_STOP_TIMEOUT = 60
INTERRUPT_MARGIN = 1            # seconds of the readers' results dropped before a ^C
EXPECTED_CACHE = 64 << 20       # bytes of expected blocks a reader keeps


# ---- the model (every process) ----

def randbytes(seed, n):
    return random.Random(seed).randbytes(n)


def desc_from_json(d):
    return None if d is None else (d[0], d[1], tuple(tuple(p) for p in d[2]))


def expected_block(desc, blksize):
    """The bytes of a block described by desc (None: a hole)."""
    if desc is None:
        return bytes(blksize)
    seed, length, patches = desc
    data = bytearray(randbytes(seed, length))
    data += bytes(blksize - length)
    for chunk, pseed in patches:
        data[chunk * CHUNK:(chunk + 1) * CHUNK] = randbytes(pseed, CHUNK)
    return bytes(data)


class Expected:
    """The expected blocks, by descriptor: their digests, kept for the run
    (16 bytes each), and their bytes, the last few MiB of them."""

    def __init__(self, limit=EXPECTED_CACHE):
        self.limit = limit
        self.digests = {}
        self.blocks = {}
        self.nbytes = 0

    def digest(self, desc, blksize):
        key = (desc, blksize)
        d = self.digests.get(key)
        if d is None:
            d = self.digests[key] = digest(self.block(desc, blksize))
        return d

    def block(self, desc, blksize):
        key = (desc, blksize)
        data = self.blocks.get(key)
        if data is None:
            data = expected_block(desc, blksize)
            if self.nbytes + blksize > self.limit:
                self.blocks.clear()
                self.nbytes = 0
            self.blocks[key] = data
            self.nbytes += blksize
        return data


def digest(data):
    """hashlib lets the GIL go while it hashes more than a few KiB: page faults
    of a mapping served here by wcfs do not hold up the client's ack thread."""
    return hashlib.blake2b(data, digest_size=16).digest()


class ModelLog:
    """The writer's model log, tailed: the blocks of every file as of every tid."""

    def __init__(self, path):
        self.f = open(path, 'rb')
        self.buf = b''
        self.tids = []              # in commit order
        self.files = {}             # tid -> tuple, a tuple of block descriptors a file
        self.t = {}                 # tid -> CLOCK_MONOTONIC of its commit
        self.changed = {}           # tid -> indexes of the files it changed
        self.oids = self.blksizes = None
        self.update()
        if not self.tids:
            raise RuntimeError('%s: no first record' % path)

    def update(self):
        """Read what was appended; -> how many records."""
        self.buf += self.f.read()
        lines = self.buf.split(b'\n')
        self.buf = lines.pop()
        for line in lines:
            self.add(json.loads(line))
        return len(lines)

    def add(self, rec):
        tid = rec['tid']
        if self.oids is None:
            self.oids, self.blksizes = rec['oids'], rec['blksizes']
            cur = [()] * len(self.oids)
        else:
            cur = list(self.files[self.tids[-1]])
        for i, blocks in rec['files'].items():
            cur[int(i)] = tuple(desc_from_json(d) for d in blocks)
        self.tids.append(tid)
        self.files[tid] = tuple(cur)
        self.t[tid] = rec['t']
        self.changed[tid] = [int(i) for i in rec['files']]

    def size(self, tid, fi):
        return len(self.files[tid][fi]) * self.blksizes[fi]

    def pick_tid(self, rng):
        """The newest tid, a recent one, or any of the run."""
        r = rng.random()
        if r < 0.5:
            return self.tids[-1]
        if r < 0.9:
            return rng.choice(self.tids[-100:])
        return rng.choice(self.tids)


def compare(data, model, tid, fi, expected, hold_gil=False):
    """Check data (a buffer of the file fi as of tid) against the model, block
    by block: by digest, or with hold_gil by a copy of the block compared
    whole (the GIL held through every page fault); -> a description of the
    first difference, or None."""
    blocks, bs = model.files[tid][fi], model.blksizes[fi]
    for blk, desc in enumerate(blocks):
        got = data[blk * bs:(blk + 1) * bs]
        if hold_gil:
            same = bytes(got) == expected.block(desc, bs)
        else:
            same = digest(got) == expected.digest(desc, bs)
        if not same:
            got, want = bytes(got), expected.block(desc, bs)
            off = next((i for i in range(len(got)) if got[i] != want[i]), len(got))
            return ('file %d (%s) @%016x blk %d: first wrong byte at %d of the block; %s'
                    % (fi, model.oids[fi], tid, blk, off, whose(got, model, fi, blk, bs,
                                                                  expected)))
    return None


def whose(got, model, fi, blk, bs, expected):
    """Which revision of the model the wrong bytes belong to, if any (last 200 tids)."""
    seen = set()
    for tid in reversed(model.tids[-200:]):
        blocks = model.files[tid][fi]
        desc = blocks[blk] if blk < len(blocks) else None
        if desc not in seen:
            seen.add(desc)
            if expected.block(desc, bs) == got:
                return 'it is the block as of %016x' % tid
    return 'it is no recent revision of the block'


# ---- the readers (processes of their own) ----

class Report:
    """A reader's result file: counts every REPORT_EVERY s, mismatches, errors."""

    def __init__(self, path):
        self.f = open(path, 'a')
        self.counts = {'reads': 0, 'bytes': 0, 'mismatches': 0, 'errors': 0}
        self.last = time.monotonic()

    def write(self, **what):
        self.f.write(json.dumps(dict(what, t=time.monotonic())) + '\n')
        self.f.flush()

    def count(self, name, n=1):
        self.counts[name] = self.counts.get(name, 0) + n
        if time.monotonic() - self.last > REPORT_EVERY:
            self.flush()

    def flush(self):
        self.write(counts=self.counts)
        self.last = time.monotonic()

    def problem(self, kind, msg):
        """kind: 'mismatches' or 'errors'."""
        if self.counts[kind] < MESSAGES_KEPT:
            self.write(**{kind: msg})
        self.count(kind)


def running(stoppath, parent):
    return not os.path.exists(stoppath) and os.getppid() == parent


def client_reader(mnt, model, rng, report, stoppath, parent, hold_gil=False):
    from wcfs_lib import client

    expected = Expected()
    views = {}                  # (file, 'latest' | 'lagging') -> View

    def move(key, tid):
        view = views.get(key)
        if view is not None and rng.random() < 0.05:
            views.pop(key).close()
            view = None
        if view is None:
            views[key] = wc.open(int(model.oids[key[0]], 16), at=tid)
            report.count('opens')
        else:
            view.resync(tid)
            report.count('resyncs')
        if views[key].at != tid:
            report.problem('mismatches', 'client view %s of file %d: at %016x, asked %016x'
                           % (key[1], key[0], views[key].at, tid))

    def check(key, view):
        fi = key[0]
        tid = view.at
        size = view.size
        if size != model.size(tid, fi):
            report.problem('mismatches', 'file %d @%016x: view size %d, model %d'
                           % (fi, tid, size, model.size(tid, fi)))
            return
        data = memoryview(view.ndarray()) if size else b''
        bad = compare(data, model, tid, fi, expected, hold_gil)
        if bad:
            report.problem('mismatches', 'client view %s: %s' % (key[1], bad))
        report.count('reads')
        report.count('bytes', size)

    with client.connect(mnt) as wc:
        while running(stoppath, parent):
            model.update()
            for fi in range(len(model.oids)):
                for name in ('latest', 'lagging'):
                    if name == 'latest':
                        tid = model.tids[-1]
                    elif (fi, name) in views and rng.random() < 0.7:
                        continue
                    else:
                        tid = model.pick_tid(rng)
                    try:
                        move((fi, name), tid)
                    except (client.WCFSError, OSError) as e:
                        report.problem('errors', 'client view %s of file %d to %016x: %s'
                                       % (name, fi, tid, e))
                        drop(views, (fi, name))
            for _ in ('at once', 'later'):
                for key, view in list(views.items()):
                    try:
                        check(key, view)
                    except (client.WCFSError, OSError) as e:
                        report.problem('errors', 'client view %s of file %d @%016x: %s'
                                       % (key[1], key[0], view.at, e))
                        drop(views, key)
                time.sleep(rng.uniform(0, 0.05))
        for key in list(views):
            drop(views, key)


def drop(views, key):
    view = views.pop(key, None)
    if view is not None:
        try:
            view.close()
        except Exception:
            pass            # the view failed already: what matters was reported


def tid_reader(mnt, model, rng, report, stoppath, parent):
    expected = Expected()
    while running(stoppath, parent):
        model.update()
        fi = rng.randrange(len(model.oids))
        tid = model.pick_tid(rng)
        how = rng.choice(('read', 'mmap'))
        try:
            data = read_revision(mnt, model.oids[fi], tid, how, rng)
        except OSError as e:
            report.problem('errors', '@%016x/data of file %d (%s): %s' % (tid, fi, how, e))
            continue
        if len(data) != model.size(tid, fi):
            report.problem('mismatches', 'file %d @%016x/data (%s): %d bytes, model %d'
                           % (fi, tid, how, len(data), model.size(tid, fi)))
        else:
            bad = compare(data, model, tid, fi, expected)
            if bad:
                report.problem('mismatches', '@<tid>/data (%s): %s' % (how, bad))
        report.count('reads')
        report.count('bytes', len(data))
        time.sleep(rng.uniform(0, 0.02))


def read_revision(mnt, oid, tid, how, rng):
    """mkdir bigfile/<oid>/@<tid> unless there, read its data whole (read(2) in
    pieces of a random size, or through a shared mapping); -> the bytes."""
    path = os.path.join(mnt, 'bigfile', oid, '@%016x' % tid)
    for _ in range(3):
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        try:
            fd = os.open(os.path.join(path, 'data'), os.O_RDONLY)
            break
        except FileNotFoundError:
            continue            # wcfs removed the unused directory in between
    else:
        raise OSError(errno.ENOENT, '%s/data: removed again right after mkdir, 3 times' % path)
    try:
        size = os.fstat(fd).st_size
        if how == 'mmap':
            if size == 0:
                return b''
            with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as m:
                return m[:]
        piece = rng.choice((4096, 12345, 65536, 1 << 20))
        parts = []
        while True:
            part = os.read(fd, piece)
            if not part:
                return b''.join(parts)
            parts.append(part)
    finally:
        os.close(fd)


def lag_sampler(mnt, model, rng, report, stoppath, parent):
    fds = [os.open(os.path.join(mnt, 'bigfile', oid, 'head', 'at'), os.O_RDONLY)
           for oid in model.oids]
    try:
        while running(stoppath, parent):
            if not model.update():
                time.sleep(0.001)
                continue
            tid = model.tids[-1]
            fi = (model.changed[tid] or [0])[0]
            deadline = time.monotonic() + LAG_TIMEOUT
            while common.read_at(fds[fi]) < tid and time.monotonic() < deadline:
                time.sleep(0.001)
            now = time.monotonic()
            if now >= deadline:
                report.problem('errors', 'head/at of file %d did not reach %016x in %d s'
                               % (fi, tid, LAG_TIMEOUT))
            report.write(lag=now - model.t[tid])
    finally:
        for fd in fds:
            os.close(fd)


READERS = {'client': client_reader, 'tid': tid_reader, 'lag': lag_sampler,
           'client-gil': functools.partial(client_reader, hold_gil=True)}


def reader_main(kind, mnt, logpath, stoppath, resultpath, seed, parent):
    report = Report(resultpath)
    try:
        READERS[kind](mnt, ModelLog(logpath), random.Random(int(seed)), report, stoppath,
                      int(parent))
    finally:
        report.flush()


# ---- the writer (this process) ----

class Writer:
    """The files, their model, and the random commits; appends to the model log."""

    KINDS = ('block', 'short', 'chunks', 'hole', 'grow', 'shrink', 'blktab', 'multi', 'other')
    WEIGHTS = (30, 10, 25, 8, 8, 8, 2, 4, 5)

    def __init__(self, db, logpath, nfiles, seed):
        self.db = db
        self.rng = random.Random(seed)
        self.seed = seed << 32          # descriptor seeds: never reused within a run
        self.conn = db.open()
        self.root = self.conn.root()
        self.blksizes = [BLKSIZES[i % len(BLKSIZES)] for i in range(nfiles)]
        self.zf = []
        self.model = []                 # per file: list of descriptors (None: hole)
        self.log = open(logpath, 'a')
        self.kinds = {}
        for i, bs in enumerate(self.blksizes):
            f = self.root['soak%d' % i] = zbig.ZBigFile(bs)
            self.zf.append(f)
            self.model.append([])
            for blk in range(START_BLOCKS):
                self.write(i, blk, self.new_desc(bs), self.rng.choice(zbig.KINDS))
        tid = self.commit()
        self.oids = ['%016x' % u64(f._p_oid) for f in self.zf]
        self.record(tid, range(nfiles), oids=self.oids, blksizes=self.blksizes)

    def new_desc(self, blksize, length=None):
        self.seed += 1
        return (self.seed, blksize if length is None else length, ())

    def write(self, fi, blk, desc, kind):
        f, bs, blocks = self.zf[fi], self.blksizes[fi], self.model[fi]
        data = expected_block(desc, bs)
        f.write_block(blk, data, kind)
        blocks.extend([None] * (blk + 1 - len(blocks)))
        blocks[blk] = desc
        if f.read_block(blk) != data:
            raise AssertionError('file %d blk %d: zbig reads back other bytes than %r'
                                 % (fi, blk, desc))

    def commit(self):
        transaction.commit()
        return u64(last_transaction(self.db))

    def record(self, tid, changed, **extra):
        t = time.monotonic()
        self.tid = tid
        for fi in changed:
            blocks = self.model[fi]
            while blocks and blocks[-1] is None:
                blocks.pop()
            if len(blocks) * self.blksizes[fi] != self.zf[fi].size():
                raise AssertionError('file %d: model size %d, zbig size %d' % (
                    fi, len(blocks) * self.blksizes[fi], self.zf[fi].size()))
        files = {str(fi): [None if d is None else [d[0], d[1], [list(p) for p in d[2]]]
                           for d in self.model[fi]] for fi in changed}
        self.log.write(json.dumps(dict(tid=tid, t=t, files=files, **extra)) + '\n')
        self.log.flush()

    def step(self):
        """One random commit; -> its tid."""
        what = self.rng.choices(self.KINDS, self.WEIGHTS)[0]
        self.kinds[what] = self.kinds.get(what, 0) + 1
        if what == 'other':
            self.root['counter'] = self.root.get('counter', 0) + 1
            changed = []
        elif what == 'multi':
            n = min(len(self.zf), self.rng.choice((2, 3)))
            changed = self.rng.sample(range(len(self.zf)), n)
            for fi in changed:
                self.change(fi, self.rng.choice(self.KINDS[:6]))
        else:
            changed = [self.rng.randrange(len(self.zf))]
            self.change(changed[0], what)
        tid = self.commit()
        self.record(tid, changed)
        return tid

    def change(self, fi, what):
        rng, f, bs, blocks = self.rng, self.zf[fi], self.blksizes[fi], self.model[fi]
        nblk = len(blocks)
        if nblk < MIN_BLOCKS and what in ('hole', 'shrink'):
            what = 'grow'
        if nblk > MAX_BLOCKS and what == 'grow':
            what = 'shrink'
        kind = rng.choice(zbig.KINDS)
        if what == 'block':
            for _ in range(rng.randint(1, 3)):
                self.write(fi, rng.randrange(nblk), self.new_desc(bs), kind)
        elif what == 'short':
            self.write(fi, rng.randrange(nblk), self.new_desc(bs, rng.randrange(1, bs)), kind)
        elif what == 'chunks':
            self.patch(fi, rng.randrange(nblk))
        elif what == 'hole':
            blk = rng.randrange(nblk - 1)
            f.delete_block(blk)
            blocks[blk] = None
        elif what == 'grow':
            self.write(fi, nblk + rng.choice((0, 0, 1, 5, 20)), self.new_desc(bs), kind)
        elif what == 'shrink':
            n = rng.randint(nblk // 2, nblk - 1)
            f.truncate(n * bs)
            del blocks[n:]
        elif what == 'blktab':
            f.replace_blktab()

    def patch(self, fi, blk):
        """Change 1 to 3 chunks of blk, keeping its kind (a ZBlk1 stores only them)."""
        desc = self.model[fi][blk]
        bs = self.blksizes[fi]
        zblk = self.zf[fi].blktab.get(blk)
        kind = type(zblk).__name__ if zblk is not None else 'ZBlk1'
        if desc is None or len(desc[2]) >= MAX_PATCHES:
            desc = self.new_desc(bs)
        patches = dict(desc[2])
        for _ in range(self.rng.randint(1, 3)):
            self.seed += 1
            patches[self.rng.randrange(bs // CHUNK)] = self.seed
        self.write(fi, blk, (desc[0], desc[1], tuple(patches.items())), kind)

    def close(self):
        try:
            transaction.abort()         # a commit that ^C cut short
            self.conn.close()
        except Exception as e:          # the server ended under it (^C in a terminal)
            print('soak: closing the writer: %s' % e, file=sys.stderr)
        self.log.close()


# ---- the run ----

class Readers:
    """The reader processes; one that dies is counted and started again."""

    def __init__(self, b, mnt, logpath, nclient, ntid, client_kind):
        self.dir = b.dir
        self.argv = [mnt.path, str(logpath), str(b.dir / 'stop'), None, None, str(os.getpid())]
        self.slots = [(client_kind, i) for i in range(nclient)] + \
                     [('tid', i) for i in range(ntid)] + [('lag', 0)]
        self.procs = {}             # slot -> (Popen, result path, stderr path)
        self.results = []           # every result file, of every incarnation
        self.crashes = []           # (slot, signal name, stderr tail)
        self.exits = []             # (slot, status, stderr tail)
        self.seeds = iter(range(1, 1 << 30))
        for slot in self.slots:
            self.start(slot)

    def start(self, slot):
        n = len(self.results)
        result = self.dir / ('%s%d.%d.json' % (*slot, n))
        errpath = self.dir / ('%s%d.%d.err' % (*slot, n))
        argv = list(self.argv)
        argv[3], argv[4] = str(result), str(next(self.seeds))
        with open(errpath, 'wb') as err:
            proc = subprocess.Popen(
                [sys.executable, '-X', 'faulthandler', os.path.abspath(__file__), '--reader',
                 slot[0], *argv], stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.procs[slot] = (proc, result, errpath)
        self.results.append(result)

    def check(self, restart=True):
        """Count the readers that ended; start them again unless told not to."""
        for slot, (proc, _, errpath) in list(self.procs.items()):
            rc = proc.poll()
            if rc is None:
                continue
            tail = tail_of(errpath)
            if rc < 0:
                self.crashes.append((slot, signal.Signals(-rc).name, tail))
            elif rc != 0 or restart:
                self.exits.append((slot, rc, tail))
            del self.procs[slot]
            if restart:
                self.start(slot)

    def stop(self):
        """Stop file, then wait; a reader that does not end is killed (an error)."""
        (self.dir / 'stop').touch()
        deadline = time.monotonic() + READER_STOP_TIMEOUT
        for slot, (proc, _, _) in list(self.procs.items()):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                del self.procs[slot]
                self.exits.append((slot, 'killed: did not stop within %d s'
                                   % READER_STOP_TIMEOUT, ''))
        self.check(restart=False)

    def kill(self):
        for proc, _, _ in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def tail_of(path, lines=20):
    """The last lines of a reader's output, but faulthandler's list of modules."""
    try:
        text = path.read_text(errors='replace')
    except OSError:
        return ''
    return '\n'.join([line for line in text.splitlines()
                      if not line.startswith('Extension modules:')][-lines:])


def collect(paths, until):
    """-> (summed counts, {kind: [first messages]}, lags) of the result files,
    as written before `until` (CLOCK_MONOTONIC)."""
    total, msgs, lags = {}, {'mismatches': [], 'errors': []}, []
    for path in paths:
        counts = {}
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue                # a line cut short by a crash
            if rec.pop('t') >= until:
                break
            if 'counts' in rec:
                counts = rec['counts']
            elif 'lag' in rec:
                lags.append(rec['lag'])
            else:
                for kind, msg in rec.items():
                    msgs[kind].append(msg)
        for name, n in counts.items():
            total[name] = total.get(name, 0) + n
    return total, msgs, lags


def catch_up(mnt, writer, tid, problems):
    """After the last commit: every head/at reaches it, every head/data is the model."""
    for fi, oid in enumerate(writer.oids):
        fdir = os.path.join(mnt.path, 'bigfile', oid)
        try:
            with open(os.path.join(fdir, 'head', 'at'), 'rb', buffering=0) as f:
                at = common.wait_at(f.fileno(), tid, CATCH_UP_TIMEOUT)
            if at is None:
                problems['errors'].append('file %d: head/at did not reach the last tid %016x in '
                                          '%d s' % (fi, tid, CATCH_UP_TIMEOUT))
                continue
            with open(os.path.join(fdir, 'head', 'data'), 'rb') as f:
                data = f.read()
        except OSError as e:
            problems['errors'].append('file %d: head after the last commit: %s' % (fi, e))
            continue
        bs = writer.blksizes[fi]
        want = b''.join(expected_block(d, bs) for d in writer.model[fi])
        if data != want:
            problems['mismatches'].append('file %d: head/data as of the last tid %016x: %d bytes '
                                          'differ from the model (%d)' % (fi, tid, len(data),
                                                                          len(want)))


def percentile(values, p):
    s = sorted(values)
    return s[max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))]


def wcfs_stats(mnt, problems):
    """.wcfs/stats at the end; wcfs gone is an error."""
    try:
        if mnt.proc.poll() is None:
            return common.read_stats(mnt.path)
        problems['errors'].append('wcfs exited with %s' % mnt.proc.returncode)
    except OSError as e:
        problems['errors'].append('.wcfs/stats at the end: %s' % e)
    return {}


def wcfs_log_errors(mnt):
    return [line for line in mnt.log().splitlines() if 'ERROR' in line or 'Traceback' in line]


class StopRequest:
    """SIGINT or SIGTERM: the writer ends after its commit (not in the middle
    of one); a second one interrupts at once."""

    def __init__(self):
        self.by = None

    def __call__(self, signum, frame):
        if self.by is not None:
            raise KeyboardInterrupt('signal %s again' % signal.Signals(signum).name)
        self.by = 'signal %s' % signal.Signals(signum).name

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--duration', type=float, default=600, metavar='SECONDS',
                   help='how long the writer commits (default 600)')
    p.add_argument('--interval', type=float, default=0.05, metavar='SECONDS',
                   help='time from one commit to the next (default 0.05)')
    p.add_argument('--files', type=int, default=4, help='ZBigFiles (default 4)')
    p.add_argument('--client-readers', type=int, default=3,
                   help='reader processes through wcfs_lib.client (default 3)')
    p.add_argument('--tid-readers', type=int, default=2,
                   help='reader processes of @<tid>/data (default 2)')
    p.add_argument('--hold-gil', action='store_true',
                   help='client readers check a view by copying each block (the GIL held '
                        'through the page faults) rather than by hashing it')
    p.add_argument('--seed', type=int, default=1, help="the writer's random seed (default 1)")
    common.add_db_option(p)
    args = p.parse_args()
    if args.duration <= 0 or args.interval < 0 or args.files < 1 or \
            args.client_readers < 0 or args.tid_readers < 0:
        p.error('--duration and --files must be positive, the others not negative')
    stop = StopRequest()
    stop.install()

    problems = {'mismatches': [], 'errors': []}
    interrupted = None
    t0 = time.monotonic()
    with common.Bench('soak', db=args.db) as b:
        readers = None
        try:
            logpath = b.dir / 'model.log'
            writer = Writer(b.db(), logpath, args.files, args.seed)
            mnt = b.mount()
            for oid in writer.oids:
                mnt.bigfile(int(oid, 16))
            readers = Readers(b, mnt, logpath, args.client_readers, args.tid_readers,
                              'client-gil' if args.hold_gil else 'client')
            print('soak: %s: writer and %d readers running for %.0f s (in %s)'
                  % (args.db, len(readers.slots), args.duration, b.dir), flush=True)
            t0 = time.monotonic()
            commits = 0
            while time.monotonic() - t0 < args.duration and stop.by is None:
                t = time.monotonic()
                try:
                    writer.step()
                except Exception:
                    if stop.by is None:
                        raise
                    break               # ^C in a terminal ended the database server too
                commits += 1
                if stop.by is None:     # else the readers may have seen wcfs end (^C)
                    readers.check()
                time.sleep(max(0.0, args.interval - (time.monotonic() - t)))
            interrupted = stop.by
            for sig in (signal.SIGINT, signal.SIGTERM):     # the rest is bounded: let it end
                signal.signal(sig, signal.SIG_IGN)
            until = time.monotonic()
            elapsed = until - t0
            if interrupted is None:
                readers.stop()
                catch_up(mnt, writer, writer.tid, problems)
                stats = wcfs_stats(mnt, problems)
            else:
                # ^C in a terminal reached wcfs and the database server too:
                # what the readers saw from then on (the handler runs a
                # little late) is not counted.
                until -= INTERRUPT_MARGIN
                readers.kill()
                stats = {}
            log_errors = wcfs_log_errors(mnt)
            writer.close()
            counts, msgs, lags = collect(readers.results, until)
        finally:
            if readers is not None:
                readers.kill()

    for slot, status, tail in readers.exits:
        problems['errors'].append('%s reader %d exited (%s):\n%s' % (*slot, status, tail))
    if stats.get('clients_killed'):
        problems['errors'].append('wcfs killed %d clients' % stats['clients_killed'])
    figures = {
        'reads': counts.get('reads', 0),
        'mismatches': counts.get('mismatches', 0) + len(problems['mismatches']),
        'errors': counts.get('errors', 0) + len(problems['errors']),
        'crashed': len(readers.crashes),
        'lag_p99': percentile(lags, 99) if lags else None,
    }
    for kind in ('mismatches', 'errors'):
        msgs[kind] += problems[kind]
    ok = print_report(args, writer, commits, elapsed, counts, msgs, lags, readers, stats,
                      log_errors, figures, interrupted)
    return 0 if ok and interrupted is None else 1


def print_report(args, writer, commits, elapsed, counts, msgs, lags, readers, stats, log_errors,
                 figures, interrupted):
    """Print what was seen; -> whether every target was met."""
    print('soak: %s, %.0f s%s: %d commits, %.1f a second (one every %.3f s asked: %s); '
          '%d files, blksizes %s'
          % (args.db, elapsed, ' (interrupted: %s)' % interrupted if interrupted else '',
             commits, commits / elapsed if elapsed else 0, args.interval,
             ', '.join('%s %d' % kv for kv in sorted(writer.kinds.items())),
             len(writer.oids), ', '.join(str(bs) for bs in writer.blksizes)))
    print('  readers: %d through the client%s (views: %d opens, %d resyncs), %d of @<tid>/data; '
          '%.1f GiB checked' % (args.client_readers, ', copying: GIL held' if args.hold_gil else '',
                                 counts.get('opens', 0),
                                 counts.get('resyncs', 0), args.tid_readers,
                                 counts.get('bytes', 0) / (1 << 30)))
    for kind in ('mismatches', 'errors'):
        for msg in msgs[kind][:10]:
            print('  %s: %s' % (kind[:-1] if kind == 'errors' else 'mismatch', msg))
    for slot, sig, tail in readers.crashes[:3]:
        print('  crash: %s reader %d died of %s:\n%s' % (*slot, sig, tail))
    if lags:
        print('  head lag (commit() returned -> head/at shows it), %d samples: median %.3f s, '
              'p99 %.3f s, max %.3f s' % (len(lags), percentile(lags, 50), figures['lag_p99'],
                                          max(lags)))
    print('  wcfs: %s; %d log lines with ERROR or Traceback%s'
          % (', '.join('%s %s' % (k, stats[k]) for k in ('blocks_loaded', 'invalidations_sent',
                                                          'clients_killed', 'revdirs')
                       if k in stats),
             len(log_errors), ''.join('\n    ' + line for line in log_errors[:5])))
    lag = figures['lag_p99']
    ok = (figures['reads'] > 0 and figures['mismatches'] == 0 and figures['errors'] == 0
          and figures['crashed'] == 0 and lag is not None and lag <= LAG_TARGET)
    print('soak: %s: reads %d, mismatches %d, errors %d, crashed readers %d, head lag p99 %s '
          '(targets: 0, 0, 0, p99 <= %.1f s, for %.0f s): %s; kernel %s'
          % (args.db, figures['reads'], figures['mismatches'], figures['errors'],
             figures['crashed'], 'none sampled' if lag is None else '%.3f s' % lag, LAG_TARGET,
             args.duration, common.verdict(ok and interrupted is None), common.kernel()))
    return ok


if __name__ == '__main__':
    if sys.argv[1:2] == ['--reader']:
        reader_main(*sys.argv[2:9])
    else:
        try:
            sys.exit(main())
        except KeyboardInterrupt as e:
            sys.exit('soak: interrupted (%s); everything ended' % (e or 'SIGINT'))
