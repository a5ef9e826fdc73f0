"""numpy arrays of ZBigArrays that follow their ZODB connection.

    from wcfs_lib import client, zbig
    zbig.install()                      # wendelin.core's classes, for ZODB to load
    conn = db.open()
    A = client.asarray(conn.root()['A'])    # read-only numpy array, no copy
    ...                                 # other processes commit: A does not change
    transaction.begin()                 # A shows the connection's new snapshot

Contract:

- An array shows the whole ZBigArray (its dtype, shape and order) as of its
  connection's snapshot, like every other object of that connection. Between
  two transaction boundaries of the connection (`transaction.begin()`,
  `commit()`, `abort()`, `db.open()` of a pooled connection) it never
  changes, whatever other processes commit.
- At a boundary, every array already handed out shows the new snapshot, in
  the shape it was made with: where the file became shorter it reads zeros
  (never SIGBUS); a new `asarray` gives the array of the new shape.
- A historical connection (`db.open(at=...)`, `before=...`) never moves: its
  arrays never change.
- Writes stay ZODB's: the arrays are read-only, a program writes through the
  ZBigArray object and commits. Until that commit, its arrays show the
  snapshot, not its own changes (the shape too: `asarray` of a ZBigArray
  changed in this transaction gives the array of its last committed state).
  After the commit they show the commit, as every other process's arrays do
  once their connection passes a boundary.
- One wcfs channel per ZBigFile and connection, however many arrays. Closing
  the connection releases them; arrays still held keep showing the last
  snapshot (`@<at>/data` is mapped under them) until they are gone.
- A failure to follow at a boundary (wcfs gone, the database unreachable) is
  a WCFSError raised from that boundary, after ZODB moved the connection;
  the arrays of that file stay as of the old snapshot, and the next
  `asarray` of it makes a fresh channel.

How: ZODB moves a connection's snapshot in `Connection.newTransaction`, at
every boundary. A synchronizer on the transaction manager (the public hook)
may run before the connection's own, in no set order, so the follower wraps
the connection's `newTransaction` (on the instance; ZODB's classes are not
touched) and moves its views after it. The snapshot comes from the storage
the connection loads through: `_start` of ZODB's MVCCAdapterInstance (ZEO,
FileStorage), `_before` of its HistoricalStorageAdapter, or RelStorage's
`highest_visible_tid`. These are private; they are checked when the first
array of a connection is made, and a WCFSError names what is missing.
"""

import threading
import weakref

import numpy
from ZODB.utils import u64, z64

from .join import join
from .views import DEFAULT_RESERVE, WCFSError

_lock = threading.Lock()                        # guards _followers and _wcfs
_followers = weakref.WeakKeyDictionary()        # ZODB Connection -> _Follower
_wcfs = weakref.WeakKeyDictionary()             # ZODB DB -> client Connection


def asarray(zarray, wc=None, autostart=False):
    """-> a read-only numpy array of the ZBigArray `zarray` as of its ZODB
    connection's snapshot, following that connection (module docstring).

    wc: the client Connection of the wcfs to read through; default: the one
    `join` finds for the connection's database (starting one if autostart),
    kept for that DB. The first call on a ZODB connection decides: its later
    arrays are read through the same wcfs.
    """
    zconn = zarray._p_jar
    if zconn is None or zarray._p_oid is None:
        raise WCFSError('%r: not loaded through a ZODB connection (a new ZBigArray is '
                        'readable through wcfs once committed)' % (zarray,))
    state = _array_state(zarray)
    with _lock:
        follower = _followers.get(zconn)
        if follower is None:
            follower = _followers[zconn] = _Follower(zconn, wc or _wcfs_of(zconn.db(), autostart))
    return follower.array(*state)


def _wcfs_of(db, autostart):
    """The client Connection to the wcfs serving db (_lock held): one per DB."""
    wc = _wcfs.get(db)
    if wc is None:
        wc = _wcfs[db] = join(db, autostart=autostart)
    return wc


def snapshot_at(zconn):
    """-> the tid the ZODB connection zconn sees the database as of (int)."""
    storage = zconn._storage
    for attr in ('_start', '_before'):      # ZODB's MVCCAdapterInstance, HistoricalStorageAdapter
        before = getattr(storage, attr, None)
        if isinstance(before, bytes) and len(before) == 8:
            return u64(before) - 1
    at = getattr(storage, 'highest_visible_tid', None)     # RelStorage
    if isinstance(at, int) and at > 0:
        return at
    raise WCFSError('ZODB connection over %s.%s: its snapshot is not known (no _start, '
                    '_before or highest_visible_tid): wcfs_lib.client cannot follow it'
                    % (type(storage).__module__, type(storage).__qualname__))


class _Follower:
    """The wcfs views of one ZODB connection, moved at its boundaries.

    A ZODB connection is used by one thread at a time, and so is its
    follower: it has no lock of its own."""

    def __init__(self, zconn, wc):
        if not callable(getattr(type(zconn), 'newTransaction', None)):
            raise WCFSError('%s.%s has no newTransaction: wcfs_lib.client cannot follow '
                            'its snapshot' % (type(zconn).__module__, type(zconn).__qualname__))
        self.wc = wc
        self.at = snapshot_at(zconn)
        self._views = {}                # ZBigFile oid -> View as of self.at
        self._zconn = weakref.ref(zconn)
        self._on_close = False          # our close callback is registered
        own = type(zconn).newTransaction.__get__(zconn)
        follower = weakref.ref(self)

        def new_transaction(transaction, sync=True):
            own(transaction, sync)
            me = follower()
            if me is not None:
                me._move()
        zconn.newTransaction = new_transaction

    def array(self, dtype, shape, order, zfile):
        nbytes = int(numpy.prod(shape, dtype=numpy.int64)) * dtype.itemsize
        view = self._view(u64(zfile._p_oid), nbytes)
        return view.ndarray(dtype, shape, order=order, zeros_past_end=True)

    def _view(self, oid, nbytes):
        view = self._views.get(oid)
        if view is not None and view._reserve < nbytes:
            view.release()          # its arrays stay as of self.at; a larger one follows
            view = None
        if view is None:
            view = self.wc.open(oid, at=self.at, reserve=max(DEFAULT_RESERVE, 2 * nbytes))
            self._views[oid] = view
            self._release_on_close()
        return view

    def _release_on_close(self):
        # ZODB forgets close callbacks at each close: a pooled connection
        # opened again registers anew with its first view.
        if not self._on_close:
            self._zconn().onCloseCallback(self._release)
            self._on_close = True

    def _release(self):
        self._on_close = False
        views, self._views = self._views, {}
        for view in views.values():
            view.release()

    def _move(self):
        zconn = self._zconn()
        if zconn is None or zconn.opened is None:
            return                          # a closed connection: nothing to follow
        at = snapshot_at(zconn)
        if at == self.at:
            return
        self.at = at
        failed = []
        for oid, view in list(self._views.items()):
            try:
                view.resync(at)
            except WCFSError as e:
                view.release()
                del self._views[oid]
                failed.append(str(e))
        if failed:
            raise WCFSError('the ZBigArrays of this ZODB connection stay as of the old '
                            'snapshot: %s' % '; '.join(failed))


def _array_state(zarray):
    """-> (dtype, shape, order, zfile) of zarray as of its connection's
    snapshot: its last committed state if this transaction changed it."""
    zarray._p_activate()                    # a ghost's serial is z64 too
    if zarray._p_serial == z64:
        raise WCFSError('%r: not committed yet' % (zarray,))
    if zarray._p_changed:
        state = zarray._p_jar.oldstate(zarray, zarray._p_serial)
    else:
        state = zarray.__getstate__()
    attrs, slots = state if isinstance(state, tuple) else (state, {})
    attrs = dict(attrs, **slots)
    try:
        dtype = numpy.dtype(attrs['_dtype'])
        shape = tuple(int(n) for n in attrs['_shape'])
        order = attrs.get('_order', 'C')    # absent in early wendelin.core records
        zfile = attrs['zfile']
    except (KeyError, TypeError) as e:
        raise WCFSError('%r: not a ZBigArray state (%s)' % (zarray, e)) from e
    if order not in ('C', 'F'):
        raise WCFSError('%r: order %r is neither C nor F' % (zarray, order))
    if getattr(zfile, '_p_oid', None) is None:
        raise WCFSError('%r: its zfile is not in the database' % (zarray,))
    return dtype, shape, order, zfile
