"""A view at a tid that wcfs learned of folded with later commits shows
exactly that tid (issue 15, item 0: the SIGBUS of the isolation stress).

A poll of PostgreSQL finds every commit since the last one: told as one
step, they are their net δ. A file grown at T1 and shrunk back at T2, a
block pointed to a new object at T1 and back to its old one at T2: no net
δ from T0 to T2, so a δ history made of such steps answers `want T1` with
nothing to take from @T1/data. The client then maps head/data (as of T2,
shorter) over the whole view of T1: the grown blocks are past head/data's
end, and touching them is SIGBUS (two readers of the stress test died so,
at once: both had their view moved to the same T1), and block 0 shows T2.

wcfs polls here every 0.3 s, so that two commits made back to back
are surely found by one poll. wcfs lists the commits of a poll one by one
(`split`); where it cannot (`folded`: here forced, in life a poll past the
listing's bound), the step is marked folded and no tid inside it is taken
from the δ history. ZEO tells every commit on its own: the same test holds.
"""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)        # run as a script too: `launch`
sys.path.insert(0, os.path.join(ROOT, 'tests'))

from stresshelp import BS, block_hashes, probe  # noqa: E402

POLL_INTERVAL = 0.3     # seconds: two commits back to back fall in one poll
ROUNDS = 6
NBLK = 12


def launch(mode, argv):
    """Run wcfs with argv; with mode `folded`, every poll of PostgreSQL
    stays one step, as past the listing's bound."""
    from wcfs_lib.zodb.zstorage import mvcc
    import wcfs

    if mode == 'folded':
        mvcc.SPLIT_RECORDS = 0
    return wcfs.main(argv)


def grow_and_change_block0(w, f):
    """T1: block 0 a new object with new bytes, the file grown past a hole."""
    f.write_block(0, os.urandom(BS), 'ZBlk1')       # another kind: another object
    f.write_block(NBLK + 20, os.urandom(BS))
    return w.commit()


def back_as_before(w, f, old_block0):
    """T2: block 0 its old object again, the file its old size: no net δ since T0."""
    f.blktab[0] = old_block0
    f.truncate(NBLK * BS)
    return w.commit()


@pytest.mark.timeout(180)
@pytest.mark.parametrize('mode', ['split', 'folded'])
def test_a_view_inside_folded_commits_shows_its_tid(database, tmp_path, request, mode):
    from wcfs_lib import client
    from zhelp import LaunchedWCFS, Writer, wait_head

    if mode == 'folded' and request.node.callspec.params['database'] != 'postgres':
        pytest.skip('only a PostgreSQL poll folds commits')
    w = Writer(database.db())
    f, oid, _ = w.new_file(BS, {blk: os.urandom(BS) for blk in range(NBLK)})
    mnt = LaunchedWCFS([__file__, 'wcfs', mode, '--db-poll-interval', str(POLL_INTERVAL)],
                       database.zurl, tmp_path)
    mem = os.open('/proc/self/mem', os.O_RDONLY)
    try:
        with client.connect(mnt.path) as wc:
            fdir = wc.bigfile_dir(oid)
            for _ in range(ROUNDS):
                old_block0 = f.blktab[0]
                t1 = grow_and_change_block0(w, f)
                want1 = block_hashes(f.read())
                t2 = back_as_before(w, f, old_block0)
                want2 = block_hashes(f.read())
                wait_head(fdir, t2)
                for tid, want in ((t1, want1), (t2, want2)):
                    with wc.open(oid, at=tid) as view:
                        got = probe(view, mem, mnt.path)
                        assert not isinstance(got, dict), \
                            '@%016x: a page would be SIGBUS: %s' % (tid, got)
                        assert (view.size, got) == (len(want) * BS, want), '@%016x' % tid
    finally:
        os.close(mem)
        mnt.close()


if __name__ == '__main__' and sys.argv[1:2] == ['wcfs']:
    sys.exit(launch(sys.argv[2], sys.argv[3:]))
