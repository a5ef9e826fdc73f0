"""What both private database servers (zeoserver.ZEOServer and
pgcluster.PGServer) give a test through the same interface: one ZODB.DB
made on first use, another on demand, the last transaction.

Every ZODB.DB of devtools is made by open_db(), after zbig.install(): the
tests, the demo and the benchmarks write zbig's classes through them."""

import ZODB

from wcfs_lib import zbig


def open_db(storage):
    """A ZODB.DB on storage, in a process where wendelin.core's classes load and write (zbig.install())."""
    zbig.install()
    return ZODB.DB(storage)


class ServedDatabase:
    _db = None

    def new_db(self):
        """Another ZODB.DB on the database, with a client of its own; the caller closes it."""
        raise NotImplementedError

    def db(self):
        """A ZODB.DB on the database, made once, closed by close_db()."""
        if self._db is None:
            self._db = self.new_db()
        return self._db

    def close_db(self):
        if self._db is not None:
            self._db.close()
            self._db = None

    def last_transaction(self):
        """The last tid of the database, 8 bytes (pgcluster.last_transaction)."""
        from .pgcluster import last_transaction
        return last_transaction(self.db())
