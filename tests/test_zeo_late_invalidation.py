"""A tid another process saw committed is never 'after the last
transaction' to wcfs, however late its invalidation reaches wcfs's ZEO
client (found by the isolation stress on ZEO: 3 runs in 60 lost a reader
to ENOENT for `mkdir @<tid>` of a tid in the writer's log).

A ZEO server answers the committer first and tells the other clients on
their connections' own threads, later; wcfs asked "a ping, then the
client's last tid", and a ping can overtake that invalidation. The server
here (this file, `runzeo`) sends every invalidation 0.5 s late, so that a
mkdir or a want right after a commit always comes first.
"""

import os
import sys
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)        # run as a script too: `runzeo`
sys.path.insert(0, os.path.join(ROOT, 'tests'))

LATE = 0.5      # seconds before the server tells other clients of a commit
BS = 4096


def runzeo(argv):
    """runzeo with argv, telling other clients of every commit LATE seconds late."""
    import ZEO.StorageServer
    import ZEO.runzeo

    tell_now = ZEO.StorageServer.StorageServer.invalidate

    def tell_late(self, *args):
        threading.Timer(LATE, tell_now, (self, *args)).start()

    ZEO.StorageServer.StorageServer.invalidate = tell_late
    sys.argv = ['runzeo'] + argv
    ZEO.runzeo.main()


@pytest.fixture
def late_zeo(tmp_path):
    from devtools.zeoserver import ZEOServer

    class LateZEOServer(ZEOServer):
        @property
        def argv(self):
            return [sys.executable, __file__, 'runzeo'] + super().argv[1:]

    server = LateZEOServer(tmp_path / 'zeo')
    server.dir.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.timeout(120)
def test_a_tid_just_committed_is_no_future_tid(late_zeo, wcfs_mount):
    from wcfs_lib import client
    from zhelp import Writer

    w = Writer(late_zeo.db())
    f, oid, _ = w.new_file(BS, {0: b'first'})
    mnt = wcfs_mount(late_zeo.zurl)
    with client.connect(mnt.path) as wc:
        fdir = wc.bigfile_dir(oid)
        view = wc.open(oid)
        try:
            for i in range(3):
                f.write_block(1 + i, b'block %d' % i)
                tid = w.commit()
                # wcfs has not been told of tid yet: it must ask, and wait
                os.mkdir(os.path.join(fdir, '@%016x' % tid))
                with open(os.path.join(fdir, '@%016x' % tid, 'data'), 'rb') as g:
                    assert g.read() == f.read(), '@%016x' % tid
                f.write_block(0, b'changed %d' % i)
                tid = w.commit()
                view.resync(tid)            # a want of a tid wcfs was not told of yet
                assert bytes(view.ndarray()) == f.read(), '@%016x' % tid
        finally:
            view.close()


if __name__ == '__main__' and sys.argv[1:2] == ['runzeo']:
    runzeo(sys.argv[2:])
