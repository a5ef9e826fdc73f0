"""An open of @<tid>/data never holds a revdir that wcfs removed meanwhile.

wcfs removes an `@<tid>/` directory once nothing in it was open for
--revdir-timeout. An open resolves the path to the revdir, then counts
itself as a use of it: a removal in between (the timer runs every second,
and a worker thread descheduled on a loaded machine leaves it all the time
it needs) gave the open a revdir that was no longer there. Its reads went
on, but a getattr (fstat) answered ENOENT: the client library, whose
`_open_rev` stats the file it opened, failed with FileNotFoundError, and a
reader of tests/test_isolation_stress.py would have died of it.

Here the window is made wide on purpose: wcfs runs under a launcher (this
file, `launch`) that, while the file `armed` exists, waits DELAY seconds
between resolving an open of a revdir's data and counting the use (once:
it removes `armed`), longer than the revdir timeout and a tick of the
timer.
"""

import os
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)        # run as a script too: `launch`

from zhelp import KiB, LaunchedWCFS, Writer  # noqa: E402

BS = 64 * KiB
REVDIR_TIMEOUT = 1
DELAY = REVDIR_TIMEOUT + 2.5    # the timeout, then a tick of the timer, and some


def launch(armed, argv):
    """Run wcfs with argv; while `armed` exists, the first open of a
    revdir's data waits DELAY seconds before it counts as a use."""
    from wcfs_lib.kernel import fs
    import wcfs

    new_handle_now = fs.WCFS._new_handle

    def new_handle_late(self, h):
        if h.node.kind == fs.REVDATA and os.path.exists(armed):
            os.unlink(armed)
            time.sleep(DELAY)
        return new_handle_now(self, h)

    fs.WCFS._new_handle = new_handle_late
    return wcfs.main(argv)


@pytest.mark.timeout(120)
def test_view_opened_while_its_revdir_expires(zeo, tmp_path):
    from wcfs_lib import client

    w = Writer(zeo.db())
    f, oid, tid = w.new_file(BS, {blk: bytes([blk + 1]) * BS for blk in range(3)})
    armed = tmp_path / 'armed'
    mnt = LaunchedWCFS([__file__, 'wcfs', armed, '--revdir-timeout', REVDIR_TIMEOUT],
                       zeo.zurl, tmp_path)
    try:
        with client.connect(mnt.path) as wc:
            wc.bigfile_dir(oid)
            armed.touch()
            view = wc.open(oid, at=tid)     # mkdir @<tid>, open its data (late), fstat
            try:
                assert not armed.exists(), 'the launcher did not delay the open'
                assert bytes(view.ndarray()) == f.read()
            finally:
                view.close()
    finally:
        mnt.close()


if __name__ == '__main__' and sys.argv[1] == 'wcfs':
    sys.exit(launch(sys.argv[2], sys.argv[3:]))
