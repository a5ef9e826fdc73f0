"""The FUSE operations: paths to nodes, nodes to calls on the model, errnos.

    .wcfs/zurl  .wcfs/stats  .wcfs/metrics
    bigfile/<oid>/head/{data,at,invalidations}
    bigfile/<oid>/@<tid>/data

Handlers are thin: behaviour lives in bigfile, watcher and channel modules;
the errno of each failure of the model comes from the table in errors.
Every handler runs on one of libfuse's worker threads; none of them may stat
the mount or send a kernel notification (see kcache).

With --debug, every request is logged (operation, path, caller, result or
errno) through wcfs's log, whatever it is (SPEC §2); libfuse's own debug
output would go to stderr, which a daemon does not have.
"""

import errno
import inspect
import logging
import os
import re
import stat
import time

from .. import locks
from ..files.prefetch import ReadStream
from ..files.reply import Reply
from ..zodb import zformat
from . import errors, mount
from .fs_binding import fuse
from .kcache import FUSE_CAP_AUTO_INVAL_DATA, FUSE_CAP_EXPLICIT_INVAL_DATA

log = logging.getLogger('wcfs.fs')

HEX16 = re.compile(r'[0-9a-f]{16}\Z')

# node kinds
(ROOT, WCFSDIR, ZURL, STATS, METRICS, BIGFILES, FILEDIR, HEADDIR, DATA, AT, INVAL, REVDIR,
 REVDATA) = range(13)

DIRS = {ROOT, WCFSDIR, BIGFILES, FILEDIR, HEADDIR, REVDIR}
UNCACHED = {ZURL, STATS, METRICS, AT}   # direct_io: never stale
WCFSFILES = {'zurl': ZURL, 'stats': STATS, 'metrics': METRICS}     # .wcfs/<name>

# SPEC §3. Sticky like /tmp: fusermount3 refuses to mount on a sticky directory
# that the user does not own, and every user may mkdir in them.
MODES = {BIGFILES: 0o1777, FILEDIR: 0o1777, INVAL: 0o666}


class Node:
    """What a path names: its kind, and the bigfile / revdir it is part of."""

    __slots__ = ('kind', 'bf', 'rd')

    def __init__(self, kind, bf=None, rd=None):
        self.kind = kind
        self.bf = bf
        self.rd = rd


def mode_of(node):
    """The permission bits of a node."""
    return MODES.get(node.kind, 0o555 if node.kind in DIRS else 0o444)


def err(code):
    return fuse.FuseOSError(code)


def is_hex16(name):
    return bool(HEX16.match(name))


class Handle:
    """An open file or directory (fi.fh indexes these)."""

    __slots__ = ('node', 'content', 'channel', 'uid', 'stream')

    def __init__(self, node, channel=None, uid=None):
        self.node = node
        self.content = None     # of an UNCACHED file, as its last read at offset 0 took it
        self.channel = channel
        self.uid = uid          # who opened the channel: its slot of the channel quota
        # of a data file: its reads, to tell a sequential reader (prefetch)
        self.stream = ReadStream() if node.kind in (DATA, REVDATA) else None


def handlers(cls):
    """Names of the FUSE requests that `cls` serves (init and destroy are not requests)."""
    return [name for name, value in vars(fuse.Operations).items()
            if callable(value) and not name.startswith(('_', 'init', 'destroy'))
            and getattr(cls, name) is not value]


def logged(name, method):
    """`method`, the handler of request `name`, logging each request and its
    result or errno at DEBUG."""
    params = list(inspect.signature(method).parameters.values())[1:]    # after path

    def request(path, *args):
        uid, _, pid = fuse.fuse_get_context()
        what = '%s %s%s (pid %d uid %d)' % (name, path, describe(params, args), pid, uid)
        try:
            result = method(path, *args)
        except fuse.FuseOSError as e:
            log.debug('%s -> %s', what, errno.errorcode.get(e.errno, e.errno))
            raise
        except Exception as e:
            log.debug('%s -> %s: %s', what, type(e).__name__, e)
            raise
        log.debug('%s -> %s', what, outcome(result))
        return result
    return request


def describe(params, args):
    """The arguments of a request after its path, as ' name=value ...' (values
    of *args unnamed; pointers left out)."""
    names = [p.name + '=' for p in params if p.kind != p.VAR_POSITIONAL]
    words = []
    for i, value in enumerate(args):
        key = names[i] if i < len(names) else ''
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            words.append(key + (oct(value) if key == 'mode=' else str(value)))
        elif isinstance(value, str):
            words.append(key + value)
        elif isinstance(value, bytes):
            words.append('%s%d bytes' % (key, len(value)))
        elif hasattr(value, 'flags'):       # fuse_file_info
            words.append('flags=%s' % oct(value.flags))
    return ''.join(' ' + w for w in words)


def outcome(result):
    """What a handler returned, for the log."""
    if result is None or result == 0:
        return 'ok'
    if isinstance(result, (bytes, Reply)):
        return '%d bytes' % len(result)
    if isinstance(result, dict):
        return ' '.join('%s=%s' % (k, oct(v) if k == 'st_mode' else v)
                        for k, v in result.items() if k in ('st_mode', 'st_size')) or 'ok'
    if isinstance(result, list):
        return '%d entries' % len(result)
    return str(result)


class WCFS(fuse.Operations):
    use_ns = True

    def __init__(self, model, debug=False):
        self.model = model          # service.model.Model: all fs asks of the rest of wcfs
        self._handles = {}
        self._handles_lock = locks.lock('WCFS._handles_lock')   # guards _handles, _next_fh
        self._next_fh = 1
        self.opens = 0              # open files and dirs; guarded by _handles_lock
        self.last_close = time.monotonic()
        self._uid, self._gid = os.getuid(), os.getgid()
        if debug:
            for name in handlers(type(self)):   # mfusepy calls them by name on the instance
                setattr(self, name, logged(name, getattr(self, name)))

    def usage(self):
        """-> (files and directories open now, monotonic time of the last close)."""
        with self._handles_lock:
            return self.opens, self.last_close

    # ---- paths ----

    def resolve(self, path):
        parts = [p for p in path.split('/') if p]
        n = len(parts)
        if n == 0:
            return Node(ROOT)
        if parts[0] == '.wcfs':
            if n == 1:
                return Node(WCFSDIR)
            if n == 2 and parts[1] in WCFSFILES:
                return Node(WCFSFILES[parts[1]])
            raise err(errno.ENOENT)
        if parts[0] != 'bigfile':
            raise err(errno.ENOENT)
        if n == 1:
            return Node(BIGFILES)
        bf = self.model.file(int(parts[1], 16)) if is_hex16(parts[1]) else None
        if bf is None:
            raise err(errno.ENOENT)
        if n == 2:
            return Node(FILEDIR, bf)
        if parts[2] == 'head':
            if n == 3:
                return Node(HEADDIR, bf)
            if n == 4:
                kind = {'data': DATA, 'at': AT, 'invalidations': INVAL}.get(parts[3])
                if kind is not None:
                    return Node(kind, bf)
            raise err(errno.ENOENT)
        name = parts[2]
        rd = bf.revdirs.get(int(name[1:], 16)) if name[:1] == '@' and is_hex16(name[1:]) else None
        if rd is None:
            raise err(errno.ENOENT)
        if n == 3:
            return Node(REVDIR, bf, rd)
        if n == 4 and parts[3] == 'data':
            return Node(REVDATA, bf, rd)
        raise err(errno.ENOENT)

    # ---- attributes ----

    def getattr(self, path, fh=None):
        node = self.resolve(path)
        now = time.time()
        st = dict(st_uid=self._uid, st_gid=self._gid, st_atime=now, st_ctime=now, st_mtime=now)
        if node.kind in DIRS:
            st.update(st_mode=stat.S_IFDIR | mode_of(node), st_nlink=2)
        else:
            st.update(st_mode=stat.S_IFREG | mode_of(node), st_nlink=1, st_size=0)
        if node.kind in (DATA, REVDATA, HEADDIR, REVDIR, AT):
            head = node.bf.head if node.rd is None else node.rd.head
            t = zformat.tid_time(node.bf.shown_at() if node.rd is None else head.at)
            st.update(st_mtime=t, st_ctime=t, st_atime=t)
            if node.kind in (DATA, REVDATA):
                st.update(st_size=head.size, st_blksize=head.blksize,
                          st_blocks=(head.size + 511) // 512)
        if node.kind in UNCACHED:
            st['st_size'] = len(self._content(node))
        return {k: (int(v * 1e9) if k.endswith('time') else v) for k, v in st.items()}

    def access(self, path, amode):
        """access(2) and chdir: what the modes say (the same for owner, group and
        others), except that no directory is writable for a user other than
        wcfs's own: fusermount3 asks this before it mounts on a directory, and
        so refuses every other user (SPEC §3). mkdir does not ask it."""
        node = self.resolve(path)
        allowed = mode_of(node) & 0o7
        if node.kind in DIRS and fuse.fuse_get_context()[0] != self._uid:
            allowed &= ~os.W_OK
        if amode & ~allowed & 0o7:
            raise err(errno.EACCES)
        return 0

    def _content(self, node):
        if node.kind == ZURL:
            return (self.model.zurl_shown + '\n').encode()
        if node.kind == STATS:
            return self.model.stats_text()
        if node.kind == METRICS:
            return self.model.metrics_text()
        if node.kind == AT:
            return b'%016x\n' % node.bf.shown_at()
        raise err(errno.EISDIR)

    def readdir(self, path, fh):
        node = self.resolve(path)
        names = {
            ROOT: lambda: ['.wcfs', 'bigfile'],
            WCFSDIR: lambda: list(WCFSFILES),
            BIGFILES: lambda: sorted(bf.name for bf in self.model.files()),
            FILEDIR: lambda: ['head'] + node.bf.revdirs.names(),
            HEADDIR: lambda: ['data', 'at', 'invalidations'],
            REVDIR: lambda: ['data'],
        }.get(node.kind)
        if names is None:
            raise err(errno.ENOTDIR)
        return ['.', '..'] + names()

    def statfs(self, path):
        return dict(f_bsize=4096, f_frsize=4096, f_namemax=255)

    # ---- open / read / release ----

    def _new_handle(self, h):
        # A revdir removed between the path's resolution and now is gone
        # for this open too: a handle on it would read, but its getattr
        # (fstat) would find no such path.
        if h.node.rd is not None and not h.node.bf.revdirs.acquire(h.node.rd):
            raise err(errno.ENOENT)
        with self._handles_lock:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = h
            self.opens += 1
        return fh

    def _handle(self, fh):
        with self._handles_lock:
            h = self._handles.get(fh)
        if h is None:
            raise err(errno.EBADF)
        return h

    def _drop_handle(self, fh):
        with self._handles_lock:
            h = self._handles.pop(fh, None)
            if h is not None:
                self.opens -= 1
                self.last_close = time.monotonic()
        if h is not None and h.node.rd is not None:
            h.node.bf.revdirs.release(h.node.rd)
        return h

    def opendir(self, path):
        node = self.resolve(path)
        if node.kind not in DIRS:
            raise err(errno.ENOTDIR)
        return self._new_handle(Handle(node))

    def releasedir(self, path, fh):
        self._drop_handle(fh)
        return 0

    def open(self, path, fi):
        node = self.resolve(path)
        if node.kind in DIRS:
            raise err(errno.EISDIR)
        if node.kind == INVAL:
            if fi.flags & os.O_ACCMODE == os.O_WRONLY:
                # A channel that can never read its answers; and what
                # fusermount3 opens before it mounts on a file (SPEC §3).
                raise err(errno.EACCES)
            uid, _, tid = fuse.fuse_get_context()
            channel = self.model.open_channel(node.bf, tid, uid)
            if channel is None:
                raise err(errno.EMFILE)
            fi.direct_io = 1
            fi.fh = self._new_handle(Handle(node, channel=channel, uid=uid))
            return 0
        if fi.flags & os.O_ACCMODE != os.O_RDONLY:
            raise err(errno.EACCES)
        if node.kind in UNCACHED:
            fi.direct_io = 1
        else:
            fi.keep_cache = 1
        fi.fh = self._new_handle(Handle(node))
        return 0

    def read(self, path, size, offset, fi):
        h = self._handle(fi.fh)
        node = h.node
        if node.kind in (DATA, REVDATA):
            head = node.bf.head if node.kind == DATA else node.rd.head
            with errors.mapped(errors.READ, 'read bigfile/%s @%016x [%d:+%d]',
                               node.bf.name, head.at, offset, size):
                return node.bf.reads.read(head, offset, size, h.stream, fuse.fuse_get_context()[0])
        if h.channel is not None:
            return h.channel.read(size, fi)
        return self._read_uncached(h, offset, size)

    def _read_uncached(self, h, offset, size):
        """SPEC §3: a read at offset 0 takes the current content, even through
        a file opened before (like /proc files); reads at later offsets go on
        with that content, so that a reader never sees two versions mixed."""
        if offset == 0 or h.content is None:
            h.content = self._content(h.node)
        return h.content[offset:offset + size]

    def write(self, path, data, offset, fi):
        h = self._handle(fi.fh)
        if h.channel is None:
            raise err(errno.EBADF)
        return h.channel.write(data, fuse.fuse_get_context()[2])

    def poll(self, path, fi, ph, reventsp):
        h = self._handle(fi.fh)
        if h.channel is None:
            raise err(errno.EINVAL)
        return h.channel.poll(ph, reventsp)

    def release(self, path, fi):
        h = self._drop_handle(fi.fh)
        if h is not None and h.channel is not None:
            h.channel.close()
            self.model.channel_released(h.uid)
        return 0

    def flush(self, path, fi):
        return 0

    # ---- mkdir ----

    def mkdir(self, path, mode):
        parts = [p for p in path.split('/') if p]
        if len(parts) == 2 and parts[0] == 'bigfile':
            return self._mkdir_bigfile(parts[1])
        if len(parts) == 3 and parts[0] == 'bigfile':
            node = self.resolve('/bigfile/' + parts[1])
            if not parts[2].startswith('@'):
                raise err(errno.EPERM)
            return self._mkdir_revdir(node.bf, parts[2][1:])
        raise err(errno.EPERM)

    def _mkdir_bigfile(self, name):
        if not is_hex16(name):
            raise err(errno.EINVAL)
        oid = int(name, 16)
        with errors.mapped(errors.MKDIR_BIGFILE, 'mkdir bigfile/%s', name):
            bf = self.model.make_visible(oid)
        if bf is None:
            raise err(errno.EEXIST)
        log.info('bigfile/%s: visible, head @%016x, size %d', name, bf.head.at, bf.head.size)
        return 0

    def _mkdir_revdir(self, bf, name):
        if not is_hex16(name):
            raise err(errno.EINVAL)
        tid = int(name, 16)
        if bf.revdirs.get(tid) is not None:
            raise err(errno.EEXIST)
        uid = fuse.fuse_get_context()[0]
        quota = self.model.revdir_quota
        refused = quota.acquire(uid)
        if refused is not None:
            log.warning('mkdir bigfile/%s/@%s: ENOSPC: %s', bf.name, name, refused)
            raise err(errno.ENOSPC)
        try:
            self._add_revdir(bf, tid, uid)
        except BaseException:
            quota.release(uid)
            raise
        return 0

    def _add_revdir(self, bf, tid, uid):
        """Make `@<tid>/` of `bf`, credited to `uid` (the quota slot is taken)."""
        with errors.mapped(errors.MKDIR_REVDIR, 'mkdir bigfile/%s/@%016x', bf.name, tid):
            head = self.model.snapshot_at(bf.oid, tid)     # packed away: ENOENT
            if head is None:
                raise err(errno.ENOENT)
        if bf.revdirs.add(tid, head, uid) is None:
            raise err(errno.EEXIST)

    # ---- everything else is refused ----

    def _eperm(self, *args):
        raise err(errno.EPERM)

    rmdir = unlink = rename = link = symlink = chmod = chown = _eperm
    truncate = setxattr = removexattr = mknod = utimens = _eperm

    def create(self, path, mode, fi=None):
        raise err(errno.EPERM)

    # ---- init ----

    def init_with_config(self, conn, config):
        if conn is not None:
            conn.want = (conn.want | FUSE_CAP_EXPLICIT_INVAL_DATA) & ~FUSE_CAP_AUTO_INVAL_DATA
            conn.max_readahead = 1 << 20
            mount.set_background_queue(conn)
        if config is not None:
            config.attr_timeout = 0.0       # sizes and mtimes move with head
            config.entry_timeout = 1.0
            config.negative_timeout = 0.0   # bigfile/<oid> appears on mkdir
        self.model.mounted()
