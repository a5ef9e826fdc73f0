"""Processes and mounts on this machine, for the demo, benchmarks and tests.

They start runzeo, postgres and wcfs on loopback and must always end them by
pid and leave no mount behind.
"""

import signal
import socket
import subprocess
import time
from pathlib import Path

from wcfs_lib.kernel.mount import is_mounted

__all__ = ['free_port', 'accepts', 'terminate', 'is_mounted', 'unmount_left',
           'spawn', 'read_text', 'tail', 'wait_for', 'START_TIMEOUT', 'STOP_TIMEOUT']

START_TIMEOUT = 20  # seconds for runzeo or wcfs to start serving
STOP_TIMEOUT = 15   # seconds for a process to exit after SIGTERM


def free_port():
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def accepts(addr):
    """Whether something accepts TCP connections at addr."""
    try:
        socket.create_connection(addr, timeout=1).close()
    except OSError:
        return False
    return True


def terminate(proc, timeout=STOP_TIMEOUT):
    """End proc by its pid: SIGTERM, then SIGKILL after timeout. -> its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def unmount_left(path):
    """Detach a mount left at path, if any: fusermount3 -u -z, else umount -l."""
    for cmd in (['fusermount3', '-u', '-z', path], ['umount', '-l', path]):
        if not is_mounted(path):
            return
        subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)


def spawn(argv, logpath):
    """Start argv with stdout and stderr appended to logpath, no stdin."""
    with open(logpath, 'ab') as log:
        return subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)


def read_text(path):
    """The text of the file path, '' when there is none (yet)."""
    try:
        return Path(path).read_text(errors='replace')
    except FileNotFoundError:
        return ''


def tail(path, n=30):
    """The last n lines of the file path, '' when there is none."""
    return '\n'.join(read_text(path).splitlines()[-n:])


def wait_for(cond, timeout=10, what='', error=AssertionError):
    """Call cond() until it returns something true, and return that.

    Sleeps a little between calls, longer as time goes by. Raises `error`
    (a test's failure by default; the demo and the benchmarks pass their
    own) naming `what` when `timeout` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise error(f'timed out after {timeout} s waiting for {what or cond}')
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
