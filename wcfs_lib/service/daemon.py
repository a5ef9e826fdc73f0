"""Running wcfs as a daemon: pid file, detaching, reporting start-up.

The starting process must exit 0 only once the filesystem serves, and 1 with
the reason otherwise (SPEC §2). python-daemon exits the process that calls
`DaemonContext.open()` at once, and takes the pid file only in the detached
child; so (DESIGN "Daemon and packaging"):

1. the pid file is checked here first. Its directory must be ours alone
   (owned by us, writable by nobody else; made 0700 when missing), else
   another user could plant a pid in it or remove it. A live wcfs holding it
   is a refusal; a dead one (or a reused pid running something else) leaves
   a stale file that is broken. lockfile creates the file and then writes
   the pid: a file without a whole line yet is read again for a moment
   (PIDFILE_GRACE), not taken for stale while its wcfs is writing it;
2. we fork ourselves before python-daemon does: the parent waits on a pipe
   for the daemon's "ready" or its one-line error, or for the pipe to close
   (the daemon died);
3. the child detaches with python-daemon, keeping the pipe open, and only
   then starts the server (ZEO's I/O thread must not exist across a fork).
"""

import logging
import logging.handlers
import os
import pwd
import stat
import sys
import time

from .. import procfs

log = logging.getLogger('wcfs.daemon')

SYSLOG_SOCKET = '/dev/log'
FALLBACK_LOG = '/var/log/wcfs.log'

# Seconds a pid file may lack its pid while the wcfs that made it writes it
# (lockfile writes right after creating; this only covers a busy machine).
PIDFILE_GRACE = 5.0
PIDFILE_POLL = 0.05


class PidFileError(Exception):
    """The pid file cannot be used; a one-line reason that names it."""


class PidFileBusy(PidFileError):
    """Another live wcfs holds the pid file."""


class PidFileUnsafe(PidFileError):
    """Another user could plant or remove the pid file."""


def default_pidfile(mountpoint):
    """The pid file for a mount point, as the man page documents it."""
    name = '-' if mountpoint == '/' else mountpoint.lstrip('/').replace('/', '-')
    if os.geteuid() == 0:
        rundir = '/run/wcfs'
    elif os.environ.get('XDG_RUNTIME_DIR'):
        rundir = os.path.join(os.environ['XDG_RUNTIME_DIR'], 'wcfs')
    else:
        rundir = '/tmp/wcfs-%d' % os.getuid()
    return os.path.join(rundir, name + '.pid')


def _read_pidfile(path):
    """-> (the text of the pid file, seconds since it changed), (None, None) if missing."""
    try:
        with open(path) as f:
            age = time.time() - os.fstat(f.fileno()).st_mtime
            return f.read(), age
    except OSError:
        return None, None


def _parse_pid(text):
    """The pid a pid file's text starts with, or None (no text, no pid)."""
    try:
        return int(text.split()[0]) if text is not None else None
    except (ValueError, IndexError):
        return None


def _wait_for_pid(path):
    """The pid in the pid file `path`, once it holds a whole line or is
    PIDFILE_GRACE seconds old (we waited that long at most); None if there
    is no file or no pid in it."""
    deadline = time.monotonic() + PIDFILE_GRACE
    while True:
        text, age = _read_pidfile(path)
        if text is None or text.endswith('\n') or age >= PIDFILE_GRACE \
                or time.monotonic() >= deadline:
            return _parse_pid(text)
        time.sleep(PIDFILE_POLL)


def is_wcfs(pid):
    """Is `pid` a live (not zombie) wcfs process?"""
    state, argv = procfs.process_state(pid), procfs.cmdline(pid)
    if state is None or argv is None:
        return False
    return state != 'Z' and any(b'wcfs' in os.path.basename(a) for a in argv[:3])


def _user(uid):
    try:
        return 'uid %d (%s)' % (uid, pwd.getpwuid(uid).pw_name)
    except KeyError:
        return 'uid %d' % uid


def directory_problem(path):
    """Why a user other than us could add, replace or remove entries of the
    directory `path` (SPEC §2), or None when nobody else could. Root's own
    symlinks (/var/run -> /run) are followed; the directory itself must be
    ours and writable by nobody else, sticky or not."""
    uid = os.geteuid()
    link = os.lstat(path)
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (0, uid):
        return 'directory %s is a symlink of %s' % (path, _user(link.st_uid))
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        return '%s is not a directory' % path
    if st.st_uid != uid:
        return 'directory %s belongs to %s, not to %s' % (path, _user(st.st_uid), _user(uid))
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return 'directory %s may be written by other users (mode %04o)' % (
            path, stat.S_IMODE(st.st_mode))
    return None


def make_private_dir(path):
    """Make the directory `path` with mode 0700, whatever the umask (and its
    missing parents as the umask says), unless it exists."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    os.chmod(path, 0o700)


def claim_pidfile(path):
    """Make sure the pid file `path` is ours to take, or raise PidFileError:
    its directory is private (made if missing), no live wcfs holds it; a
    stale pid file is broken."""
    directory = os.path.dirname(path)
    try:
        make_private_dir(directory)
        problem = directory_problem(directory)
    except OSError as e:
        raise PidFileError('pid file %s: directory %s: %s'
                           % (path, directory, e.strerror)) from None
    if problem:
        raise PidFileUnsafe('pid file %s: %s: another user could plant or remove it'
                            % (path, problem))
    pid = _wait_for_pid(path)
    if pid is not None and pid != os.getpid() and is_wcfs(pid):
        raise PidFileBusy('pid file %s: wcfs is already running as pid %d' % (path, pid))
    if os.path.exists(path):
        log.info('pid file %s: breaking the stale file of pid %s', path, pid)
        try:
            os.unlink(path)
        except OSError as e:
            raise PidFileError('pid file %s: cannot remove the stale file: %s'
                               % (path, e.strerror)) from None


def daemon_log_handler(logfile):
    if logfile:
        return logging.FileHandler(logfile)
    if os.path.exists(SYSLOG_SOCKET):
        h = logging.handlers.SysLogHandler(SYSLOG_SOCKET, logging.handlers.SysLogHandler.LOG_DAEMON)
        h.ident = 'wcfs[%d]: ' % os.getpid()
        return h
    return logging.FileHandler(FALLBACK_LOG)


def detach(pidfile, run):
    """Fork, detach, and call run(report) in the daemon; -> the parent's exit code.

    `run` starts the server, calls report(None) once it serves or
    report(message) when it cannot, then serves until shutdown.
    """
    import daemon
    import daemon.pidfile
    import lockfile

    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        return _wait_ready(rfd, pid)
    os.close(rfd)
    pipe = StartupPipe(wfd)
    try:
        ctx = daemon.DaemonContext(
            pidfile=daemon.pidfile.TimeoutPIDLockFile(pidfile, acquire_timeout=0),
            files_preserve=[wfd], umask=0o022, signal_map={}, detach_process=True)
        ctx.open()
    except lockfile.AlreadyLocked:
        pipe.report('pid file %s: taken by another wcfs started at the same time' % pidfile)
        os._exit(1)
    except Exception as e:
        pipe.report('pid file %s: %s' % (pidfile, e))
        os._exit(1)

    code = 1
    try:
        code = run(pipe.report)
    except BaseException as e:
        log.exception('wcfs daemon failed')
        pipe.report('%s: %s' % (type(e).__name__, e))
    finally:
        ctx.close()
        os._exit(code)


class StartupPipe:
    """The daemon's end of the start-up pipe: one report, then closed.

    Once the report is written the descriptor is closed and its number may
    be reused (by the log, a database socket, /dev/fuse): a later report
    must never write there. It goes to the log only."""

    def __init__(self, wfd):
        self._wfd = wfd     # None once the report is written

    def report(self, message):
        """None: the filesystem serves; else why it does not (one line)."""
        if self._wfd is None:
            if message is not None:
                log.error('after start-up: %s', message)
            return
        wfd, self._wfd = self._wfd, None
        try:
            os.write(wfd, b'ready\n' if message is None else ('error %s\n' % message).encode())
        except OSError:
            pass
        finally:
            os.close(wfd)


def _wait_ready(rfd, child):
    data = b''
    while True:
        chunk = os.read(rfd, 4096)
        if not chunk:
            break
        data += chunk
    os.close(rfd)
    try:
        os.waitpid(child, 0)        # the intermediate process python-daemon leaves
    except ChildProcessError:
        pass
    line = data.decode(errors='replace').strip()
    if line == 'ready':
        return 0
    if line.startswith('error '):
        print('wcfs: %s' % line[len('error '):], file=sys.stderr)
    else:
        print('wcfs: the daemon exited before serving (see its log)', file=sys.stderr)
    return 1
