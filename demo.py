"""A guided tour of wcfs: run ./demo.sh (it sets up .venv first).

It starts a ZEO server on a free port of 127.0.0.1 (with --db postgres: a
private PostgreSQL cluster there, RelStorage's tables in one database), writes
an array of float64 into a ZBigFile there, mounts wcfs on that database and
reads the array with ordinary tools, commits a change and watches it appear,
and opens the old revision through @<tid>/. Everything lives in temporary
directories that are removed at the end; the database server and wcfs are
stopped whatever happens.

Exit status 0 when every check passed, 1 otherwise; 2 for a bad argument.
"""

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import traceback

import numpy as np
import transaction
import ZODB.utils

from devtools.pgcluster import PGServer, last_transaction
from devtools.procs import is_mounted, tail, wait_for
from devtools.wcfsproc import WCFS
from devtools.zeoserver import ZEOServer
from wcfs_lib import zbig
from wcfs_lib.zurl import masked

MiB = 1 << 20
BLKSIZE = 2 * MiB
NELEM = 8 * MiB // 8  # 8 MiB of float64: four blocks
CHANGED_BLK = 1
START_TIMEOUT = 20    # seconds for runzeo or wcfs to start serving
UPDATE_TIMEOUT = 10   # seconds for a commit to reach head/at


class DemoError(Exception):
    pass


def step(n, title, text):
    print(f'\n== {n}. {title}\n')
    print(textwrap.fill(' '.join(text.split()), 78))
    print()


def show(cmd, cwd):
    """Print `$ cmd`, run it in cwd, print its output indented; fail on a non-zero exit."""
    print('  $ ' + shlex.join(cmd))
    r = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    for line in (r.stdout + r.stderr).splitlines():
        print('    ' + line)
    if r.returncode != 0:
        raise DemoError(f'{shlex.join(cmd)} exited with {r.returncode}')
    return r.stdout


def cmp(a, b, cwd):
    show(['cmp', a, b], cwd)
    print('  ok: cmp found the files identical')


def check(ok, what):
    if not ok:
        raise DemoError(what)
    print(f'  ok: {what}')


class ZEOTour:
    """runzeo on a free port of 127.0.0.1, its Data.fs in tmp."""

    title = 'Start a ZEO server'
    how_news_come = 'wcfs hears of the transaction from the ZEO server'

    def __init__(self, tmp):
        self.server = ZEOServer(tmp, error=DemoError)
        self.zurl = self.server.zurl

    def about(self):
        return f"""wcfs reads a ZODB database. In production that is a ZEO server
            that many machines share; here we start one on {self.zurl} with its
            data in {self.server.path}."""

    def start(self):
        print('  $ ' + shlex.join(self.server.argv))
        self.server.start(START_TIMEOUT)
        print(f'  runzeo (pid {self.server.proc.pid}) accepts connections')

    def open(self):
        return self.server.new_db()

    def stop(self):
        self.server.close()


class PostgresTour:
    """A private PostgreSQL cluster (devtools.pgcluster) with one RelStorage
    database. Its directory is not the demo's: postgres must reach it."""

    title = 'Start a PostgreSQL server'
    how_news_come = 'wcfs polls PostgreSQL for new transactions, sees this one'

    def __init__(self, tmp):
        self.server = None
        self.zurl = None

    def about(self):
        return """wcfs reads a ZODB database. Here it is RelStorage on
            PostgreSQL: in production one PostgreSQL server that many machines
            share; here a private cluster (initdb in a temporary directory,
            postgres on a free port of 127.0.0.1) with one database, whose
            tables RelStorage makes. The ZURL holds the password: wcfs shows
            it as *** in .wcfs/zurl and its log."""

    def start(self):
        self.server = PGServer.private('zodb')
        self.zurl = self.server.zurl
        cluster = self.server.cluster
        print(f'  postgres (pid {cluster.proc.pid}) serves {cluster.dir}/data '
              f'on 127.0.0.1:{cluster.port}')
        print(f'  ZURL: {self.zurl}')

    def open(self):
        return self.server.new_db()

    def stop(self):
        if self.server is not None:
            self.server.close()


SERVERS = {'zeo': ZEOTour, 'postgres': PostgresTour}


def read(path):
    with open(path) as f:
        return f.read()


class Demo:

    def __init__(self, server):
        self.tmp = os.path.realpath(tempfile.mkdtemp(prefix='wcfs-demo-'))
        self.mnt = os.path.join(self.tmp, 'mnt')
        self.wcfs_log = os.path.join(self.tmp, 'wcfs.log')
        self.server = server(self.tmp)
        self.wcfs = None
        self.db = None

    def run(self):
        server = self.server
        step(1, server.title, server.about())
        server.start()
        zurl = server.zurl

        step(2, 'Write an array into a ZBigFile',
             f"""A ZBigFile is wendelin.core's persistent big file: a block size and
             a B-tree of blocks. We store one at root['demo'] holding {NELEM}
             float64 numbers 0, 1, 2, ... ({NELEM * 8 // MiB} MiB, blocks of
             {BLKSIZE // MiB} MiB), using the project's writer, an ordinary
             ZODB client.""")
        self.db = server.open()
        conn = self.db.open()
        f = zbig.ZBigFile(BLKSIZE)
        conn.root()['demo'] = f
        transaction.commit()
        old = np.arange(NELEM, dtype='<f8')
        f.write(0, old.tobytes())
        transaction.commit()
        oid = '%016x' % ZODB.utils.u64(f._p_oid)
        oldtid = '%016x' % ZODB.utils.u64(last_transaction(self.db))
        print(f'  oid of the ZBigFile:    {oid}')
        print(f'  tid of the data commit: {oldtid}')

        step(3, 'Mount wcfs',
             """wcfs connects to the database read-only and serves it as a
             filesystem. It runs in the foreground here; SIGTERM unmounts it.""")
        self.wcfs = WCFS(zurl, self.mnt, self.wcfs_log, error=DemoError)
        print('  $ ' + shlex.join(self.wcfs.argv) + ' &')
        self.wcfs.wait_serving(START_TIMEOUT)
        show(['cat', '.wcfs/zurl'], self.mnt)
        check(read(os.path.join(self.mnt, '.wcfs', 'zurl')) == masked(zurl) + '\n',
              '.wcfs/zurl names the database')

        step(4, 'Make the ZBigFile visible',
             """A ZBigFile appears under bigfile/ once a client asks for it by
             its oid with mkdir. head/data is its latest data and head/at the
             transaction that data is as of.""")
        show(['mkdir', f'bigfile/{oid}'], self.mnt)
        bf = os.path.join(self.mnt, 'bigfile', oid)
        show(['ls', '-l', f'bigfile/{oid}/head'], self.mnt)
        show(['cat', 'head/at'], bf)
        check(read(os.path.join(bf, 'head', 'at')) == oldtid + '\n', 'head/at is the tid of the data commit')

        step(5, 'Read it with ordinary tools',
             """head/data is a plain file: od decodes its first numbers, cmp
             compares it with the bytes we wrote, and numpy reads it with
             fromfile and maps it with memmap. The kernel caches its pages for
             every process on the machine.""")
        data = os.path.join(bf, 'head', 'data')
        show(['od', '-A', 'd', '-t', 'f8', '-N', '64', 'head/data'], bf)
        expected = os.path.join(self.tmp, 'expected.bin')
        old.tofile(expected)
        cmp('head/data', expected, bf)
        check(os.path.getsize(data) == NELEM * 8, f'head/data is {NELEM * 8} bytes')
        check(np.array_equal(np.fromfile(data, dtype='<f8'), old), 'numpy.fromfile(head/data) equals the array')
        mapped = np.memmap(data, dtype='<f8', mode='r')
        check(np.array_equal(mapped, old), 'numpy.memmap(head/data) equals the array')

        step(6, 'Commit a change to one block',
             f"""Another ZODB client negates the numbers of block {CHANGED_BLK}
             (bytes {CHANGED_BLK * BLKSIZE} to {(CHANGED_BLK + 1) * BLKSIZE})
             and commits. {server.how_news_come},
             moves head/at, and makes the kernel drop only the pages of that
             block: the rest of head/data stays cached.""")
        new = old.copy()
        lo, hi = CHANGED_BLK * BLKSIZE // 8, (CHANGED_BLK + 1) * BLKSIZE // 8
        new[lo:hi] = -new[lo:hi]
        f.write(CHANGED_BLK * BLKSIZE, new[lo:hi].tobytes())
        transaction.commit()
        newtid = '%016x' % ZODB.utils.u64(last_transaction(self.db))
        print(f'  tid of the change: {newtid}')
        at = os.path.join(bf, 'head', 'at')
        wait_for(lambda: read(at) != oldtid + '\n', UPDATE_TIMEOUT, 'head/at to move', DemoError)
        show(['cat', 'head/at'], bf)
        check(read(at) == newtid + '\n', 'head/at moved to the tid of the change')
        show(['od', '-A', 'd', '-t', 'f8', '-j', str(CHANGED_BLK * BLKSIZE), '-N', '32', 'head/data'], bf)
        new.tofile(expected)
        cmp('head/data', expected, bf)
        check(np.array_equal(mapped, new), 'the memmap made before the commit shows the new numbers')
        del mapped

        step(7, 'Look at the old revision',
             f"""Clients that must see the database as of an older transaction
             ask for it with mkdir @<tid>. @{oldtid}/data is the file right
             after that transaction and never changes.""")
        show(['mkdir', f'@{oldtid}'], bf)
        show(['ls', '-l', f'@{oldtid}'], bf)
        show(['od', '-A', 'd', '-t', 'f8', '-j', str(CHANGED_BLK * BLKSIZE), '-N', '32', f'@{oldtid}/data'], bf)
        old.tofile(expected)
        cmp(f'@{oldtid}/data', expected, bf)
        check(np.array_equal(np.fromfile(os.path.join(bf, f'@{oldtid}', 'data'), dtype='<f8'), old),
              f'@{oldtid}/data still holds the old numbers')

        step(8, 'Stop wcfs',
             """SIGTERM (or SIGINT) makes wcfs unmount and exit 0. The
             database server is stopped and the temporary directories removed
             next.""")
        print(f'  $ kill -TERM {self.wcfs.pid}')
        code = self.wcfs.stop()
        check(code == 0, f'wcfs exited with {code}')
        check(not is_mounted(self.mnt), f'{self.mnt} is unmounted')

    def cleanup(self):
        """Stop wcfs and the database server, unmount, remove the temporary directory."""
        try:
            if self.db is not None:
                self.db.close()
            if self.wcfs is not None:
                self.wcfs.cleanup()
        finally:
            self.server.stop()
            shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description='A guided tour of wcfs.')
    p.add_argument('--db', choices=sorted(SERVERS), default='zeo',
                   help='the database wcfs follows: a ZEO server (default) or '
                        'RelStorage on a private PostgreSQL cluster')
    args = p.parse_args()
    demo = Demo(SERVERS[args.db])
    try:
        demo.run()
    except Exception as e:
        if not isinstance(e, DemoError):
            traceback.print_exc()
        print(f'\ndemo: FAILED: {e}', file=sys.stderr)
        print(f'--- last lines of the wcfs log:\n{tail(demo.wcfs_log)}', file=sys.stderr)
        return 1
    finally:
        demo.cleanup()
    print('\ndemo: every check passed')
    return 0


if __name__ == '__main__':
    sys.exit(main())
