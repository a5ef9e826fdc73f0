"""A storage that is neither ZEO nor MVCC: FileStorage, MappingStorage.

It is loaded directly, and followed through registerDB where it tells of
commits at all (a read-only FileStorage never changes after it is opened).
"""

from ZODB.utils import u64

from .base import Database


class PlainDatabase(Database):
    def load(self, oid, before, fresh, cache):
        return self.storage.loadBefore(oid, before)

    def last_tid(self):
        return u64(self.storage.lastTransaction())

    def follow(self, on_commit, on_resync, on_pack):
        self.storage.registerDB(Invalidations(on_commit, on_resync))


class Invalidations:
    """What registerDB wants (the part of a DB a storage calls), turned into
    on_commit(tid, oids) with ints."""

    def __init__(self, on_commit, on_resync):
        self._on_commit = on_commit
        self.invalidateCache = on_resync

    def invalidate(self, tid, oids):
        self._on_commit(u64(tid), frozenset(u64(oid) for oid in oids), False)

    def transform_record_data(self, data):
        return data

    untransform_record_data = transform_record_data
