"""A view whose channel wcfs dropped keeps showing its `at`, and never
SIGBUS (issue 15, item 0).

wcfs drops, without killing, a subscription that holds up an update past
--kill-timeout when it cannot be sure whose it is (SPEC 4.4): here a process
with two views of one file, that is two channels, whose reader thread is
held up (as on a machine so loaded that it does not run for the whole
timeout). The update then goes on: head/data shrinks under the view's
mapping. Once the client library learns that the channel failed, the view
must show the file as of its `at`, also past head's new end, where a page
of head/data would be SIGBUS.
"""

import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)        # run as a script too: `client`

from devtools.procs import wait_for  # noqa: E402
from zhelp import KiB, Writer, hex16, stat_int, wait_head  # noqa: E402

BS = 64 * KiB
BLOCKS = 8
KILL_TIMEOUT = 2


def content(blk):
    return bytes([blk + 1]) * BS


def client(mountpoint, oid, at):
    """Two views of oid as of at; hold up the first one's reader until told
    to go on, wait for its channel to fail, and print whether the whole
    array still shows at (touching every page, past head's end too)."""
    from wcfs_lib import client as wclient

    with wclient.connect(mountpoint) as wc:
        view = wc.open(oid, at=at)
        other = wc.open(oid, at=at)
        a = view.ndarray()
        with view._lock:            # the reader thread cannot ack meanwhile
            print('ready', flush=True)
            sys.stdin.readline()
        wait_for(lambda: failed(view), 20, 'the view to fail')
        want = b''.join(content(blk) for blk in range(BLOCKS))
        print('same' if bytes(a) == want else 'changed', flush=True)
        other.close()
        view.close()


def failed(view):
    from wcfs_lib.client import WCFSError

    try:
        view.resync(view.at)
    except WCFSError:
        return True
    return False


@pytest.mark.timeout(120)
def test_view_of_a_dropped_channel_keeps_its_at_past_heads_new_end(zeo, wcfs_mount):
    w = Writer(zeo.db())
    f, oid, tid0 = w.new_file(BS, {blk: content(blk) for blk in range(BLOCKS)})
    mnt = wcfs_mount(zeo.zurl, '--kill-timeout', str(KILL_TIMEOUT))
    fdir = mnt.bigfile(oid)
    proc = subprocess.Popen([sys.executable, __file__, 'client', mnt.path, hex16(oid),
                             hex16(tid0)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == 'ready\n'
        f.truncate(2 * BS)
        f.write_block(0, b'\xff' * BS)
        tid1 = w.commit()
        wait_head(fdir, tid1, timeout=30)       # past the kill timeout: dropped
        proc.stdin.write('go\n')
        proc.stdin.flush()
        out = proc.stdout.readline()
        rc = proc.wait(30)
        if rc < 0:
            pytest.fail('the client died of %s' % signal.Signals(-rc).name, pytrace=False)
        assert out == 'same\n'
        assert rc == 0
        assert stat_int(mnt, 'clients_killed') == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


if __name__ == '__main__' and sys.argv[1:2] == ['client']:
    client(sys.argv[2], int(sys.argv[3], 16), int(sys.argv[4], 16))
