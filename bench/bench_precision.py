"""Precision (SPEC §6): after a one-block commit to a fully cached file, the
blocks wcfs loads while the whole file is read again. Target: exactly 1.

head/data is read until the kernel caches all of it (this machine drops a
little of every file's page cache now and then, so it is checked with
mincore); one block in the middle gets new content; once head/at shows that
transaction, the whole file is read again, checked against the new content,
and `blocks_loaded` of .wcfs/stats tells how many blocks wcfs had to load for
it (`blocks_prefetched`, how many of them were loaded ahead of a read). The blocks that were not in the page cache just before that read are
printed too: only the changed block should be missing.
"""

import os

import common
from common import BLKSIZE, CHUNK, MiB

TARGET = 1
AT_TIMEOUT = 30     # seconds for head/at to show the commit


def read_at(bigfile):
    with open(os.path.join(bigfile, 'head', 'at')) as f:
        return int(f.read(), 16)


def main():
    args = common.parse_args(__doc__.splitlines()[0], default_size=256)
    size = args.size * MiB
    blk = size // BLKSIZE // 2
    with common.Bench('precision') as b:
        oid = b.write_bigfile(size)
        mnt = b.mount()
        bigfile = mnt.bigfile(oid)
        data = os.path.join(bigfile, 'head', 'data')
        buf = bytearray(CHUNK)

        n, _ = common.read_all(data, buf)
        assert n == size, 'head/data: read %d bytes, want %d' % (n, size)
        first = common.read_stats(mnt.path)['blocks_loaded']
        not_cached = common.warm_up(data, buf)
        assert not not_cached, 'head/data: blocks %s do not stay cached' % sorted(not_cached)

        new = common.block_data()
        tid = b.write_block(blk, new)
        common.wait_for(lambda: read_at(bigfile) >= tid, AT_TIMEOUT,
                        'head/at to reach %016x' % tid)

        stats = common.read_stats(mnt.path)
        before, prefetched = stats['blocks_loaded'], stats['blocks_prefetched']
        missing = common.uncached_blocks(data)
        with open(data, 'rb') as f:
            f.seek(blk * BLKSIZE)
            assert f.read(BLKSIZE) == new, 'head/data: block %d does not show the commit' % blk
            f.seek(0)
            n = 0
            while True:
                k = f.readinto(buf)
                if not k:
                    break
                n += k
        assert n == size, 'head/data: read %d bytes after the commit, want %d' % (n, size)
        stats = common.read_stats(mnt.path)
        loaded = stats['blocks_loaded'] - before
        prefetched = stats['blocks_prefetched'] - prefetched

    print('precision: %d MiB file (%d blocks of %d MiB), first read loaded %d blocks; '
          'after a one-block commit to block %d, blocks not in the page cache: %s; '
          'the whole file read again loaded %d blocks (%d of them prefetched) (target exactly %d: '
          '%s); kernel %s'
          % (args.size, size // BLKSIZE, BLKSIZE // MiB, first, blk, sorted(missing), loaded,
             prefetched, TARGET, common.verdict(loaded == TARGET), common.kernel()))


if __name__ == '__main__':
    main()
