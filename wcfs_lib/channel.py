"""One open `head/invalidations`: a stream of lines between a client and wcfs.

The client writes request lines; wcfs queues reply lines that the client
reads. `read` blocks until a reply is pending (EAGAIN with O_NONBLOCK), and
gives EINTR when the kernel interrupts the request; shutdown wakes it.
"""

import errno
import os
import threading

import mfusepy as fuse

MAX_LINE = 256
MAX_UNREAD = 64 * 1024
INTERRUPT_POLL = 0.05   # seconds between checks of fuse_interrupted()

_libfuse = fuse._libfuse


class Channel:
    def __init__(self, bf, shutdown):
        self.bf = bf
        self._shutdown = shutdown       # threading.Event of the server
        self._cond = threading.Condition()  # guards _out, _in, closed
        self._out = bytearray()         # replies not yet read
        self._in = bytearray()          # request bytes without their newline yet
        self.closed = False

    def write(self, data):
        with self._cond:
            self._in += data
            while b'\n' in self._in:
                line, _, rest = bytes(self._in).partition(b'\n')
                self._in = bytearray(rest)
                self._reply(b'error not implemented\n')
            if len(self._in) > MAX_LINE:
                self._in.clear()
                self._reply(b'error line too long\n')
        return len(data)

    def _reply(self, line):
        if len(self._out) + len(line) <= MAX_UNREAD:
            self._out += line
        self._cond.notify_all()

    def read(self, size, fi):
        with self._cond:
            while not self._out:
                if self._shutdown.is_set() or self.closed:
                    raise fuse.FuseOSError(errno.EIO)
                if fi.flags & os.O_NONBLOCK:
                    raise fuse.FuseOSError(errno.EAGAIN)
                if _libfuse.fuse_interrupted():
                    raise fuse.FuseOSError(errno.EINTR)
                self._cond.wait(INTERRUPT_POLL)
            data = bytes(self._out[:size])
            del self._out[:size]
            return data

    def poll(self, ph, reventsp):
        return 0

    def close(self):
        with self._cond:
            self.closed = True
            self._cond.notify_all()
