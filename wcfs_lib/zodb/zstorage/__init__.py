"""The database: opening it, loading records from it, following it.

Every use of a storage's API, public or private, is in this package; the
format module (zformat) decodes what `Records` loads and does no I/O itself.

One kind of database per module, each a `Database` (base.py) with the same
few methods: load a record as of a revision, the last transaction asked of
the server, the oids changed in a range of transactions (where it lists them
in one round trip, or else walked: walks.py shares and keeps the walks), and
a follower that hands the watcher `(tid, oids)` of every commit, one at a
time; several folded into one item only where the storage cannot list them
(a poll past a bound, a reconnection), and then said to be folded:

- zeo.py: a ZEO ClientStorage; the server pushes every commit. Pinged: a
  connection to a server that hangs is aborted after the database timeout.
- mvcc.py: an IMVCCStorage (RelStorage on PostgreSQL); polled, and loaded
  through a bounded pool of instances, each brought to the revision asked.
  Every use of a connection is cut off after the database timeout.
- plain.py: any other storage (FileStorage, MappingStorage); it pushes
  through registerDB, if at all.

`Records` adds what every kind shares: retries while the database is away,
`DatabaseUnavailable` after the database timeout, and the count of requests.
"""

import time

from ZODB.POSException import POSKeyError
from ZODB.utils import p64, u64

from ... import locks
from .base import (FOLLOWING_MODES, Database, DatabaseUnavailable, RecordTooLarge, is_disconnect,
                   oneline)
from .opening import OpenError, UsageError, database_of, open_database, resolve
from .walks import Cancelled, Walks

__all__ = ['Cancelled', 'Database', 'DatabaseUnavailable', 'FOLLOWING_MODES', 'OpenError',
           'Records', 'RecordTooLarge', 'RETRY_PAUSE', 'UsageError', 'database_of', 'is_disconnect',
           'open_database', 'resolve']

RETRY_PAUSE = 0.5   # seconds between tries of work that waits for the database


class Records:
    """Raw records of one database as of any revision; thread-safe.

    `database`: a Database, or a bare storage (tests), which is wrapped."""

    def __init__(self, database, db_timeout=30.0):
        if not isinstance(database, Database):
            database = database_of(database)
        self.database = database
        self.db_timeout = db_timeout
        self._unreachable = False   # a request gave up on the database
        self.requests = 0           # round trips asked of the database (.wcfs/stats db_requests)
        self._requests_lock = locks.lock('Records._requests_lock')  # guards requests: every thread asks
        self.walks = Walks(database.walk)

    def _asked(self):
        """Count one round trip: exact, whichever threads ask at once."""
        with self._requests_lock:
            self.requests += 1

    def record(self, oid, at, fresh=False, cache=True, max_size=None):
        """-> (data, serial, end) of `oid` as of `at`; None when the object
        does not exist then (or was packed away). `end` is the tid of the
        next revision of the object, or None.

        fresh: ask the server, not a client cache (which does not learn of
        packs). cache=False: a record read once (a block's data), which
        a client cache had better not keep. max_size: the record is in no
        cache (a block's, or one a transaction just wrote); where the
        database can tell its size first, RecordTooLarge for one longer.
        """
        if self._unreachable and not self.connected():
            raise DatabaseUnavailable('oid %016x @%016x: database unreachable' % (oid, at))
        deadline = time.monotonic() + self.db_timeout
        while True:
            self._asked()
            try:
                if max_size is None:
                    r = self.database.load(p64(oid), p64(at + 1), fresh, cache)
                else:
                    r = self.database.load_bounded(p64(oid), p64(at + 1), fresh, cache, max_size)
                break
            except POSKeyError:
                r = None
                break
            except Exception as e:
                if not is_disconnect(e):
                    raise
                if time.monotonic() >= deadline:
                    self._unreachable = True
                    raise DatabaseUnavailable('oid %016x @%016x: database unreachable: %s'
                                              % (oid, at, oneline(e))) from None
                time.sleep(0.1)
        self._unreachable = False
        if r is None or r[0] is None:
            return None
        data, serial, end = r
        return data, u64(serial), (None if end is None else u64(end))

    def changed_oids(self, a, b, upto=None, cancelled=None):
        """-> the oids that the transactions in (a, b] modified, or None where
        the database cannot list them. With `upto` (>= b), the oids of the
        transactions in (b, upto] may be there too: the caller knows they
        changed nothing it looks at. `cancelled`: a callable, true once the
        caller no longer needs the answer (Cancelled then, and a walk that
        nobody else waits for stops)."""
        self._asked()
        try:
            oids = self.database.listed_oids(a, b, upto)
            if oids is None:
                oids = self.walks.changed_oids(a, b, cancelled)
            return oids
        except Exception as e:
            if not is_disconnect(e):
                raise
            raise DatabaseUnavailable('transactions (%016x, %016x]: database unreachable: %s'
                                      % (a, b, oneline(e))) from None

    def prefetch(self, oids, at):
        """Have the records of `oids` as of `at` loaded in the background,
        where the database can; nothing while it is away: the loads that
        follow ask."""
        if len(oids) < 2:
            return
        try:
            self.database.prefetch(oids, at)
        except Exception as e:
            if not is_disconnect(e):
                raise

    def last_tid(self):
        """The last transaction the database has committed, asked of the
        server, so that a tid a client saw is never 'future'."""
        self._asked()
        try:
            return self.database.last_tid()
        except Exception as e:
            if not is_disconnect(e):
                raise
            raise DatabaseUnavailable('last transaction: database unreachable: %s'
                                      % oneline(e)) from None

    def connected(self):
        return self.database.connected()
