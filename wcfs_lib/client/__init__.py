"""wcfs for Python programs.

- `zconn`: numpy arrays of ZBigArrays that follow their ZODB connection
  (`asarray(zbigarray)`), over the views.
- `views`: isolated views of a ZBigFile by oid and tid, over a wcfs mount
  (`connect(mountpoint)`, `Connection.open`, `View.ndarray`, `View.resync`).

It imports the leaves and `zbig` only, never the server's packages.
"""

from .views import DEFAULT_RESERVE, Connection, View, WCFSError, connect
from .zconn import asarray, snapshot_at

__all__ = ['DEFAULT_RESERVE', 'Connection', 'View', 'WCFSError', 'asarray', 'connect',
           'snapshot_at']
