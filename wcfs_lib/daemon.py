"""Running wcfs as a daemon: pid file, detaching, reporting start-up.

The starting process must exit 0 only once the filesystem serves, and 1 with
the reason otherwise (SPEC §2). python-daemon exits the process that calls
`DaemonContext.open()` at once, and takes the pid file only in the detached
child; so (DESIGN "Daemon and packaging"):

1. the pid file is checked here first: a live wcfs holding it is a refusal, a
   dead one (or a reused pid running something else) leaves a stale file
   that is broken;
2. we fork ourselves before python-daemon does: the parent waits on a pipe
   for the daemon's "ready" or its one-line error, or for the pipe to close
   (the daemon died);
3. the child detaches with python-daemon, keeping the pipe open, and only
   then starts the server (ZEO's I/O thread must not exist across a fork).
"""

import logging
import logging.handlers
import os
import sys

from . import procfs

log = logging.getLogger('wcfs.daemon')

SYSLOG_SOCKET = '/dev/log'
FALLBACK_LOG = '/var/log/wcfs.log'


class PidFileBusy(Exception):
    """Another live wcfs holds the pid file."""


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


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def is_wcfs(pid):
    """Is `pid` a live (not zombie) wcfs process?"""
    state, argv = procfs.process_state(pid), procfs.cmdline(pid)
    if state is None or argv is None:
        return False
    return state != 'Z' and any(b'wcfs' in os.path.basename(a) for a in argv[:3])


def claim_pidfile(path):
    """Refuse a pid file of a live wcfs; break a stale one."""
    pid = read_pid(path) if os.path.exists(path) else None
    if pid is not None and pid != os.getpid() and is_wcfs(pid):
        raise PidFileBusy('pid file %s: wcfs is already running as pid %d' % (path, pid))
    if os.path.exists(path):
        log.info('pid file %s: breaking the stale file of pid %s', path, pid)
        os.unlink(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)


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

    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        return _wait_ready(rfd, pid)
    os.close(rfd)
    try:
        ctx = daemon.DaemonContext(
            pidfile=daemon.pidfile.TimeoutPIDLockFile(pidfile, acquire_timeout=0),
            files_preserve=[wfd], umask=0o022, signal_map={}, detach_process=True)
        ctx.open()
    except Exception as e:
        _report(wfd, 'pid file %s: %s' % (pidfile, e))
        os._exit(1)

    def report(message):
        _report(wfd, message)

    code = 1
    try:
        code = run(report)
    except BaseException as e:
        log.exception('wcfs daemon failed')
        report('%s: %s' % (type(e).__name__, e))
    finally:
        ctx.close()
        os._exit(code)


def _report(wfd, message):
    try:
        os.write(wfd, b'ready\n' if message is None else ('error %s\n' % message).encode())
        os.close(wfd)
    except OSError:
        pass


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
