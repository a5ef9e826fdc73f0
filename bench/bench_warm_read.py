"""Warm read (SPEC §6): sequential read of a fully cached head/data vs the same
bytes from a file in /dev/shm. Target: wcfs / tmpfs throughput >= 0.8.

head/data is read through wcfs to fill the kernel's page cache; then both
files are read in 1 MiB pieces, alternately, and the best of 3 runs of each
counts. Before each timed run the file is read again untimed until mincore
shows all of it cached: this machine drops a little of every file's page
cache now and then.
"""

import os
import tempfile

import common
from common import CHUNK, MiB

RUNS = 3
TARGET = 0.8


def main():
    args = common.parse_args(__doc__.splitlines()[0], default_size=1024)
    size = args.size * MiB
    fd, shm = tempfile.mkstemp(prefix='wcfs-bench-warm-', dir='/dev/shm')
    os.close(fd)
    try:
        with common.Bench('warm read') as b:
            oid = b.write_bigfile(size, copy_to=shm)
            b.close_db()
            mnt = b.mount()
            data = os.path.join(mnt.bigfile(oid), 'head', 'data')
            buf = bytearray(CHUNK)

            n, t = common.read_all(data, buf)
            assert n == size, 'head/data: read %d bytes, want %d' % (n, size)
            print('first read through wcfs (cold): %.0f MiB/s' % common.mibps(n, t))
            reloaded = 0

            best = {'wcfs': 0.0, 'tmpfs': 0.0}
            for run in range(RUNS):
                for name, path in (('wcfs', data), ('tmpfs', shm)):
                    not_cached = common.warm_up(path, buf)
                    assert not not_cached, '%s: blocks %s do not stay cached' % (
                        path, sorted(not_cached))
                    before = common.read_stats(mnt.path)['blocks_loaded']
                    n, t = common.read_all(path, buf)
                    reloaded += common.read_stats(mnt.path)['blocks_loaded'] - before
                    assert n == size, '%s: read %d bytes, want %d' % (path, n, size)
                    best[name] = max(best[name], common.mibps(n, t))
                    print('run %d %-5s %8.0f MiB/s' % (run + 1, name, common.mibps(n, t)))

        ratio = best['wcfs'] / best['tmpfs']
        print('warm read: %d MiB, %d MiB reads, best of %d: wcfs %.0f MiB/s, tmpfs %.0f MiB/s, '
              'ratio %.2f (target >= %.1f: %s); blocks loaded during timed runs: %d; kernel %s'
              % (args.size, CHUNK // MiB, RUNS, best['wcfs'], best['tmpfs'], ratio, TARGET,
                 common.verdict(ratio >= TARGET), reloaded, common.kernel()))
    finally:
        os.unlink(shm)


if __name__ == '__main__':
    main()
