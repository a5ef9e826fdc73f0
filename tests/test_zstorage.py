"""zstorage: which Database serves which storage, and the ZEO privates it
checks at open (an upgrade of ZEO that drops one must fail at start)."""

import pytest
from ZODB.MappingStorage import MappingStorage
from ZODB.utils import u64

from wcfs_lib.zodb import zformat, zstorage
from wcfs_lib.zodb.zstorage.mvcc import MVCCDatabase
from wcfs_lib.zodb.zstorage.plain import PlainDatabase
from wcfs_lib.zodb.zstorage.zeo import MissingPrivate, ZEODatabase
from zhelp import KiB, Writer

BS = 64 * KiB


def test_zeo_storage_is_served_by_zeo_database(zeo_client):
    db = zstorage.database_of(zeo_client)
    assert isinstance(db, ZEODatabase)
    assert db.last_tid() == int.from_bytes(zeo_client.lastTransaction(), 'big')


@pytest.mark.parametrize('private', ['_call', '_server.prefetch', '_server.client.info',
                                     '_server.io_call'])
def test_missing_zeo_private_is_refused_naming_it(zeo_client, private):
    *path, name = private.split('.')
    obj = zeo_client
    for step in path:
        obj = getattr(obj, step)
    saved = getattr(obj, name)
    setattr(obj, name, None)
    try:
        with pytest.raises(MissingPrivate, match=r'ClientStorage\.%s is gone' % private.replace('.', r'\.')):
            zstorage.database_of(zeo_client)
    finally:
        setattr(obj, name, saved)


def test_other_storages_are_served_plainly():
    storage = MappingStorage()
    try:
        db = zstorage.database_of(storage)
        assert isinstance(db, PlainDatabase) and not isinstance(db, MVCCDatabase)
        assert zstorage.Records(db).last_tid() == 0
    finally:
        storage.close()


# ---- the span of a block's records (blocks shared by content, blockcache.py) ----

def test_a_block_current_in_an_old_snapshot_claims_no_later_revision(database):
    """A record without a next revision is current only as of the snapshot
    it was read in: a pooled PostgreSQL connection can still be at an older
    one while the watcher applied a newer commit, and a span up to that
    commit would serve the old block for it."""
    w = Writer(database.db())
    f, _oid, t1 = w.new_file(BS, {0: b'old' * 100})
    zblk = u64(f.blktab[0]._p_oid)
    opened = zstorage.open_database(database.zurl, 10, connections=1)
    try:
        loader = zformat.ZLoader(zstorage.Records(opened))
        loader.load_block_data(zblk, t1, BS, zformat.Span(t1))     # the connection at t1
        f.write_block(0, b'new' * 100)
        t2 = w.commit()
        assert u64(f.blktab[0]._p_oid) == zblk                      # changed in place
        span = zformat.Span(t2)             # the watcher has applied t2
        data, _ = loader.load_block_data(zblk, t1, BS, span)
        assert bytes(data.view()) == b'old' * 100
        assert (span.lo, span.hi) == (t1, t2 - 1)
    finally:
        opened.close()
