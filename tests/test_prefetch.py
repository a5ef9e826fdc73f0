"""Prefetch (issue 11): a sequential reader gets the next blocks loaded ahead
of its reads, a random reader loads exactly the blocks it reads, and the data
stays exact while commits move the head during a sequential read.

Real ZEO, a real mount; what wcfs loads is seen in `.wcfs/stats`:
`blocks_loaded` (every block loaded), `blocks_prefetched` (those of them
loaded ahead of a read), `prefetched_unused` (prefetched blocks dropped
before any read).
"""

import os
import random
import struct
import threading
import time

from zhelp import KiB, Holder, Writer, head_at, read_bytes, resident_blocks, stat_int, wait_head

PAGE = 4096
CHUNK = 1 << 20


def randbytes(seed, n):
    return random.Random(seed).randbytes(n)


def counters(mnt):
    return {name: stat_int(mnt, name)
            for name in ('blocks_loaded', 'blocks_prefetched', 'prefetched_unused')}


def delta(mnt, before):
    now = counters(mnt)
    return {name: now[name] - before[name] for name in now}


def read_sequentially(path, chunk=CHUNK):
    out = bytearray()
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            piece = os.read(fd, chunk)
            if not piece:
                return bytes(out)
            out += piece
    finally:
        os.close(fd)


def new_file(database, blksize, nblk, kind='ZBlk0'):
    w = Writer(database.db())
    blocks = {blk: randbytes(blk, blksize) for blk in range(nblk)}
    f, oid, tid = w.new_file(blksize, blocks, kind)
    return w, f, oid


def test_sequential_read_prefetches_and_loads_each_block_once(database, wcfs_mount):
    blksize, nblk = 256 * KiB, 48
    _, f, oid = new_file(database, blksize, nblk)
    mnt = wcfs_mount(database.zurl)
    data = os.path.join(mnt.bigfile(oid), 'head', 'data')
    before = counters(mnt)
    assert read_sequentially(data) == f.read()
    d = delta(mnt, before)
    assert d['blocks_prefetched'] > nblk // 2, d
    assert d['blocks_loaded'] == nblk, d         # prefetched blocks are not loaded twice
    assert d['prefetched_unused'] == 0, d


def test_sequential_read_of_zblk1_blocks_with_holes_prefetches(database, wcfs_mount):
    # ZBlk1 blocks come from their chunks, holes are zeros: prefetched the same
    blksize, nblk = 64 * KiB, 97
    w = Writer(database.db())
    blocks = {blk: randbytes(blk, blksize // 2) for blk in range(nblk) if blk % 5}
    f, oid, _ = w.new_file(blksize, blocks, 'ZBlk1')
    mnt = wcfs_mount(database.zurl)
    data = os.path.join(mnt.bigfile(oid), 'head', 'data')
    before = counters(mnt)
    got = read_sequentially(data)
    assert got == f.read()
    assert got[:blksize] == bytes(blksize) and len(got) == nblk * blksize
    d = delta(mnt, before)
    assert d['blocks_prefetched'] > 0, d
    assert d['blocks_loaded'] == len(blocks), d


def test_random_reads_load_exactly_the_blocks_read(database, wcfs_mount):
    blksize, nblk = 256 * KiB, 64
    _, f, oid = new_file(database, blksize, nblk)
    want = f.read()
    mnt = wcfs_mount(database.zurl)
    data = os.path.join(mnt.bigfile(oid), 'head', 'data')
    rng = random.Random(7)
    picked = rng.sample(range(nblk), 40)
    before = counters(mnt)
    fd = os.open(data, os.O_RDONLY)
    try:
        for blk in picked:
            off = blk * blksize + rng.randrange(blksize // PAGE) * PAGE
            assert os.pread(fd, PAGE, off) == want[off:off + PAGE]
    finally:
        os.close(fd)
    d = delta(mnt, before)
    assert d == {'blocks_loaded': len(picked), 'blocks_prefetched': 0, 'prefetched_unused': 0}


def test_read_of_one_changed_block_prefetches_nothing(database, wcfs_mount):
    # SPEC §6 "precision": the whole file read again after a one-block commit
    # loads that block alone, the blocks after it being in the page cache
    blksize, nblk = 256 * KiB, 16
    w, f, oid = new_file(database, blksize, nblk)
    mnt = wcfs_mount(database.zurl)
    fdir = mnt.bigfile(oid)
    data = os.path.join(fdir, 'head', 'data')
    assert read_sequentially(data) == f.read()
    with Holder(data):                  # another process keeps every page mapped
        assert set(resident_blocks(data, blksize).values()) == {'all'}
        changed = nblk // 2
        f.write(changed * blksize + 100, b'one change')
        wait_head(fdir, w.commit())
        before = counters(mnt)
        assert read_sequentially(data) == f.read()
        d = delta(mnt, before)
    assert d == {'blocks_loaded': 1, 'blocks_prefetched': 0, 'prefetched_unused': 0}


# ---- exactness while the head moves ----

def page_of(blk, version):
    """A page of block `blk` at `version`: says which it is, all over."""
    return struct.pack('<QQ', blk, version) * (PAGE // 16)


def block_of(blk, version, blksize):
    return page_of(blk, version) * (blksize // PAGE)


class Commits:
    """A thread committing new versions of blocks while the test reads; its
    log says which version of each block every tid holds."""

    def __init__(self, w, f, nblk, blksize):
        self.w, self.f, self.nblk, self.blksize = w, f, nblk, blksize
        self.lock = threading.Lock()    # guards log, versions
        self.log = []                   # (tid, {blk: version}) in commit order
        self.versions = {blk: 0 for blk in range(nblk)}     # assigned, committed or not
        self.stop = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        rng = random.Random(3)
        try:
            while not self.stop.is_set():
                with self.lock:
                    changed = {}
                    for blk in rng.sample(range(self.nblk), 3):
                        self.versions[blk] += 1
                        changed[blk] = self.versions[blk]
                for blk, v in changed.items():
                    self.f.write_block(blk, block_of(blk, v, self.blksize),
                                       'ZBlk1' if v % 2 else 'ZBlk0')
                tid = self.w.commit()
                with self.lock:
                    self.log.append((tid, changed))
                self.stop.wait(0.01)
        except Exception as e:
            self.error = e

    def floor(self, at):
        """{blk: the version head/data must show at least once head/at is `at`}."""
        out = dict.fromkeys(range(self.nblk), 0)
        with self.lock:
            for tid, changed in self.log:
                if tid <= at:
                    out.update(changed)
        return out

    def assigned(self):
        with self.lock:
            return dict(self.versions)


def check_pages(piece, offset, floor, assigned, blksize):
    """Each page of `piece` (read at `offset`) is one whole page of its block, at
    a version not older than `floor` nor newer than any assigned."""
    for i in range(0, len(piece), PAGE):
        page = piece[i:i + PAGE]
        blk = (offset + i) // blksize
        got_blk, v = struct.unpack_from('<QQ', page)
        assert got_blk == blk and page == page_of(blk, v), \
            'offset %d: a page of block %d reads as %r' % (offset + i, blk, page[:16])
        assert floor[blk] <= v <= assigned[blk], \
            'offset %d: block %d at version %d, head/at says at least %d (newest %d)' % (
                offset + i, blk, v, floor[blk], assigned[blk])


def test_sequential_reads_stay_exact_while_commits_move_the_head(database, wcfs_mount):
    blksize, nblk = 128 * KiB, 48
    w = Writer(database.db())
    f, oid, _ = w.new_file(blksize, {blk: block_of(blk, 0, blksize) for blk in range(nblk)})
    mnt = wcfs_mount(database.zurl)
    fdir = mnt.bigfile(oid)
    data = os.path.join(fdir, 'head', 'data')
    commits = Commits(w, f, nblk, blksize)
    before = counters(mnt)
    commits.thread.start()
    passes, deadline = 0, time.monotonic() + 120
    try:
        # 12 passes at least, and on until the head moved (PostgreSQL on a
        # loaded machine commits a few times a second)
        while passes < 12 or (len(commits.log) < 5 and time.monotonic() < deadline):
            passes += 1
            fd = os.open(data, os.O_RDONLY)
            try:
                offset = 0
                while True:
                    floor = commits.floor(head_at(fdir))
                    piece = os.pread(fd, CHUNK, offset)
                    if not piece:
                        break
                    check_pages(piece, offset, floor, commits.assigned(), blksize)
                    offset += len(piece)
                assert offset == nblk * blksize
            finally:
                os.close(fd)
    finally:
        commits.stop.set()
        commits.thread.join(30)
    assert not commits.thread.is_alive() and commits.error is None, commits.error
    assert len(commits.log) >= 5, 'the head hardly moved: %d commits' % len(commits.log)
    wait_head(fdir, commits.log[-1][0])
    final = commits.assigned()
    assert read_bytes(data) == b''.join(block_of(blk, final[blk], blksize) for blk in range(nblk))
    d = delta(mnt, before)
    assert d['blocks_prefetched'] > 0, d
