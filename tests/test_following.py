"""wcfs follows the database, with no subscribed clients (SPEC §3, §4.3):
head/at and head/data move to every new transaction, and the kernel drops
from its page cache exactly the blocks that changed, whoever has them mapped.

Page residency is asked of the kernel with mincore; blocks wcfs loads from
the database are counted by `.wcfs/stats` `blocks_loaded`.
"""

import hashlib
import os
import random

import pytest

from zhelp import (KiB, MiB, Holder, Writer, head_at, hex16, read_bytes, resident_blocks,
                   stat_int, stats, wait_head)
from wcfs_lib import zbig

BS = 64 * KiB


def randbytes(seed, n):
    return random.Random(seed).randbytes(n)


class Followed:
    """ZBigFiles committed to a database fixture, a wcfs on the database, their
    bigfile/<oid>/ made. .files[i] = (f, dir, data path)."""

    def __init__(self, database, wcfs_mount, nfiles=1, nblk=8, blksize=BS, kind='ZBlk0'):
        self.w = Writer(database.db())
        made = []
        for i in range(nfiles):
            blocks = {blk: randbytes(1000 * i + blk, blksize) for blk in range(nblk)}
            f, oid, self.tid = self.w.new_file(blksize, blocks, kind)
            made.append((f, oid))
        self.mnt = wcfs_mount(database.zurl)
        self.files = []
        for f, oid in made:
            fdir = self.mnt.bigfile(oid)
            self.files.append((f, fdir, os.path.join(fdir, 'head', 'data')))
        self.f, self.dir, self.data = self.files[0]

    def loads(self, fn):
        """Run fn(); -> (its result, how many blocks wcfs loaded meanwhile)."""
        before = stat_int(self.mnt, 'blocks_loaded')
        out = fn()
        return out, stat_int(self.mnt, 'blocks_loaded') - before

    def commit_and_wait(self):
        """Commit; wait until head/at of every file is the new tid; -> tid."""
        tid = self.w.commit()
        for _, fdir, _ in self.files:
            wait_head(fdir, tid)
        return tid


def cached(path, blksize):
    """Blocks of path fully in the page cache, and blocks of it not at all."""
    res = resident_blocks(path, blksize)
    return ({blk for blk, r in res.items() if r == 'all'},
            {blk for blk, r in res.items() if r == 'none'})


def test_head_follows_every_commit(database, wcfs_mount):
    # head/at and head/data move together: once head/at shows a tid, head/data
    # shows the file as of it, whatever the page cache held before.
    s = Followed(database, wcfs_mount)
    assert head_at(s.dir) == s.tid
    assert read_bytes(s.data) == s.f.read()
    for step in range(100):
        if step % 5 == 2:
            tid = s.w.touch_other()         # a commit that does not touch the file
        else:
            off = (step % 8) * BS + 1000 * (step % 7)
            s.f.write(off, b'step %d' % step, 'ZBlk1' if step % 2 else 'ZBlk0')
            tid = s.w.commit()
        wait_head(s.dir, tid, spin=True)
        assert read_bytes(s.data) == s.f.read(), 'step %d' % step
        assert os.stat(s.data).st_size == 8 * BS
        assert stats(s.mnt)['zhead'] == hex16(tid)


def test_commit_not_touching_the_file_moves_head_at_and_keeps_its_cache(database, wcfs_mount):
    s = Followed(database, wcfs_mount)
    want = read_bytes(s.data)
    # mapped by another process: only wcfs can drop its pages (drop_caches,
    # which other tests of this machine write, does not drop mapped pages)
    with Holder(s.data):
        tid = s.w.touch_other()
        wait_head(s.dir, tid)
        assert cached(s.data, BS) == (set(range(8)), set())
        data, loaded = s.loads(lambda: read_bytes(s.data))
    assert (data, loaded) == (want, 0)


@pytest.mark.parametrize('blksize, nblk', [(BS, 32), (2 * MiB, 16)], ids=['64KiB', '2MiB'])
def test_one_block_commit_drops_exactly_that_block(database, wcfs_mount, blksize, nblk):
    s = Followed(database, wcfs_mount, nblk=nblk, blksize=blksize)
    assert read_bytes(s.data) == s.f.read()
    with Holder(s.data) as holder:      # another process keeps every page mapped
        assert cached(s.data, blksize) == (set(range(nblk)), set())
        changed = nblk // 2 + 1
        s.f.write(changed * blksize + 4096 + 7, b'one change')
        s.commit_and_wait()
        assert cached(s.data, blksize) == (set(range(nblk)) - {changed}, {changed})
        data, loaded = s.loads(lambda: read_bytes(s.data))
        assert loaded == 1
        assert data == s.f.read()
        assert holder.sha1() == hashlib.sha1(data).hexdigest()
        assert cached(s.data, blksize) == (set(range(nblk)), set())


def test_grown_file_keeps_its_cached_pages(database, wcfs_mount):
    s = Followed(database, wcfs_mount)
    read_bytes(s.data)
    with Holder(s.data):
        s.f.write_block(11, b'past the end')
        s.commit_and_wait()
        assert os.stat(s.data).st_size == 12 * BS
        kept, _ = cached(s.data, BS)
        assert set(range(8)) <= kept
        data, loaded = s.loads(lambda: read_bytes(s.data))
        assert data == s.f.read()
        assert data[8 * BS:11 * BS] == bytes(3 * BS)
        assert loaded == 1


def test_shrunk_file_shows_new_size_and_data(database, wcfs_mount):
    s = Followed(database, wcfs_mount)
    read_bytes(s.data)
    s.f.truncate(5 * BS)
    s.commit_and_wait()
    assert os.stat(s.data).st_size == 5 * BS
    assert cached(s.data, BS) == (set(range(5)), set())
    data, loaded = s.loads(lambda: read_bytes(s.data))
    assert (data, loaded) == (s.f.read(), 0)
    with open(s.data, 'rb') as f:
        assert os.pread(f.fileno(), BS, 5 * BS) == b''


def test_shrink_then_grow_shows_zeros_not_old_data(database, wcfs_mount):
    s = Followed(database, wcfs_mount)
    old = read_bytes(s.data)
    with Holder(s.data):
        s.f.truncate(4 * BS)
        s.w.commit()                        # no stat, no read of head/data in between
        s.f.write_block(7, b'back')
        s.commit_and_wait()
        data = read_bytes(s.data)
    assert len(data) == 8 * BS
    assert data[:4 * BS] == old[:4 * BS]
    assert data[4 * BS:7 * BS] == bytes(3 * BS)
    assert data == s.f.read()


@pytest.mark.parametrize('how', ['wendelin', 'ZData-only', 'chunk-replaced', 'chunk-gone'])
def test_zblk1_chunk_change_reloads_only_that_block(database, wcfs_mount, how):
    s = Followed(database, wcfs_mount, nblk=16, kind='ZBlk1')
    assert read_bytes(s.data) == s.f.read()
    blk = 5
    zblk = s.f.blktab[blk]
    if how == 'wendelin':           # as wendelin.core: the ZData and its ZBlk1 change
        s.f.write(blk * BS + 3 * 4096 + 10, b'chunk change', 'ZBlk1')
    elif how == 'ZData-only':       # only the chunk's record changes
        zblk.chunktab[4096].data = b'only the ZData'
    elif how == 'chunk-replaced':   # the chunk tree points to a new ZData
        zblk.chunktab[8192] = zbig.ZData(b'a new ZData object')
    elif how == 'chunk-gone':       # a chunk leaves the chunk tree: zeros there
        del zblk.chunktab[8192]
    s.commit_and_wait()
    assert cached(s.data, BS) == (set(range(16)) - {blk}, {blk})
    data, loaded = s.loads(lambda: read_bytes(s.data))
    assert loaded == 1
    assert data == s.f.read()


NEW_BLKSIZE = {'set_blksize-double': 2 * BS, 'set_blksize-4096': 4096,
               'set_blksize-12288': 12288, 'replace_blktab': BS}


@pytest.mark.parametrize('change', sorted(NEW_BLKSIZE))
def test_change_of_the_zbigfile_object_shows_whole_new_content(database, wcfs_mount, change):
    s = Followed(database, wcfs_mount, kind='ZBlk1')
    s.f.write_block(3, b'short block')
    s.commit_and_wait()
    old = read_bytes(s.data)
    assert old == s.f.read()
    if change == 'replace_blktab':
        s.f.replace_blktab()
    else:
        s.f.set_blksize(NEW_BLKSIZE[change])
    s.f.write(BS + 5, b'and a change')
    s.commit_and_wait()
    want = s.f.read()
    assert os.stat(s.data).st_size == len(want)
    assert os.stat(s.data).st_blksize == {12288: 8192}.get(NEW_BLKSIZE[change],
                                                            NEW_BLKSIZE[change])
    assert read_bytes(s.data) == want
    with open(s.data, 'rb') as f:
        for off in (0, BS - 3, BS + 5, 3 * BS, len(want) - 10):
            assert os.pread(f.fileno(), 20, off) == want[off:off + 20], off


def test_commit_to_one_file_keeps_the_other_files_pages(database, wcfs_mount):
    s = Followed(database, wcfs_mount, nfiles=2)
    (fa, _, a), (fb, _, b) = s.files
    assert read_bytes(a) == fa.read()
    assert read_bytes(b) == fb.read()
    with Holder(b):
        fa.write_block(2, b'only file a')
        s.commit_and_wait()
        assert cached(b, BS) == (set(range(8)), set())
        assert cached(a, BS) == (set(range(8)) - {2}, {2})
        (da, db), loaded = s.loads(lambda: (read_bytes(a), read_bytes(b)))
    assert loaded == 1
    assert (da, db) == (fa.read(), fb.read())
