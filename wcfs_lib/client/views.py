"""Isolated views of ZBigFiles over a wcfs mount, by oid and tid.

    with wcfs_lib.client.connect(mountpoint) as wc:
        view = wc.open(oid, at=tid)         # the ZBigFile oid as of tid (ints)
        a = view.ndarray('float64', (n, m)) # read-only numpy array over the view, no copy
        ...                                 # other processes commit: `a` does not change
        view.resync(newtid)                 # `a` now shows the file as of newtid
        view.close()

Contract:

- A `View` shows the file as of its `at`, whatever wcfs's head does, from
  `open` (or `resync`) until the next `resync` or `close`. Its `size` is the
  file's size as of `at`; arrays cover at most that many bytes.
- Arrays from `ndarray` are read-only and alias the view's memory: after
  `resync` they show the file as of the new `at`, and where the file became
  shorter they read zeros. They must not be used after `close` (the memory is
  unmapped; touching it is a segfault).
- The process is never killed by wcfs for a late ack: a reader thread per
  `Connection` answers every update at once, without waiting for the program.
- Errors are `WCFSError` (or ValueError for bad arguments), naming the file
  and request, e.g. `bigfile/<oid>: want <tid>: <message from wcfs>`. A view
  whose channel failed (EIO: wcfs dropped it) raises `WCFSError` from every
  later call; its arrays go on showing the file as of the last `at`
  (`@<at>/data` is mapped over the whole view when the channel fails).

How a view is made (SPEC §4): the view's address range is reserved once
(`reserve` bytes of PROT_NONE, so the file can grow in place). `head/data` is
mapped MAP_SHARED over it, so unchanged pages come from the page cache that
every process shares; `@<at>/data` is mapped with MAP_FIXED over the ranges
where head differs from `at`:

    C: want <at>
    S: have <Sat> <δR(at, Sat)>        (or first `have <Sat> wait`)
    C: (maps @<at>/data over δR)  ack
    ...
    S: have <Snew> <δR(Sprev, Snew)>   an update: head moves once every client acked
    C: (maps @<at>/data over the ranges not overlaid yet)  ack

Each view has its own channel (one open `head/invalidations`): two views of
one file at different tids are two subscriptions.

The reader thread of a `Connection` polls every channel and handles every
line that wcfs sends; callers only write `want` (resync) and wait for the
reader to route the answer. One request is in flight per channel (SPEC 4.2),
and a `want` can cross an update that wcfs sent just before; the reader tells
the two apart without guessing:

- A `want` is written with the view's lock held, and the reader handles each
  line with that lock held, from reading its request state to writing `ack`.
  So when the reader looks at a `have` while a `want` is in flight, the `want`
  has been written completely, and wcfs queued its answer before the write
  returned. (The price: while wcfs works on a `want`, which takes one
  database lookup or, for a tid older than its history, a comparison of
  trees, the reader waits before it handles that view's lines, and the
  lines of the views after it.)
- That `have` was either queued before wcfs read the `want` — then it is an
  update, still unacked, so wcfs answered the `want` with `error`, which is
  already the next line — or it is the answer, and wcfs sends nothing more
  until `ack`. The reader handles the first case as an update, acks, and has
  the caller write its `want` again.
- While the `want` is answered with `have <Sat> wait`, wcfs may send updates
  of the old subscription (`have <S>`, S < the wanted tid) as its head moves:
  the reader handles them as updates and, since wcfs forgets the `want` when
  it sends them, has the caller write the `want` again. (Should wcfs keep it
  instead, as SPEC 4.2 step 2 can be read, it answers that with `error`, and
  the reader goes on waiting.) A `have <S>` with S >= the wanted tid answers
  the `want`; its ranges may be δR(Sprev, S) rather than δR(wanted, S): a
  superset, and overlaying more of `@<wanted>/data` than needed is correct.
- wcfs may also take a `want` that an update crossed (it checks for an
  unacked `have` before it looks the tid up, and answers after): the update
  is then followed by the `want`'s answer, `have ... wait` or `have <S>`,
  instead of `error`. The reader handles the update, then the answer; for a
  `have <S>` it overlays both lines' ranges, with one ack for the two.

Locks, in the order they are taken (A > B: take A before B):
`View._api_lock` > `View._lock` > `Connection._lock`.

- `View._api_lock` serializes `resync` and `close` of one view.
- `View._lock` guards the view's protocol state (`_req`, `_fd`) and its
  mappings (`at`, `size`, `_overlaid`, `_rev_fd`); `_cond` is its condition.
  The reader thread holds it while handling a line (remap, then ack), callers
  while writing `want` and while reading the mapping's bounds.
- `Connection._lock` guards the set of polled channels; `_polled` is its
  condition (the reader started polling a new set).
"""

import ctypes
import ctypes.util
import errno
import logging
import math
import mmap
import os
import select
import threading
import weakref

from .. import protocol
from ..ranges import clip, merge_ranges, subtract

log = logging.getLogger('wcfs.client')

PAGE = mmap.PAGESIZE
DEFAULT_RESERVE = 64 << 30      # address space a view reserves, at least (bytes)
READ_SIZE = 64 * 1024           # wcfs never holds more unread replies than this

# Linux values (x86_64, arm64); the mmap module lacks these.
PROT_NONE = 0
MAP_FIXED = 0x10
MAP_NORESERVE = 0x4000

_libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


class WCFSError(Exception):
    """A request to wcfs failed; the message says which file, which request, and why."""


def connect(mountpoint):
    """-> a Connection to the wcfs mounted at mountpoint (use it as a context manager)."""
    return Connection(mountpoint)


# ---- memory ----

def _mmap(addr, length, prot, flags, fd, offset, what):
    got = _libc.mmap(addr, length, prot, flags, fd, offset)
    if got is None or got == _MAP_FAILED:
        e = ctypes.get_errno()
        raise OSError(e, 'mmap %s [%d:+%d]: %s' % (what, offset, length, os.strerror(e)))
    if flags & MAP_FIXED and got != addr:
        raise OSError(errno.EFAULT, 'mmap %s: MAP_FIXED at %#x gave %#x' % (what, addr, got))
    return got


def _munmap(addr, length):
    if _libc.munmap(addr, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, 'munmap %#x+%d: %s' % (addr, length, os.strerror(e)))


def _round_up(n, to):
    return -(-n // to) * to


# ---- the protocol's lines ----

def _parse(line):
    """A line from wcfs -> ('have', tid, ranges) | ('wait', tid, None) | ('error', msg, None)."""
    try:
        return protocol.parse_reply(line)
    except protocol.ProtocolError as e:
        raise WCFSError('malformed line from wcfs: %s' % e) from None


class _Want:
    """One `want <cat>` of a view, from the caller's write to its answer.

    state: None (not written), 'inflight' (written, no answer yet), 'waiting'
    (answered `have ... wait`), 'resend' (wcfs forgot it: write it again),
    'done', 'failed'. rev_fd is closed when the want fails, and becomes the
    view's (None here) when it is answered.
    """

    def __init__(self, cat, rev_fd, size):
        self.cat = cat
        self.rev_fd = rev_fd        # @<cat>/data, open; None once the view's
        self.size = size            # of the file as of cat
        self.state = None
        self.error = None
        self.rewritten_after_wait = False   # written again after an update while waiting


class Connection:
    """A client of one wcfs mount; its reader thread serves all its views' channels."""

    def __init__(self, mountpoint):
        self.mountpoint = os.path.abspath(mountpoint)
        try:
            with open(os.path.join(self.mountpoint, '.wcfs', 'zurl')) as f:
                self.zurl = f.read().strip()
        except OSError as e:
            raise WCFSError('%s: not a wcfs mount point: %s' % (self.mountpoint, e)) from e
        self._lock = threading.Lock()           # guards _channels, _gen, _polled_gen, _stopping
        self._polled = threading.Condition(self._lock)
        self._channels = {}                     # channel fd -> View
        self._gen = 0                           # bumped when _channels changes
        self._polled_gen = -1                   # _gen of the set the reader polls now
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._views = set()                     # open views; guarded by _lock
        self._reader = threading.Thread(target=self._run, daemon=True,
                                        name='wcfs-client %s' % self.mountpoint)
        self._reader.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _path(self, *parts):
        return os.path.join(self.mountpoint, *parts)

    def bigfile_dir(self, oid):
        """mkdir bigfile/<oid> unless it exists; -> its path."""
        name = 'bigfile/%016x' % oid
        try:
            os.mkdir(self._path(name))
        except FileExistsError:
            pass
        except OSError as e:
            why = {errno.ENOENT: 'no such object in the database',
                   errno.EINVAL: 'not a ZBigFile, or its blksize is not a multiple of 4096'}
            raise WCFSError('%s: %s' % (name, why.get(e.errno, e))) from e
        return self._path(name)

    def head_at(self, oid):
        """-> the tid that head/data of the file oid is as of now (int)."""
        path = os.path.join(self.bigfile_dir(oid), 'head', 'at')
        with open(path) as f:
            return int(f.read(), 16)

    def open(self, oid, at=None, reserve=None):
        """-> a View of the ZBigFile oid as of tid `at` (default: its head now).

        reserve: address space for the view, in bytes; the file can grow to
        that size in place (resync beyond it raises). Default: the larger of
        DEFAULT_RESERVE and twice the file's size.
        """
        if at is None:
            at = self.head_at(oid)
        with self._lock:
            if self._stopping:
                raise WCFSError('%s: connection is closed' % self.mountpoint)
        view = View(self, oid, at, reserve)
        with self._lock:
            self._views.add(view)
        return view

    def close(self):
        """Close every view, stop the reader thread."""
        with self._lock:
            views = list(self._views)
        for view in views:
            view.close()
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        self._wake()
        self._reader.join()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ---- the set of polled channels ----

    def _add_channel(self, view):
        with self._lock:
            self._channels[view._fd] = view
            self._gen += 1
        self._wake()

    def _remove_channel(self, fd, wait):
        """Stop polling fd; with wait, return once the reader polls without it."""
        with self._lock:
            if self._channels.pop(fd, None) is None:
                return
            self._gen += 1
            gen = self._gen
        if not wait:
            return
        self._wake()
        with self._lock:
            while self._polled_gen < gen and self._reader.is_alive() and not self._stopping:
                self._polled.wait(1)

    def _forget(self, view):
        with self._lock:
            self._views.discard(view)

    def _wake(self):
        try:
            os.write(self._wake_w, b'x')
        except BlockingIOError:
            pass            # a wake-up is pending already

    # ---- the reader thread ----

    def _run(self):
        while True:
            with self._lock:
                if self._stopping:
                    return
                channels = dict(self._channels)
                self._polled_gen = self._gen
                self._polled.notify_all()
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            for fd in channels:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll():
                if fd == self._wake_r:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                else:
                    channels[fd]._on_readable()


class View:
    """The ZBigFile `oid` as of tid `at`, mapped into memory; see the module docstring."""

    def __init__(self, conn, oid, at, reserve):
        self.conn = conn
        self.oid = oid
        self.name = 'bigfile/%016x' % oid
        self._api_lock = threading.Lock()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.at = None              # the tid the view shows
        self.size = 0               # of the file as of at; zeros from there to
        self._mapped = 0            # the largest size mapped before; PROT_NONE past it
        self._overlaid = []         # ranges where @<at>/data is mapped
        self._rev_fd = None         # @<at>/data
        self._req = None            # the _Want in flight
        self._error = None          # why the channel failed
        self._inbuf = b''           # read from the channel, not handled yet (reader thread)
        self._closed = False
        self._fd = None
        self._base = None
        self._head_fd = None

        dir = conn.bigfile_dir(oid)
        rev_fd, size = self._open_rev(at)
        try:
            self._reserve = _round_up(reserve or max(DEFAULT_RESERVE, 2 * size), PAGE)
            if size > self._reserve:
                raise ValueError('%s@%016x: size %d is more than reserve %d'
                                 % (self.name, at, size, self._reserve))
            self._head_fd = os.open(os.path.join(dir, 'head', 'data'), os.O_RDONLY | os.O_CLOEXEC)
            self._fd = os.open(os.path.join(dir, 'head', 'invalidations'),
                               os.O_RDWR | os.O_CLOEXEC)
            self._base = _mmap(None, self._reserve, PROT_NONE,
                               mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE, -1, 0,
                               'reserve for %s' % self.name)
            conn._add_channel(self)
        except BaseException:
            os.close(rev_fd)
            self.close()
            raise
        try:
            with self._api_lock:
                self._want(at, rev_fd, size)
        except BaseException:
            self.close()
            raise

    def __repr__(self):
        at = 'closed' if self._closed else '@%016x' % self.at if self.at is not None else ''
        return '<wcfs View %s %s size %d>' % (self.name, at, self.size)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- the API ----

    def ndarray(self, dtype='uint8', shape=None, offset=0, order='C', zeros_past_end=False):
        """-> a read-only numpy array over bytes [offset, offset + nbytes) of the view.

        shape None: as many items as fit from offset to the end of the file as of `at`.
        The array must fit inside the file's size as of `at` (ValueError otherwise),
        unless zeros_past_end: then it may reach past it, up to the view's
        reserve, and reads zeros there (a ZBigArray longer than its file).
        """
        import numpy

        dtype = numpy.dtype(dtype)
        with self._lock:
            self._check_usable()
            size, base, at = self.size, self._base, self.at
            if zeros_past_end:
                size = self._zeros_to(offset, shape, dtype)
        if offset < 0 or offset > size:
            raise ValueError('%s@%016x: offset %d is outside the file (size %d)'
                             % (self.name, at, offset, size))
        if shape is None:
            shape = ((size - offset) // dtype.itemsize,)
        elif isinstance(shape, int):
            shape = (shape,)
        shape = tuple(int(n) for n in shape)
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if count < 0 or offset + nbytes > size:
            raise ValueError('%s@%016x: %s of %s (%d bytes) at offset %d does not fit in '
                             'the file (size %d)' % (self.name, at, shape, dtype, nbytes,
                                                     offset, size))
        buf = (ctypes.c_char * nbytes).from_address(base + offset)
        buf.view = self             # arrays keep their view alive (close() still unmaps)
        a = numpy.frombuffer(memoryview(buf).toreadonly(), dtype=dtype, count=count)
        return a.reshape(shape, order=order)

    def _zeros_to(self, offset, shape, dtype):
        """Map zeros past the end of the file up to where an array of shape
        and dtype from offset ends; -> that end (_lock held)."""
        if shape is None or offset < 0:
            return self.size
        shape = (shape,) if isinstance(shape, int) else shape
        end = offset + math.prod(int(n) for n in shape) * dtype.itemsize
        if end > self._reserve:
            raise ValueError('%s@%016x: %s of %s at offset %d ends past the %d bytes this view '
                             'reserved' % (self.name, self.at, tuple(shape), dtype, offset,
                                           self._reserve))
        start = max(self._mapped, _round_up(self.size, PAGE))
        stop = _round_up(end, PAGE)
        if stop > start:
            _mmap(self._base + start, stop - start, mmap.PROT_READ,
                  mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0,
                  'zeros past the end of %s' % self.name)
            self._mapped = stop
        return max(end, self.size)

    def resync(self, tid):
        """Move the view to tid: from now on it shows the file as of tid."""
        with self._api_lock:
            with self._lock:
                self._check_usable()
                if tid == self.at:
                    return
            rev_fd, size = self._open_rev(tid)
            if size > self._reserve:
                os.close(rev_fd)
                raise WCFSError('%s: resync to %016x: the file grew to %d bytes, past the '
                                '%d bytes this view reserved: open a view with a larger '
                                'reserve' % (self.name, tid, size, self._reserve))
            self._want(tid, rev_fd, size)

    def close(self):
        """Unmap the view and close its channel; arrays over it must not be used after."""
        with self._api_lock:
            if self._end(freeze=False) and self._base is not None:
                _munmap(self._base, self._reserve)

    def release(self):
        """Close the channel, keep the arrays: from now on they show the file as
        of `at` whatever wcfs's head does (@<at>/data is mapped over the whole
        view), and the memory is unmapped once the last of them is gone."""
        with self._api_lock:
            if self._end(freeze=True) and self._base is not None:
                weakref.finalize(self, _munmap, self._base, self._reserve)

    def _end(self, freeze):
        """Close the channel and the files (_api_lock held); -> False if ended before."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            if freeze and self._error is None:
                self._freeze()
            fd, self._fd = self._fd, None
            req, self._req = self._req, None
            if req is not None and req.rev_fd is not None:    # left by an interrupted resync
                os.close(req.rev_fd)
        if fd is not None:
            self.conn._remove_channel(fd, wait=True)
            os.close(fd)            # wcfs stops waiting for this channel's acks
        for f in (self._rev_fd, self._head_fd):
            if f is not None:
                os.close(f)         # the mappings keep what they map open
        self._rev_fd = self._head_fd = None
        self.conn._forget(self)
        return True

    # ---- requests (caller threads, _api_lock held) ----

    def _open_rev(self, tid):
        """mkdir @<tid> unless it exists; open its data; -> (fd, size)."""
        name = '%s/@%016x' % (self.name, tid)
        path = self.conn._path(name)
        for attempt in range(3):
            try:
                os.mkdir(path)
            except FileExistsError:
                pass
            except OSError as e:
                why = {errno.ENOENT: 'no such revision: after the last transaction, before the '
                                     'file existed, or packed away'}
                raise WCFSError('%s: %s' % (name, why.get(e.errno, e))) from e
            try:
                fd = os.open(os.path.join(path, 'data'), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue            # wcfs removed the unused directory in between
            except OSError as e:
                raise WCFSError('%s/data: %s' % (name, e)) from e
            return fd, os.fstat(fd).st_size
        raise WCFSError('%s: removed again right after mkdir, %d times' % (name, attempt + 1))

    def _want(self, cat, rev_fd, size):
        """Write `want <cat>` until it is answered and the view remapped to cat.

        Takes rev_fd (`@<cat>/data`) over: it becomes the view's, or is closed.
        Interrupted (KeyboardInterrupt) while wcfs has the want, it leaves the
        request to the reader thread, which must answer it anyway: the view
        then ends as of cat, or as it was if the want fails.
        """
        req = _Want(cat, rev_fd, size)
        line = protocol.format_want(cat)
        with self._lock:
            try:
                while True:
                    self._check_usable()
                    self._req = req
                    req.state = 'inflight'
                    log.debug('%s: C: want %016x', self.name, cat)
                    try:
                        os.pwrite(self._fd, line, 0)
                    except OSError as e:
                        req.state = None
                        raise WCFSError('%s: want %016x: %s' % (self.name, cat, e)) from e
                    while req.state in ('inflight', 'waiting'):
                        self._cond.wait()
                    if req.state == 'done':
                        return
                    if req.state == 'failed':
                        raise req.error
            except BaseException:
                if req.state in (None, 'resend'):   # wcfs does not have it: ours to drop
                    if self._req is req:
                        self._req = None
                    os.close(req.rev_fd)
                raise

    def _check_usable(self):
        if self._closed:
            raise WCFSError('%s: the view is closed' % self.name)
        if self._error is not None:
            raise WCFSError('%s: the view failed: %s' % (self.name, self._error))

    # ---- the channel (reader thread) ----

    def _on_readable(self):
        with self._lock:
            if self._fd is None or self._error is not None:
                return
            try:
                data = os.pread(self._fd, READ_SIZE, 0)
                if not data:
                    raise WCFSError('end of file on head/invalidations')
                self._inbuf += data
                while True:
                    line = self._next_line()
                    if line is None:
                        return
                    self._on_line(line)
            except Exception as e:
                self._fail(e)

    def _next_line(self):
        """The next complete line read, or None."""
        nl = self._inbuf.find(b'\n')
        if nl < 0:
            return None
        line, self._inbuf = self._inbuf[:nl], self._inbuf[nl + 1:]
        return line

    def _peek_pending(self):
        """The next line if wcfs has queued one (never blocks for a new one), else None."""
        while b'\n' not in self._inbuf:
            if not self._inbuf:
                p = select.poll()
                p.register(self._fd, select.POLLIN)
                if not p.poll(0):
                    return None
            self._inbuf += os.pread(self._fd, READ_SIZE, 0)  # wcfs queues whole lines
        return self._inbuf[:self._inbuf.find(b'\n')]

    def _on_line(self, line):
        log.debug('%s: S: %s', self.name, line.decode('ascii', 'backslashreplace'))
        kind, value, ranges = _parse(line)
        req = self._req
        state = req.state if req is not None else None
        if kind == 'error':
            if state != 'inflight':
                raise WCFSError('unexpected line from wcfs: error %s' % value)
            if req.rewritten_after_wait:
                # wcfs kept the want through the update after all: wait on.
                log.debug('%s: want %016x: still waiting', self.name, req.cat)
                req.state = 'waiting'
                return
            self._finish(req, 'failed',
                         WCFSError('%s: want %016x: %s' % (self.name, req.cat, value)))
        elif kind == 'wait':
            if state != 'inflight':
                raise WCFSError('unexpected line from wcfs: have %016x wait' % value)
            req.state = 'waiting'
            req.rewritten_after_wait = False
        elif state == 'inflight':
            pending = self._peek_pending()
            if pending is None:
                if value < req.cat:
                    raise WCFSError('want %016x answered with have %016x' % (req.cat, value))
                self._answer(req, value, ranges)
            else:
                self._crossed(req, value, ranges, _parse(pending))
        elif state == 'waiting':
            if value >= req.cat:
                self._answer(req, value, ranges)
            else:
                self._update(ranges)        # head moves toward cat; wcfs forgot the want
                req.rewritten_after_wait = True
                self._finish(req, 'resend')
        else:
            self._update(ranges)

    def _crossed(self, req, tid, ranges, pending):
        """`have <tid> <ranges>` was an update that crossed the want in flight:
        `pending` (the next line, parsed) is what wcfs answered the want."""
        kind, value, ranges2 = pending
        if kind == 'error':         # as SPEC 4.2 says: resend once the update is acked
            self._update(ranges)
            log.debug('%s: want %016x crossed an update: S: %s', self.name, req.cat,
                      self._next_line().decode('ascii', 'backslashreplace'))
            self._finish(req, 'resend')
            return
        log.debug('%s: want %016x crossed an update, and wcfs took it anyway', self.name,
                  req.cat)
        if kind == 'wait':          # the wait is handled next, as the want's answer
            self._update(ranges)
        else:
            # The answer is as of head before the update; after the one ack,
            # head moves to the update's tid: overlay both lines' ranges.
            log.debug('%s: S: %s', self.name, self._next_line().decode('ascii', 'backslashreplace'))
            self._answer(req, max(tid, value), merge_ranges(ranges + ranges2))

    def _finish(self, req, state, error=None):
        if state == 'resend':
            log.debug('%s: want %016x: not answered, an update came first: writing it again',
                      self.name, req.cat)
        elif state == 'failed' and req.rev_fd is not None:
            os.close(req.rev_fd)
        req.state = state
        req.error = error
        self._req = None
        self._cond.notify_all()

    def _ack(self):
        os.pwrite(self._fd, protocol.format_ack(), 0)

    def _update(self, ranges):
        """have <Snew> <ranges> for the view's own at: overlay what is not yet, ack."""
        new = subtract(clip(ranges, 0, self.size), self._overlaid)
        if new:
            self._overlay(new)
        self._ack()

    def _answer(self, req, sat, ranges):
        """The answer to want <cat>: remap the view from at to cat, ack."""
        size = req.size
        delta = clip(ranges, 0, size)
        grown = [(self.size, size)] if size > self.size else []
        to_head = subtract(clip(self._overlaid + grown, 0, size), delta)
        for start, stop in to_head:
            _mmap(self._base + start, stop - start, mmap.PROT_READ, mmap.MAP_SHARED | MAP_FIXED,
                  self._head_fd, start, self.name + '/head/data')
        if size < self.size:
            _mmap(self._base + size, self.size - size, mmap.PROT_READ,
                  mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0,
                  'zeros past the end of %s' % self.name)
        old_rev = self._rev_fd
        self._rev_fd, self.at, self.size = req.rev_fd, req.cat, size
        self._mapped = max(self._mapped, _round_up(size, PAGE))
        req.rev_fd = None           # the view's now
        self._overlaid = []
        if delta:
            self._overlay(delta)
        self._ack()
        if old_rev is not None:
            os.close(old_rev)
        self._finish(req, 'done')

    def _freeze(self):
        if self._rev_fd is None or self._base is None or not self.size:
            return
        try:
            self._overlay_whole()
        except OSError as e:
            log.error('%s: keeping the view as of %016x: %s', self.name, self.at, e)

    def _overlay(self, ranges):
        """Map @<at>/data over ranges; if the kernel refuses more mappings, over everything."""
        what = '%s/@%016x/data' % (self.name, self.at)
        try:
            for start, stop in ranges:
                _mmap(self._base + start, stop - start, mmap.PROT_READ,
                      mmap.MAP_SHARED | MAP_FIXED, self._rev_fd, start, what)
            self._overlaid = merge_ranges(self._overlaid + ranges)
        except OSError as e:
            if e.errno != errno.ENOMEM:
                raise
            log.warning('%s: %s; mapping all of it', what, e)
            self._overlay_whole()

    def _overlay_whole(self):
        """Map @<at>/data over the whole view: it shows `at` whatever head does."""
        _mmap(self._base, _round_up(self.size, PAGE), mmap.PROT_READ,
              mmap.MAP_SHARED | MAP_FIXED, self._rev_fd, 0,
              '%s/@%016x/data' % (self.name, self.at))
        self._overlaid = [(0, self.size)]

    def _fail(self, exc):
        """The channel cannot go on: close it (wcfs stops waiting for its acks), fail requests.

        Head moves on without this view from now on, and may shrink under
        it: a page of head/data touched past head's new end would be
        SIGBUS. So first map @<at>/data over the whole view, and its arrays
        go on showing the file as of `at`."""
        log.error('%s: channel failed: %s', self.name, exc)
        self._freeze()
        self._error = exc
        fd, self._fd = self._fd, None
        self.conn._remove_channel(fd, wait=False)
        try:
            os.close(fd)
        except OSError as e:
            log.error('%s: close head/invalidations: %s', self.name, e)
        req = self._req
        if req is not None:
            self._finish(req, 'failed', WCFSError('%s: want %016x: the channel failed: %s'
                                                  % (self.name, req.cat, exc)))
