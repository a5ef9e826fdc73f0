"""zstorage: which Database serves which storage, and the ZEO privates it
checks at open (an upgrade of ZEO that drops one must fail at start)."""

import pytest
from ZODB.MappingStorage import MappingStorage

from wcfs_lib import zstorage
from wcfs_lib.zstorage.mvcc import MVCCDatabase
from wcfs_lib.zstorage.plain import PlainDatabase
from wcfs_lib.zstorage.zeo import MissingPrivate, ZEODatabase


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
