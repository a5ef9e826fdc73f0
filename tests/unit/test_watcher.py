"""The watcher without a mount: making a file visible, on a MappingStorage."""

import contextlib

import pytest

from devtools.procs import wait_for
from mappingdb import Database, oid_of
from wcfs_lib.zodb import zformat
from wcfs_lib.files.bigfile import BigFile
from wcfs_lib.files.table import BigFileTable
from wcfs_lib.follow.fileindex import FileIndex
from wcfs_lib.follow.oidindex import OidIndex
from wcfs_lib.service.stats import Stats
from wcfs_lib.follow.watcher import Watcher


def bare_file(oid, index):
    """A BigFile sharing nothing with others: enough for the table and the watcher."""
    return BigFile(oid, index, reads=None, kcache=None, kill=None, stats=None, shutdown=None,
                   waiting=None, applied=None)


def test_a_file_whose_load_fails_leaves_nothing_in_the_oid_index():
    """A mkdir whose catch-up fails leaves no entry of the file behind: a user
    repeating it would otherwise grow wcfs by 20 bytes a block each time."""
    db = Database()
    try:
        f = db.new_file()
        for blk in range(4):
            f.write_block(blk, b'block %d' % blk)
        db.root['f'] = f
        at, _ = db.commit()
        oid = oid_of(f)
        zblks = {oid_of(f.blktab[blk]) for blk in range(4)}
        table, oidindex = BigFileTable(), OidIndex()
        watcher = Watcher(db.loader, table, Stats(), oidindex, bare_file)
        kind, loading = table.start_loading(oid, at)
        assert kind == 'new'
        # a transaction to catch up on that the file cannot follow: as of
        # tid 1 the ZBigFile did not exist
        loading.backlog.append((1, frozenset([oid])))
        with pytest.raises(zformat.ObjectMissing):
            watcher._load(loading)
        assert oidindex.touched(zblks | {oid}) == {}
        assert table.start_loading(oid, at)[0] == 'new'     # the oid is free again
    finally:
        db.close()


def test_a_file_published_after_the_watcher_noted_a_transaction_gets_it_once():
    """Suspicion (issue 15, 6a), confirmed: the watcher notes transaction T
    (the files loading get it in their backlog) and then, with no lock held,
    reads which files are visible. A file published in between caught up on
    T from its backlog: it must not be in what the watcher hands T to."""
    db = Database()
    try:
        f = db.new_file()
        f.write_block(0, b'first')
        db.root['f'] = f
        at, _ = db.commit()
        oid = oid_of(f)
        f.write_block(0, b'second')
        tid, oids = db.commit()
        table, oidindex = BigFileTable(), OidIndex()
        kind, loading = table.start_loading(oid, at)
        index = FileIndex(db.loader, oid, at, oidindex)

        visible = table.note_transaction(tid, oids)     # the watcher, under zhead_lock
        bf, backlog = table.publish(loading, lambda: bare_file(oid, index))
        assert (bf, backlog) == (None, [(tid, oids)])   # mkdir catches up on T ...
        index.update(tid, oids, oidindex.touched(oids).get(index.fid, ()))
        bf, _ = table.publish(loading, lambda: bare_file(oid, index))
        assert bf is not None and index.at == tid
        # ... and the watcher, reading the table only now, does not give T again
        assert index.fid not in visible and bf not in visible.values()
    finally:
        db.close()


@contextlib.contextmanager
def watched_file():
    """(db, f, watcher): an empty ZBigFile committed, a watcher (not started)
    over no visible file; the watcher stopped and db closed after."""
    db = Database()
    watcher = None
    try:
        f = db.new_file()
        db.root['f'] = f
        db.commit()
        watcher = Watcher(db.loader, BigFileTable(), Stats(), OidIndex(), bare_file)
        yield db, f, watcher
    finally:
        if watcher is not None:
            watcher.stop()
        db.close()


def test_queued_counts_the_commits_told_and_not_taken_up():
    """.wcfs/metrics wcfs_zhead_lag_transactions: commits the database told
    of and the watcher has not reached; a resync is no commit."""
    with watched_file() as (db, f, watcher):
        start = watcher.zhead
        f.write_block(0, b'one')
        t1, oids1 = db.commit()
        f.write_block(0, b'two')
        t2, oids2 = db.commit()
        assert watcher.queued() == 0
        watcher.on_commit(t1, oids1)
        watcher.on_resync()
        watcher.on_commit(t2, oids2)
        assert watcher.queued() == 2 and watcher.zhead == start
        watcher.start()
        wait_for(lambda: watcher.zhead == t2 and watcher.queued() == 0, 10,
                 'the watcher to take the commits up')


def test_a_resync_at_a_polled_tid_asks_the_database_nothing_when_nothing_was_missed():
    """RelStorage's first poll is a resync, told with the tid it found: it
    asked the database's last tid again, and that one request, when it came
    after a mkdir, showed as .wcfs/metrics' reads asking the database
    (test_metrics, CI of 2026-12-05). A resync that missed commits still
    applies them; one told no tid still asks."""
    with watched_file() as (db, f, watcher):
        watcher.start()
        requests = db.loader.records.requests
        watcher.on_resync(watcher.zhead)
        watcher.on_commit(watcher.zhead, frozenset())       # taken up after the resync
        wait_for(lambda: watcher.queued() == 0, 10, 'the watcher to take the resync up')
        assert db.loader.records.requests == requests
        f.write_block(0, b'missed')
        missed, _ = db.commit()
        watcher.on_resync(missed)
        wait_for(lambda: watcher.zhead == missed, 10, 'the resync to apply the missed commit')
        requests = db.loader.records.requests
        watcher.on_resync()
        watcher.on_commit(missed, frozenset())
        wait_for(lambda: watcher.queued() == 0, 10, 'the watcher to take the resync up')
        assert db.loader.records.requests == requests + 1
