"""wcfs for Python programs.

- `zconn`: numpy arrays of ZBigArrays that follow their ZODB connection
  (`asarray(zbigarray)`), over the views.
- `join`: the wcfs of a database on this machine, found by its ZURL (or a
  ZODB DB's), started when asked (`join(zurl_or_db, autostart=False)`);
  `dbzurl`: the ZURL of a ZODB DB.
- `views`: isolated views of a ZBigFile by oid and tid, over a wcfs mount
  (`connect(mountpoint)`, `Connection.open`, `View.ndarray`, `View.resync`).

It imports the leaves and ZODB, never the server's packages.
"""

from .join import join
from .views import DEFAULT_RESERVE, Connection, View, WCFSError, connect
from .zconn import asarray, snapshot_at

__all__ = ['DEFAULT_RESERVE', 'Connection', 'View', 'WCFSError', 'asarray', 'connect', 'join',
           'snapshot_at']
