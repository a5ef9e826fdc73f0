"""One open `head/invalidations`: a stream of lines between a client and wcfs.

The client writes request lines; wcfs queues reply lines that the client
reads. `read` blocks until a reply is pending (EAGAIN with O_NONBLOCK), gives
EINTR when the kernel interrupts the request, and EIO once the channel was
dropped or wcfs shuts down. `poll` reports POLLIN exactly when a reply is
pending, and remembers the kernel's poll handle to notify when one arrives.

A channel whose unread replies pass MAX_UNREAD is dropped (one reply, however
long, always fits): a client that
writes and never reads cannot make wcfs hold unbounded memory.

Locks: the file's `cond` (bigfile.BigFile) > `Channel.lock`. `send` is called
with the file's cond held; `read`, `poll` take only `Channel.lock`.
"""

import errno
import logging
import os
import select
import threading

from .. import locks, procfs, protocol

log = logging.getLogger('wcfs.channel')

MAX_UNREAD = 64 * 1024
# Seconds between checks of fuse_interrupted() while a read is blocked:
# short at first, then backing off, so that 1000 blocked readers do not take
# the interpreter from the data reads.
INTERRUPT_POLL_MIN = 0.02
INTERRUPT_POLL_MAX = 1.0



def _error(code):
    """The errno a FUSE handler answers with (mfusepy returns an OSError's)."""
    return OSError(code, os.strerror(code))


class Channel:
    def __init__(self, bf, shutdown, polls, last_tid, stats, debug=False):
        self.bf = bf
        self._polls = polls         # fs_binding.PollHandles: the kernel's poll handles
        self._last_tid = last_tid   # -> the database's last tid, asked of its server
        self._stats = stats
        self.state = protocol.ChannelState()
        self.lines = protocol.LineBuffer()
        self.owner = None           # procfs.Process that made the subscription, if known
        self.opener = None          # procfs.Process that opened the channel
        self.lock = locks.lock('Channel.lock')    # guards _out, _ph, dropped, closed
        self._readable = threading.Condition(self.lock)
        self._out = bytearray()     # replies not yet read
        self._ph = None             # poll handle to notify
        self.dropped = False
        self.closed = False
        self._counted = False       # counted in `subscribed` of .wcfs/stats
        self._shutdown = shutdown   # threading.Event of the server
        self._debug = debug

    @property
    def path(self):
        return 'bigfile/%s/head/invalidations' % self.bf.name

    # ---- client → wcfs ----

    def write(self, data, caller_tid):
        """Take every line of `data`; the database is asked at most a bounded
        number of times for the whole write (SPEC 4.6), and lines after the
        channel is dropped are not processed."""
        request = WriteContext(caller_tid, self._last_tid)
        for item in self.lines.feed(data):
            if self.dropped:
                raise _error(errno.EIO)
            if isinstance(item, protocol.ProtocolError):
                self.reply_error(item)
                continue
            if self._debug:
                log.debug('%s: C: %s', self.path, item.decode('ascii', 'backslashreplace'))
            try:
                verb, tid = protocol.parse_request(item)
                if verb == 'want':
                    self.bf.subscribers.want(self, tid, request)
                else:
                    self.bf.subscribers.ack(self)
            except protocol.ProtocolError as e:
                self.reply_error(e)
        if self.dropped:
            raise _error(errno.EIO)
        return len(data)

    def reply_error(self, exc):
        self.send(protocol.format_error(exc))

    # ---- wcfs → client ----

    def send(self, line):
        """Queue one reply line (updates and answers hold the file's cond)."""
        if self._debug:
            log.debug('%s: S: %s', self.path, line.decode().rstrip())
        with self.lock:
            self._queue(line)

    def _queue(self, line):
        if self.dropped:
            return
        if self._out and len(self._out) + len(line) > MAX_UNREAD:   # one reply always fits
            log.warning('%s: client does not read its replies (over %d bytes); dropping the channel',
                        self.path, MAX_UNREAD)
            self._drop()
            return
        self._out += line
        self._wake()

    def _wake(self):
        self._readable.notify_all()
        if self._ph is not None:
            self._polls.notify(self._ph)
            self._ph = None

    def drop(self):
        """Fail every later read and write of this channel with EIO."""
        with self.lock:
            self._drop()

    def count_subscribed(self):
        """The channel became subscribed: count it once (in .wcfs/stats)."""
        with self.lock:
            if not self._counted and not self.dropped and not self.closed:
                self._counted = True
                self._stats.add('subscribed')

    def _uncount(self):
        if self._counted:
            self._counted = False
            self._stats.add('subscribed', -1)

    def _drop(self):
        self._uncount()
        self.dropped = True
        self._out.clear()
        self._wake()

    def read(self, size, fi):
        pause = INTERRUPT_POLL_MIN
        with self.lock:
            while not self._out:
                if self.dropped or self.closed or self._shutdown.is_set():
                    raise _error(errno.EIO)
                if fi.flags & os.O_NONBLOCK:
                    raise _error(errno.EAGAIN)
                if self._polls.interrupted():
                    raise _error(errno.EINTR)
                self._readable.wait(pause)
                pause = min(pause * 2, INTERRUPT_POLL_MAX)
            data = bytes(self._out[:size])
            del self._out[:size]
            return data

    def poll(self, ph, reventsp):
        with self.lock:
            if self._ph is not None:
                self._polls.release(self._ph)
                self._ph = None
            revents = select.POLLOUT
            if self._out:
                revents |= select.POLLIN
            if self.dropped:
                revents |= select.POLLERR
            if ph and not self._out:
                self._ph = ph
            elif ph:
                self._polls.release(ph)
            reventsp[0] = revents
        return 0

    def close(self):
        with self.lock:
            self._uncount()
            self.closed = True
            if self._ph is not None:
                self._polls.release(self._ph)
                self._ph = None
            self._readable.notify_all()
        self.bf.subscribers.channel_closed(self)

    def wake_shutdown(self):
        with self.lock:
            self._readable.notify_all()


class WriteContext:
    """What the requests of one write share, asked for once: the writer's
    process (/proc) and the database's last transaction (a round trip)."""

    def __init__(self, caller_tid, last_tid):
        self._caller_tid = caller_tid
        self._last_tid = last_tid
        self._process = self._tid = self._error = None
        self._asked = False

    def process(self):
        if self._process is None:
            self._process = procfs.thread_process(self._caller_tid)
        return self._process

    def last_tid(self):
        """Asked once: a failure is the answer for the rest of the write too."""
        if not self._asked:
            self._asked = True
            try:
                self._tid = self._last_tid()
            except Exception as e:
                self._error = e
        if self._error is not None:
            raise self._error
        return self._tid
