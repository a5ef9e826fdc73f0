"""A receive linear in the message's size, for wcfs's ZEO client.

ZEO 6.2 as PyPI ships it (pure Python: its optional C `_smp` is not built)
joins the pieces of a received message one by one (`data += fragment` in
ZEO/asyncio/smp.py): quadratic in the message's size. A 100 MiB record took
95 s to arrive, and meanwhile nothing else on that connection did (other
loads, invalidations): wcfs is one ZEO client for every file, so one big
record stalled them all. `SizedMessages` joins each message once.

`install()` makes ZEO's protocols (ZEO.asyncio.base, where they make their
sized message protocol) use it, where ZEO's C one is not there; wcfs calls
it before it opens a database. It replaces a private of ZEO, checked there:
MissingPrivate if it is gone.
"""

import collections
import logging
import struct

import ZEO.asyncio.base
import ZEO.asyncio.smp

from .zeo import MissingPrivate

log = logging.getLogger('wcfs.zeo')

_SIZE = struct.Struct('>I')


class SizedMessages(ZEO.asyncio.smp.SizedMessageProtocol):
    """ZEO's sized message protocol (4 bytes of size, then the message);
    its sending side as it is, its receiving side linear: the pieces of a
    message are joined once, into exactly the message, and let go before
    it is handed on (a big record is in memory twice at most here)."""

    def connection_made(self, transport):
        super().connection_made(transport)
        pieces = collections.deque()    # received, not handed on yet
        first = 0                       # bytes of pieces[0] handed on already
        have = 0                        # bytes in pieces, less `first`
        wanted = 4                      # bytes the next step takes: a size, or a message
        sizing = True                   # the next step is a size
        closed = False

        def take(n):
            """The next n bytes (n <= have), out of pieces."""
            nonlocal first, have
            parts = []
            while n:
                piece = pieces[0]
                left = len(piece) - first
                if left <= n:
                    parts.append(piece[first:] if first else piece)
                    pieces.popleft()
                    first = 0
                else:
                    parts.append(piece[first:first + n])
                    first += n
                    left = n
                n -= left
                have -= left
            return parts[0] if len(parts) == 1 else b''.join(parts)

        def data_received(data):
            nonlocal have, wanted, sizing
            pieces.append(data)
            have += len(data)
            while not closed and have >= wanted:
                data = take(wanted)
                if sizing:
                    wanted, sizing = _SIZE.unpack(data)[0], False
                    continue
                wanted, sizing = 4, True
                try:
                    self.receive(data)      # may close
                except Exception:
                    log.exception('ZEO: processing a message of %d bytes failed', len(data))

        def eof_received():
            nonlocal closed
            closed = True

        self.data_received = data_received
        self.eof_received = eof_received


def install():
    """Make every ZEO connection made from now on receive with SizedMessages,
    unless ZEO's C sized message protocol (linear) is there."""
    base = ZEO.asyncio.base
    if getattr(ZEO.asyncio.smp.SizedMessageProtocol, '__module__', None) != 'ZEO.asyncio.smp':
        return
    if not isinstance(getattr(base, 'SizedMessageProtocol', None), type) or \
            not issubclass(base.SizedMessageProtocol, ZEO.asyncio.smp.SizedMessageProtocol):
        raise MissingPrivate('ZEO: ZEO.asyncio.base.SizedMessageProtocol is gone; wcfs '
                             'replaces it (see wcfs_lib/zodb/zstorage/zeo_receive.py)')
    base.SizedMessageProtocol = SizedMessages
