"""Processes and mounts on this machine, for the demo, benchmarks and tests.

They start runzeo and wcfs on loopback and must always end them by pid and
leave no mount behind.
"""

import signal
import socket
import subprocess

from .kernel.mount import is_mounted

__all__ = ['free_port', 'accepts', 'terminate', 'is_mounted', 'unmount_left']


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


def terminate(proc, timeout=15):
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
