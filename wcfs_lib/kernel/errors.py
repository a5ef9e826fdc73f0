"""The errno a client sees for each failure of the model (SPEC §3, errors table).

The model (zformat, zstorage, the watcher) raises exceptions that say what
went wrong; which errno that is depends on the request: an object that is
missing is ENOENT for mkdir `bigfile/<oid>` and EIO for a read of data that
was there. One table per kind of request says the errno and how loudly to
log it; `mapped` applies it around a request's work:

    with errors.mapped(errors.READ, 'read bigfile/%s @%016x', name, at):
        ...

An exception that no row names (a bug, a record that breaks the decoder in
an unforeseen way) is EIO with its traceback in the log: the request fails,
wcfs and every other request go on.
"""

import errno
import logging

from ..zodb import zformat, zstorage
from .fs_binding import fuse

log = logging.getLogger('wcfs.fs')

# kinds of request
READ = 'read'                       # head/data, @<tid>/data
MKDIR_BIGFILE = 'mkdir bigfile'     # bigfile/<oid>
MKDIR_REVDIR = 'mkdir revdir'       # bigfile/<oid>/@<tid>

# kind -> [(exception class, errno, log level or None)]; the first match wins.
TABLE = {
    READ: [
        (zstorage.DatabaseUnavailable, errno.EIO, logging.ERROR),  # after --db-timeout
        (zformat.FormatError, errno.EIO, logging.ERROR),          # also a file no longer served
        (zformat.ObjectMissing, errno.EIO, logging.ERROR),        # history packed away
    ],
    MKDIR_BIGFILE: [
        (zformat.ObjectMissing, errno.ENOENT, None),
        (zformat.NotZBigFile, errno.EINVAL, logging.WARNING),     # also a blksize wcfs refuses
        (zformat.FormatError, errno.EINVAL, logging.WARNING),
        (zstorage.DatabaseUnavailable, errno.EIO, logging.ERROR),
        (TimeoutError, errno.EIO, logging.ERROR),   # the watcher did not reach the last tid
    ],
    MKDIR_REVDIR: [
        (zformat.ObjectMissing, errno.ENOENT, None),                # also packed away
        (zformat.NotZBigFile, errno.ENOENT, logging.WARNING),      # not a ZBigFile at <tid>
        (zformat.FormatError, errno.ENOENT, logging.WARNING),
        (zstorage.DatabaseUnavailable, errno.EIO, logging.ERROR),
    ],
}


def errno_for(exc, kind):
    """-> (errno, log level or None) of the row for `exc` in the table of
    `kind`; None when no row names it."""
    for cls, code, level in TABLE[kind]:
        if isinstance(exc, cls):
            return code, level
    return None


class mapped:
    """`with mapped(kind, fmt, *args):` an exception raised inside becomes the
    FuseOSError of its errno for `kind`, logged as `fmt % args` (the request:
    path, oid, tid), the errno and the reason. FuseOSError passes through."""

    __slots__ = ('kind', 'fmt', 'args')

    def __init__(self, kind, fmt, *args):
        self.kind = kind
        self.fmt = fmt
        self.args = args            # formatted only when something failed: reads are hot

    def __enter__(self):
        return self

    def __exit__(self, cls, exc, tb):
        if not isinstance(exc, Exception) or isinstance(exc, fuse.FuseOSError):
            return False
        row = errno_for(exc, self.kind)
        if row is None:
            log.error('%s: EIO: %s: %s', self.fmt % self.args, cls.__name__, exc,
                      exc_info=(cls, exc, tb))
            raise fuse.FuseOSError(errno.EIO) from None
        code, level = row
        if level is not None:
            log.log(level, '%s: %s: %s', self.fmt % self.args, errno.errorcode[code], exc)
        raise fuse.FuseOSError(code) from None
