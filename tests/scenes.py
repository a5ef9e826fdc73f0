"""ZBigFiles committed to a database fixture with a wcfs serving them, for the
mount tests that check what wcfs shows against what was committed.

Served   files of random blocks, a wcfs on their database (the serve fixture),
         the content of every file after every commit, channels to them.
Scene    files 'a', 'b', ... committed through the zeo fixture, by name.
"""

import os
import random

from ZODB.utils import u64

from chanhelp import Chan, ranges_of
from devtools.pgcluster import last_transaction
from wcfs_lib import zbig
from zhelp import KiB, Writer, read_bytes

BS = 64 * KiB
SAFE = ('--kill-timeout', '1000')   # no client of this process is ever killed


def randbytes(n):
    return random.randbytes(n)


def blocks_differing(a, b, blksize):
    """Blocks whose content differs between contents a and b; a block that
    exists in only one of them differs."""
    na, nb = len(a) // blksize, len(b) // blksize
    return {blk for blk in range(max(na, nb))
            if blk >= min(na, nb) or a[blk * blksize:(blk + 1) * blksize]
            != b[blk * blksize:(blk + 1) * blksize]}


class Served:
    """ZBigFiles committed to a database fixture, a wcfs on the database, their
    bigfile/<oid>/ made, and the content of every file after every commit.

    files[i]: the zbig.ZBigFile; dirs[i]: bigfile/<oid>; dir: dirs[0];
    tid: the last commit.
    content[i][tid]: bytes of file i as of tid (for every tid committed here
    after file i was added). Channels opened with .chan() are closed at the
    end of the test, before the mount goes.
    """

    def __init__(self, database, wcfs_mount, nfiles=1, nblk=4, blksize=BS, args=SAFE, mount=True):
        self.w = Writer(database.db())
        self.database, self.wcfs_mount, self.args = database, wcfs_mount, args
        self.blksize = blksize
        self.files, self.oids, self.content = [], [], []
        for _ in range(nfiles):
            f = zbig.ZBigFile(blksize)
            for blk in range(nblk):
                f.write_block(blk, randbytes(blksize), 'ZBlk1' if blk % 2 else 'ZBlk0')
            self.files.append(f)
            self.content.append({})
            self.oids.append(self.w.add(f)[0])
        self.first = self._record()     # the commit that added the last file
        self.channels = []
        self.mnt = None
        if mount:
            self.mount()

    def mount(self):
        self.mnt = self.wcfs_mount(self.database.zurl, *self.args)
        self.dirs = [self.mnt.bigfile(oid) for oid in self.oids]
        self.dir = self.dirs[0]

    def _record(self):
        """Note the content of every file as of the last commit; -> its tid."""
        self.tid = u64(last_transaction(self.w.db))
        for f, content in zip(self.files, self.content):
            content[self.tid] = f.read()
        return self.tid

    def commit(self):
        """Commit what the test changed; -> its tid."""
        self.w.commit()
        return self._record()

    def touch(self, *blks, kind='ZBlk0', i=0):
        """Give blocks blks of file i new random content and commit; -> tid."""
        for blk in blks:
            self.files[i].write_block(blk, randbytes(self.blksize), kind)
        return self.commit()

    def touch_other(self):
        """Commit a transaction that changes no ZBigFile; -> tid."""
        self.w.touch_other()
        return self._record()

    def delta(self, a, b, i=0):
        """The ranges of a `have` for δR(a, b) of file i, when every commit in
        (a, b] changed every block it touched."""
        return ranges_of(blocks_differing(self.content[i][a], self.content[i][b],
                                          self.blksize), self.blksize)

    def touched(self, a, b, i=0):
        """Blocks some commit in (a, b] changed (each commit changes what it touches)."""
        tids = sorted(t for t in self.content[i] if a <= t <= b)
        out = set()
        for prev, tid in zip(tids, tids[1:]):
            out |= blocks_differing(self.content[i][prev], self.content[i][tid], self.blksize)
        return out

    def chan(self, i=0, nonblock=True):
        ch = Chan(self.dirs[i], nonblock)
        self.channels.append(ch)
        return ch

    def subscribed(self, i=0):
        """A channel of file i subscribed at the last commit; -> (it, that tid)."""
        ch = self.chan(i)
        ch.subscribe(self.tid)
        return ch, self.tid

    def data(self, i=0):
        return read_bytes(os.path.join(self.dirs[i], 'head', 'data'))

    def close(self):
        for ch in self.channels:
            ch.close()


class Scene:
    """ZBigFiles 'a', 'b', ... committed through the zeo fixture; .f[name]
    the writer's ZBigFile, .oid[name], .tid the last commit."""

    def __init__(self, zeo, **files):
        self.zeo = zeo
        self.w = Writer(zeo.db())
        self.f, self.oid = {}, {}
        for name, (nblk, blksize) in files.items():
            f = zbig.ZBigFile(blksize)
            for blk in range(nblk):
                f.write_block(blk, randbytes(blksize), 'ZBlk1' if blk % 2 else 'ZBlk0')
            self.f[name] = f
            self.oid[name], self.tid = self.w.add(f, name)

    def commit(self):
        self.tid = self.w.commit()
        return self.tid
