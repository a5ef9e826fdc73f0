"""wcfs for Python programs.

- `views`: isolated views of a ZBigFile by oid and tid, over a wcfs mount
  (`connect(mountpoint)`, `Connection.open`, `View.ndarray`, `View.resync`).

It imports the leaves and `zbig` only, never the server's packages.
"""

from .join import join
from .views import DEFAULT_RESERVE, Connection, View, WCFSError, connect

__all__ = ['DEFAULT_RESERVE', 'Connection', 'View', 'WCFSError', 'connect', 'join']
