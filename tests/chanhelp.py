"""Raw use of `head/invalidations` for the protocol tests (SPEC §4).

Nothing here ever blocks for good: a channel read either waits with a
timeout or is a plain blocking read that the test itself knows a reply is
coming for.

Chan         one open channel (O_RDWR; O_NONBLOCK unless asked otherwise):
             send a line, read a reply line with a timeout, check that no
             reply comes within a short time, want/ack in one call.
Have         a parsed `have` line: tid, wait, ranges.
Client       a client in another process (this file run as a script), so
             that wcfs may kill it: it subscribes, acks or not, closes its
             channel, or hands it to a child; it reports on stdout.
ranges_of    blocks -> the byte ranges a `have` names for them.

    python chanhelp.py PATH CAT MODE

MODE (the client first writes `want CAT`, reads the reply, prints it):
    ack      ack every `have` (without wait) it reads, forever
    noack    ack the first `have`, never the later ones
    close    ack the first `have`; on the next one close the channel, live on
    handoff  ack the first `have`, give the channel to a child process and
             exit; the child never acks, and on a `read` line on its stdin
             tries to read (O_NONBLOCK) and write the channel and prints
             the errnos
"""

import errno
import fcntl
import os
import select
import subprocess
import sys
import time
from pathlib import Path

# run as a script too (the clients of Client): this tree's wcfs_lib
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wcfs_lib import protocol  # noqa: E402
from wcfs_lib.ranges import blocks_to_ranges  # noqa: E402

REPLY_TIMEOUT = 10      # seconds a reply that must come may take
QUIET = 0.5             # seconds of silence that count as "no reply"


class Have:
    """`have <tid> wait` or `have <tid>[ <start>-<stop>]...`, parsed by the
    protocol's own grammar (protocol.parse_reply)."""

    def __init__(self, line):
        try:
            kind, self.tid, ranges = protocol.parse_reply(line.encode())
        except protocol.ProtocolError as e:
            raise AssertionError('not a have: %r: %s' % (line, e)) from None
        assert kind in ('have', 'wait'), 'not a have: %r' % line
        self.line = line
        self.wait = kind == 'wait'
        self.ranges = ranges or []

    def __repr__(self):
        return 'Have(%r)' % self.line


def ranges_of(blocks, blksize):
    """Set of blocks -> sorted, merged, half-open byte ranges [(start, stop)]."""
    return blocks_to_ranges(blocks, blksize)


class NoReply(AssertionError):
    pass


class Chan:
    """One open `head/invalidations`.

    nonblock=True (default): opened O_NONBLOCK, and `readline` polls for
    replies by retrying reads that give EAGAIN, so that it works even when
    poll(2) on the channel does not. nonblock=False: a blocking fd, for the
    tests of blocking reads; `readline` then waits in poll(2).
    """

    def __init__(self, fdir, nonblock=True):
        self.path = os.path.join(fdir, 'head', 'invalidations')
        self.nonblock = nonblock
        self.fd = os.open(self.path, os.O_RDWR | (os.O_NONBLOCK if nonblock else 0))
        self._buf = b''

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # writing

    def write(self, data):
        """Write bytes as they are, in one write(2); -> bytes written."""
        return os.write(self.fd, data)

    def send(self, line):
        """Write one request line (str or bytes, `\\n` added) in one write(2)."""
        if isinstance(line, str):
            line = line.encode()
        n = os.write(self.fd, line + b'\n')
        assert n == len(line) + 1, 'short write: %d of %d bytes' % (n, len(line) + 1)

    # reading

    def _fill(self, timeout):
        """Read what is pending into _buf, waiting up to timeout for something."""
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            if self.nonblock:
                try:
                    data = os.read(self.fd, 1 << 20)
                except BlockingIOError:
                    data = None
            else:
                left = max(0, deadline - time.monotonic())
                p = select.poll()
                p.register(self.fd, select.POLLIN)
                data = os.read(self.fd, 1 << 20) if p.poll(left * 1000) else None
            if data is not None:
                assert data, 'read of the channel gave EOF'
                self._buf += data
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def readline(self, timeout=REPLY_TIMEOUT):
        """-> the next reply line (str, without `\\n`); NoReply after timeout."""
        deadline = time.monotonic() + timeout
        while b'\n' not in self._buf:
            if not self._fill(max(0, deadline - time.monotonic())):
                raise NoReply('%s: no reply within %s s (have %r)'
                              % (self.path, timeout, self._buf))
        line, _, self._buf = self._buf.partition(b'\n')
        return line.decode('ascii')

    def expect_nothing(self, within=QUIET):
        """Fail if any reply arrives within `within` seconds."""
        if self._buf or self._fill(within):
            raise AssertionError('%s: unexpected reply %r' % (self.path, self._buf))

    def have(self, timeout=REPLY_TIMEOUT):
        """-> the next reply, which must be a `have`, as a Have."""
        line = self.readline(timeout)
        assert line.startswith('have '), 'expected a have, got %r' % line
        return Have(line)

    def error(self, timeout=REPLY_TIMEOUT):
        """-> the next reply, which must be an `error`; its text."""
        line = self.readline(timeout)
        assert line.startswith('error '), 'expected an error, got %r' % line
        return line

    # requests

    def want(self, tid):
        """Write `want <tid>`; -> the reply, which must be a `have`."""
        self.send('want %016x' % tid)
        return self.have()

    def ack(self):
        """Write `ack` (it has no reply)."""
        self.send('ack')

    def subscribe(self, tid):
        """want + ack: -> the Have that answered want (never a wait)."""
        h = self.want(tid)
        assert not h.wait, 'want %016x: %r' % (tid, h)
        self.ack()
        return h


# ---- a client in another process ----

class Client:
    """This module run as a client process (see the module docstring).

    Its stdout is read line by line with `expect(prefix)`.
    """

    def __init__(self, fdir, cat, mode):
        path = os.path.join(fdir, 'head', 'invalidations')
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), path, '%016x' % cat, mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pid = self.proc.pid
        self._buf = b''

    def expect(self, prefix, timeout=REPLY_TIMEOUT):
        """-> the next line the client prints, which must start with prefix."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b'\n' not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise NoReply('client %d: no line within %s s (waiting for %r)'
                              % (self.pid, timeout, prefix))
            data = os.read(fd, 4096)
            if not data:
                raise AssertionError('client %d exited (%s) before printing %r'
                                     % (self.pid, self.proc.poll(), prefix))
            self._buf += data
        line, _, self._buf = self._buf.partition(b'\n')
        line = line.decode()
        assert line.startswith(prefix), 'client %d: expected %r, got %r' % (self.pid, prefix, line)
        return line

    def tell(self, line):
        self.proc.stdin.write(line.encode() + b'\n')
        self.proc.stdin.flush()

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        """End the client by its pid if it still runs; -> its returncode."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()
        return self.proc.returncode


def _client_main(path, cat, mode):
    def say(*words):
        print(*words, flush=True)

    fd = os.open(path, os.O_RDWR)
    lines = _lines(fd)
    os.write(fd, b'want %s\n' % cat.encode())
    reply = next(lines)
    say(reply)
    if reply.startswith('have ') and not reply.endswith(' wait'):
        os.write(fd, b'ack\n')
        say('acked')
    if mode == 'handoff':
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(fd), '-', 'heir'],
                                 pass_fds=[fd])
        say('child', child.pid)
        return
    for reply in lines:
        say(reply)
        if mode == 'ack':
            if reply.startswith('have ') and not reply.endswith(' wait'):
                os.write(fd, b'ack\n')
                say('acked')
            continue
        if mode == 'close':
            os.close(fd)
            say('closed')
        break
    while True:
        time.sleep(3600)


def _lines(fd):
    buf = b''
    while True:
        while b'\n' not in buf:
            buf += os.read(fd, 4096)
        line, _, buf = buf.partition(b'\n')
        yield line.decode('ascii')


def _heir_main(fd):
    """The child of `handoff`: holds the channel; `read` on stdin tries it
    (without blocking: EAGAIN means the channel is still there)."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    for line in sys.stdin:
        if line.strip() != 'read':
            continue
        out = []
        for what, op in (('read', lambda: os.read(fd, 4096)),
                         ('write', lambda: os.write(fd, b'ack\n'))):
            try:
                op()
                out.append('%s=ok' % what)
            except OSError as e:
                out.append('%s=%s' % (what, errno.errorcode.get(e.errno, e.errno)))
        print(' '.join(out), flush=True)


if __name__ == '__main__':
    if sys.argv[3] == 'heir':
        _heir_main(int(sys.argv[1]))
    else:
        _client_main(*sys.argv[1:4])
