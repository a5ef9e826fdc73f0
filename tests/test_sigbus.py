"""A reader that maps head/data never gets SIGBUS (issue 15, item 0).

The kernel faults a page of a mapped file in only below the size it caches
for the file (i_size); past it, the access is SIGBUS, and a page fault never
asks wcfs for the size again. So when head/at shows a tid at which the file
grew, the kernel must already hold head/data's new size: a client library
view resynced to that tid maps head/data over the grown blocks and touches
them at once.

The kernel takes a file's size from every answer to a lookup or getattr,
but refuses an answer to a request sent before the last change it took
(its attr_version). A getattr that wcfs answered from the old head, and
that the kernel takes while the getattr wcfs made itself for the new size
is in flight, makes the kernel refuse the new size: the kernel is left with
the old one. Under heavy load (a worker thread descheduled between reading
the head and replying, a requesting process slow to run) any lookup can do
that, such as a reader's when it opens a view: the SIGBUS seen in
tests/test_isolation_stress.py on a busy machine.

Here the window is made wide on purpose: wcfs runs under a launcher (this
file, `launch`) that answers every getattr and lookup of a head/data a
while after it read the head, as a descheduled worker thread does; wcfs
itself is unchanged. Each round a stat of head/data (any user's `ls -l`)
reads the old head just before a commit grows the file (or, now and then,
shrinks it), and a reader process resyncs its view to the commit (or opens
another view) and reads every block.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)        # run as a script too: `launch` and `reader`

from zhelp import KiB, LaunchedWCFS, Writer, close_child, hex16  # noqa: E402

BS = 64 * KiB
REPLY_DELAY = 0.3       # seconds between reading the head and answering a getattr
ROUNDS = 12
MAX_BLOCKS = 24         # the file shrinks back to 4 blocks past this


def launch(delay, argv):
    """Run wcfs with argv, answering getattr and lookup of head/data `delay`
    seconds after the answer was made (its size read from the head)."""
    from wcfs_lib.kernel import fs
    import wcfs

    getattr_now = fs.WCFS.getattr

    def getattr_late(self, path, fh=None):
        st = getattr_now(self, path, fh)
        if path.endswith('/head/data'):
            time.sleep(delay)
        return st

    fs.WCFS.getattr = getattr_late
    return wcfs.main(argv)


def reader(mountpoint, oid):
    """Hold a view; for each line `resync|reopen <tid>` on stdin, resync it
    to tid (or close it and open another), and print the view's size and the
    first byte of every block (each block's page is touched)."""
    from wcfs_lib import client

    with client.connect(mountpoint) as wc:
        view = None
        for line in sys.stdin:
            how, tid = line.split()
            tid = int(tid, 16)
            if how == 'reopen' and view is not None:
                view.close()
                view = None
            if view is None:
                view = wc.open(oid, at=tid)
            else:
                view.resync(tid)
            a = view.ndarray()
            firsts = bytes(a[::BS])
            print(view.size, firsts.hex(), flush=True)


class Reader:
    """The `reader` in another process: a SIGBUS kills it, not pytest."""

    def __init__(self, mountpoint, oid):
        self.proc = subprocess.Popen([sys.executable, __file__, 'reader', mountpoint, hex16(oid)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def move(self, how, tid):
        """how: 'resync' or 'reopen' -> (size, first byte of each block) of
        the view as of tid."""
        self.proc.stdin.write('%s %s\n' % (how, hex16(tid)))
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            died = 'signal %s' % signal.Signals(-rc).name if rc < 0 else 'status %d' % rc
            raise AssertionError('the reader died (%s) on %s %s' % (died, how, hex16(tid)))
        size, firsts = line.split()
        return int(size), bytes.fromhex(firsts)

    def close(self):
        close_child(self.proc)


def cached_size(path):
    """The size the kernel holds for path, without asking wcfs (AT_STATX_DONT_SYNC)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)     # struct statx; stx_size at offset 40
    AT_FDCWD, AT_STATX_DONT_SYNC, STATX_SIZE = -100, 0x4000, 0x200
    if libc.statx(AT_FDCWD, os.fsencode(path), AT_STATX_DONT_SYNC, STATX_SIZE, buf) != 0:
        raise OSError(ctypes.get_errno(), 'statx %s' % path)
    return int.from_bytes(buf.raw[40:48], sys.byteorder)


@pytest.mark.timeout(180)
def test_view_resynced_to_growth_raced_by_a_stat_gets_no_sigbus(zeo, tmp_path):
    w = Writer(zeo.db())
    f, oid, tid = w.new_file(BS, {blk: bytes([blk + 1]) * BS for blk in range(4)})
    mnt = LaunchedWCFS([__file__, 'wcfs', REPLY_DELAY], zeo.zurl, tmp_path)
    try:
        os.mkdir(os.path.join(mnt.path, 'bigfile', hex16(oid)))
        data = os.path.join(mnt.path, 'bigfile', hex16(oid), 'head', 'data')
        reader = Reader(mnt.path, oid)
        try:
            reader.move('reopen', tid)
            for r in range(ROUNDS):
                nblk = f.size() // BS
                if nblk > MAX_BLOCKS:
                    f.truncate(4 * BS)
                else:
                    f.write_block(nblk + 1 + r % 3, bytes([r + 100]) * BS)
                # answered from the head before the commit, a while later
                stat = threading.Thread(target=os.stat, args=(data,))
                stat.start()
                tid = w.commit()
                try:
                    size, firsts = reader.move('reopen' if r % 3 == 2 else 'resync', tid)
                except AssertionError as e:
                    raise AssertionError('round %d: %s; head/data has %d bytes at %s, the '
                                         'kernel holds %d' % (r, e, f.size(), hex16(tid),
                                                              cached_size(data))) from None
                finally:
                    stat.join()
                content = f.read()
                assert size == len(content), 'round %d' % r
                assert firsts == content[::BS], 'round %d' % r
        finally:
            reader.close()
    finally:
        mnt.close()


if __name__ == '__main__':
    if sys.argv[1] == 'wcfs':
        sys.exit(launch(float(sys.argv[2]), sys.argv[3:]))
    if sys.argv[1] == 'reader':
        reader(sys.argv[2], int(sys.argv[3], 16))
