"""`wcfs.py -d` runs to their end, and the daemons they leave, seen from outside.

Start         one `wcfs.py -d ... ZURL MOUNTPOINT` to its end: exit status,
              stderr, the daemon's pid from its pid file (the wcfs_d fixture)
read_pid      the pid in a pid file
wcfs_running  whether a pid is a live wcfs.py
end_daemon    end a daemon that is not our child: SIGTERM, then SIGKILL
stale_mount   whether a mount's server is gone (ENOTCONN)
"""

import errno
import os
import signal
import subprocess
import time

from devtools.procs import STOP_TIMEOUT, read_text

RUN_TIMEOUT = 60        # seconds for a `wcfs -d` command to return


def read_pid(pidfile):
    """The pid in pidfile, or None when there is no such file (or no pid in it)."""
    try:
        with open(pidfile) as f:
            return int(f.read().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def wcfs_running(pid):
    """Whether pid is a live (not zombie) wcfs.py process."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            state = f.read().rsplit(')', 1)[1].split()[0]
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            argv = f.read().split(b'\0')
    except (OSError, IndexError):
        return False
    return state != 'Z' and any(a.endswith(b'wcfs.py') for a in argv[:2])


def end_daemon(pid):
    """End the wcfs daemon pid (not our child): SIGTERM, then SIGKILL."""
    for sig, timeout in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
        if not wcfs_running(pid):
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while wcfs_running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def stale_mount(path):
    """Whether path is a mount whose server is gone ("Transport endpoint is not connected")."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


class Start:
    """One run of `wcfs.py -d ... ZURL MOUNTPOINT` to its end."""

    def __init__(self, argv, pidfile, logfile, env=None, cwd=None):
        self.pidfile = str(pidfile)
        self.logfile = str(logfile)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
        self.command_pid = proc.pid
        try:
            self.stdout, self.stderr = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError('wcfs -d did not return within %d s' % RUN_TIMEOUT) from None
        self.returncode = proc.returncode
        self.pid = read_pid(self.pidfile)   # the daemon's, if it started

    def log(self):
        return read_text(self.logfile)
