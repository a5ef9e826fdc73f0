"""A database in memory for the tests that need no server: ZBigFiles written
with wcfs_lib.zbig (devtools.py2str for Python 2 str) into a ZODB.DB on a
MappingStorage, which keeps every revision of every object, and read back
through the records wcfs decodes.
"""

import transaction
import ZODB
from ZODB.MappingStorage import MappingStorage
from ZODB.utils import u64

from devtools.py2str import zbigfile as py2str_zbigfile
from wcfs_lib.zodb import zformat, zstorage

B = 4096        # the block size of new_file() unless told


def db_with_connection(storage):
    """A generator for fixtures: a ZODB.DB on storage with .tm, a transaction
    manager of its own, and .conn, a connection under it; all closed after."""
    db = ZODB.DB(storage)
    db.tm = transaction.TransactionManager()
    db.conn = db.open(db.tm)
    try:
        yield db
    finally:
        db.tm.abort()
        db.conn.close()
        db.close()


class Database:
    """A ZODB.DB on a MappingStorage, a connection to write with, a loader to read with."""

    def __init__(self, py2str=False):
        self.py2str = py2str
        self.storage = MappingStorage()
        self.db = ZODB.DB(self.storage)
        self.tm = transaction.TransactionManager()
        self.conn = self.db.open(self.tm)
        self.root = self.conn.root()
        self.loader = zformat.ZLoader(zstorage.Records(self.storage))

    def new_file(self, blksize=B):
        return py2str_zbigfile(blksize, self.py2str)

    def commit(self):
        """-> (tid, oids it modified), or None when there was nothing to write."""
        last = self.storage.lastTransaction()
        self.tm.commit()
        tid = self.storage.lastTransaction()
        if tid == last:
            return None
        for txn in self.storage.iterator(tid, tid):
            return u64(tid), frozenset(u64(rec.oid) for rec in txn)
        raise AssertionError('transaction %016x is not in the storage' % u64(tid))

    def close(self):
        self.tm.abort()
        self.conn.close()
        self.db.close()


def oid_of(obj):
    return u64(obj._p_oid)
