"""The invalidation protocol of head/invalidations, without I/O.

    C: want <tid>        the client wants to see the file as of <tid>
    C: ack               the client finished remapping after a `have`
    S: have <tid> wait                 wcfs is behind <tid>; a `have` follows
    S: have <tid>[ <start>-<stop>]...  head/data is now as of <tid>
    S: error <message>                 the last request was not understood

`LineBuffer` cuts the byte stream a client writes into request lines (a line
may arrive split over several writes; `\\r\\n` is accepted; a line over
MAX_LINE bytes is an error, discarded up to its newline). `parse_request`
turns a line into a request and `parse_reply` a line wcfs wrote into a
reply (the client library and the tests speak through these, so that both
sides read one grammar). `ChannelState` is one channel's state machine: it
says which requests are allowed now, and records what was sent.
"""

import re

MAX_LINE = 256
_TID = re.compile(rb'[0-9a-f]{16}\Z')


class ProtocolError(Exception):
    """A request that is not valid now; its message goes in an `error` line."""


class LineBuffer:
    """Bytes written by a client -> complete lines (or ProtocolErrors)."""

    def __init__(self):
        self._buf = bytearray()
        self._overlong = False

    def feed(self, data):
        """-> list of items, each a line (bytes, no newline) or a ProtocolError."""
        out = []
        start = 0
        while True:
            nl = data.find(b'\n', start)
            if nl < 0:
                self._append(data[start:])
                return out
            self._append(data[start:nl])
            if self._overlong:
                out.append(ProtocolError('line longer than %d bytes' % MAX_LINE))
            else:
                line = bytes(self._buf)
                out.append(line[:-1] if line.endswith(b'\r') else line)
            self._buf.clear()
            self._overlong = False
            start = nl + 1

    def _append(self, data):
        if self._overlong:
            return
        self._buf += data
        if len(self._buf) > MAX_LINE:
            self._buf.clear()
            self._overlong = True


def parse_tid(word):
    if not _TID.match(word):
        raise ProtocolError('invalid tid %r: want 16 lower-case hex digits'
                            % word.decode('ascii', 'backslashreplace'))
    return int(word, 16)


def parse_request(line):
    """-> ('want', tid) or ('ack', None)."""
    words = line.split(b' ')
    if words == [b'ack']:
        return 'ack', None
    if words[0] == b'want':
        if len(words) != 2:
            raise ProtocolError('usage: want <tid>')
        return 'want', parse_tid(words[1])
    verb = words[0][:32].decode('ascii', 'backslashreplace')
    raise ProtocolError('unknown request %r' % verb if verb else 'empty request')


def format_want(tid):
    return b'want %016x\n' % tid


def format_ack():
    return b'ack\n'


def parse_reply(line):
    """A line wcfs wrote, without its newline -> ('have', tid, ranges) |
    ('wait', tid, None) | ('error', message, None); ProtocolError else."""
    words = line.split(b' ')
    if words[0] == b'error':
        return 'error', line[len(b'error '):].decode('ascii', 'backslashreplace'), None
    if words[0] != b'have' or len(words) < 2:
        raise ProtocolError('not a reply: %r' % line[:64])
    tid = parse_tid(words[1])
    if words[2:] == [b'wait']:
        return 'wait', tid, None
    return 'have', tid, [_parse_range(word) for word in words[2:]]


def _parse_range(word):
    start, sep, stop = word.partition(b'-')
    if not (sep and start.isdigit() and stop.isdigit()) or int(start) >= int(stop):
        raise ProtocolError('invalid range %r: want <start>-<stop>, start < stop'
                            % word[:64].decode('ascii', 'backslashreplace'))
    return int(start), int(stop)


def format_have(tid, ranges=(), wait=False):
    parts = ['have %016x' % tid]
    if wait:
        parts.append('wait')
    parts.extend('%d-%d' % r for r in ranges)
    return (' '.join(parts) + '\n').encode()


def format_error(message):
    text = str(message).replace('\n', ' ')
    return ('error %s\n' % text).encode('ascii', 'backslashreplace')


class ChannelState:
    """What one channel has been told, and which request it may send.

    subscribed  a `have` without wait was sent; the channel gets updates
    reported    the tid of the last `have` without wait (Sprev)
    waiting     Cat of a `want` not answered yet (a `have ... wait` was
                sent, or its δR is being computed), else None
    unacked     a `have` without wait was sent and not acked yet
    checking    a `want` was read and its Cat is being checked: no `have`
                may go out until it is answered or refused, or the client
                could not tell an update from the answer (SPEC 4.2)
    """

    def __init__(self):
        self.subscribed = False
        self.reported = None
        self.waiting = None
        self.unacked = False
        self.checking = False

    def want(self, cat):
        """A `want <cat>` was read: checking it, unless it comes out of turn."""
        if self.unacked:
            raise ProtocolError('want while a have is not acked: ack first')
        if self.waiting is not None:
            raise ProtocolError('want while waiting for %016x: wait for its have first'
                                % self.waiting)
        if self.checking:
            raise ProtocolError('want while the last want is not answered: wait for its have')
        self.checking = True

    def checked(self):
        self.checking = False

    def ack(self):
        if self.waiting is not None and not self.unacked:
            raise ProtocolError('ack while waiting: nothing to ack yet')
        if not self.unacked:
            raise ProtocolError('ack with nothing to ack')
        self.unacked = False

    def sent_wait(self, cat):
        self.waiting = cat

    def asked(self, cat):
        """A `want` whose answer is being computed: outstanding, like a wait."""
        self.waiting = cat

    def sent_have(self, tid):
        """A have that answers the last want (or starts the subscription)."""
        self.subscribed = True
        self.reported = tid
        self.waiting = None
        self.unacked = True

    def sent_update(self, tid):
        """A have of an update; a want still waiting stays outstanding."""
        self.reported = tid
        self.unacked = True
