"""The kill of SPEC §4.4 on real processes, without a mount: KillPolicy
checks in /proc that the owner of a channel is still that very process, then
kills it. A pid reused in between by another process must not be killed:
the signal goes through a pidfd opened before the check.

The pid is reused for real: as root, /proc/sys/kernel/ns_last_pid makes the
next process take the pid that was freed (retried while other processes of
the machine take it first). Every process is ended by its pid."""

import os
import signal
import subprocess

import pytest

from devtools.procs import wait_for

from wcfs_lib import procfs
from wcfs_lib.files.subscription import KillPolicy

NS_LAST_PID = '/proc/sys/kernel/ns_last_pid'


def sleeper():
    return subprocess.Popen(['sleep', '600'])


def end(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def ticks_since_boot():
    with open('/proc/uptime') as f:
        return float(f.read().split()[0]) * os.sysconf('SC_CLK_TCK')


def with_pid(pid, start, tries=200):
    """A new sleeper that got `pid` (freed just before), or None. It starts
    after the clock tick `start`: a pid and a start time name one process
    only across ticks (a reuse within the same tick cannot be told apart)."""
    wait_for(lambda: ticks_since_boot() > start + 1, 10, 'a clock tick past %d' % start)
    for _ in range(tries):
        with open(NS_LAST_PID, 'w') as f:
            f.write(str(pid - 1))
        p = sleeper()
        if p.pid == pid:
            return p
        end(p)
    return None


@pytest.fixture
def procs():
    started = []
    try:
        yield started
    finally:
        for p in started:
            end(p)


@pytest.mark.skipif(os.geteuid() != 0, reason='ns_last_pid needs root')
def test_pid_reused_between_the_check_and_the_kill_is_not_killed(procs):
    owner_proc = sleeper()
    procs.append(owner_proc)
    owner = procfs.thread_process(owner_proc.pid)

    def sure():
        """The check passes; then, before the kill, the owner exits and
        another process takes its pid."""
        assert owner.alive()
        end(owner_proc)
        victim = with_pid(owner.pid, owner.start)
        assert victim is not None, 'pid %d was not reused' % owner.pid
        procs.append(victim)
        return True

    with pytest.raises(ProcessLookupError):
        KillPolicy._kill_if(owner, sure)
    victim = procs[-1]
    assert victim.pid == owner.pid and victim.poll() is None, 'the reused pid was killed'


def test_the_owner_itself_is_killed(procs):
    proc = sleeper()
    procs.append(proc)
    owner = procfs.thread_process(proc.pid)
    assert KillPolicy._kill_if(owner, owner.alive)
    assert proc.wait(10) == -signal.SIGKILL


def test_a_pid_reused_before_the_check_is_not_killed(procs):
    proc = sleeper()
    procs.append(proc)
    owner = procfs.thread_process(proc.pid)
    end(proc)
    victim = with_pid(owner.pid, owner.start)
    assert victim is not None, 'pid %d was not reused' % owner.pid
    procs.append(victim)
    assert not KillPolicy._kill_if(owner, owner.alive)    # the start time differs
    assert victim.poll() is None
