"""Python 2 `str` state for test data, as databases written by Python 2 hold it.

zodbpickle on Python 3 writes bytes as BINBYTES, and a reducer can only emit
calls; a ZBlk0 or ZData of a Python 2 database holds SHORT_BINSTRING or
BINSTRING instead. Each piece is enabled by an explicit call:

    install_writer()        ZODB's record writer (ZODB.Connection.ObjectWriter,
                            which a Connection makes per commit) is replaced by
                            one that pickles a Py2Str state as a Python 2 str;
                            every other record stays byte for byte ZODB's.
    zbigfile(blksize)       a zbig ZBigFile that stores its block and chunk
                            bytes as Py2Str (and install_writer()).

ZODB on Python 3 cannot load non-ASCII Python 2 str state back
(StateLoadError; ASCII comes back as str): zbig keeps such objects, and such
a file, in memory, so that the writer can always read what it wrote.
"""

import struct
import threading

import ZODB.Connection

from wcfs_lib import zbig


class Py2Str(bytes):
    """Bytes that ZODB stores as a Python 2 str, as Python 2 ZODB (protocol 2 or 3) does."""

    def pickle(self):
        """-> a whole pickle of self: PROTO 3, SHORT_BINSTRING or BINSTRING, STOP."""
        n = len(self)
        head = b'U' + bytes([n]) if n < 256 else b'T' + struct.pack('<i', n)
        return b'\x80\x03' + head + bytes(self) + b'.'


class ObjectWriter(ZODB.Connection.ObjectWriter):
    """ZODB's record writer, except that a Py2Str state is pickled as a Python 2 str."""

    _NONE = b'\x80\x03N.'  # what ZODB writes for a state of None

    def _dump(self, classmeta, state):
        if type(state) is not Py2Str:
            return super()._dump(classmeta, state)
        record = super()._dump(classmeta, None)
        assert record.endswith(self._NONE), record
        return record[:-len(self._NONE)] + state.pickle()


_lock = threading.Lock()


def install_writer():
    """Make every ZODB Connection of this process write Py2Str states as Python 2 str. Idempotent."""
    with _lock:
        if ZODB.Connection.ObjectWriter is not ObjectWriter:
            assert ZODB.Connection.ObjectWriter is ObjectWriter.__base__, \
                'ZODB.Connection.ObjectWriter is already replaced by %r' % ZODB.Connection.ObjectWriter
            ZODB.Connection.ObjectWriter = ObjectWriter


def zbigfile(blksize, py2str=True):
    """A new zbig.ZBigFile; with py2str, one whose bytes are stored as Python 2 str."""
    f = zbig.ZBigFile(blksize)
    if py2str:
        install_writer()
        f.store_bytes_as(Py2Str)
    return f
