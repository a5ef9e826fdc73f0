"""`--debug` (SPEC §2): every filesystem request (operation, path, result or
errno) and every protocol message (C: and S: lines) goes through the log that
wcfs uses, here `--logfile`, in the foreground and as a daemon (`-d`), and
keeps going there once SIGHUP reopened the file (logrotate).

Each wcfs started here is ended by its pid and its mount unmounted (the
wcfs_mount and wcfs_d fixtures of conftest).
"""

import errno
import os
import re
import signal

import pytest

from devtools.procs import read_text, wait_for
from zhelp import Writer, hex16, read_bytes

BS = 64 << 10


def request_line(op, path, result):
    """A regex for the --debug line of request `op` on `path` that gave `result`."""
    return re.compile(r'wcfs\.fs DEBUG: %s %s\b.* -> %s\b' % (op, re.escape(path), result))


def logged(logfile, *patterns):
    """Whether every pattern (a str or a regex) is in logfile."""
    text = read_text(logfile)
    return all((p.search(text) if hasattr(p, 'search') else p in text) for p in patterns)


class Session:
    """Requests on a --debug mount and the log lines they must leave.

    mountpoint: the mount; oid, tid: a ZBigFile committed before it started."""

    def __init__(self, mountpoint, oid, tid):
        self.mountpoint = mountpoint
        self.oid = oid
        self.tid = tid
        self.fdir = os.path.join(mountpoint, 'bigfile', hex16(oid))
        self.rel = '/bigfile/' + hex16(oid)

    def lookup_missing(self, name):
        """stat a name that is not there -> the log line it must leave."""
        with pytest.raises(FileNotFoundError):
            os.stat(os.path.join(self.fdir, name))
        return request_line('getattr', '%s/%s' % (self.rel, name), 'ENOENT')

    def mkdir(self, name):
        os.mkdir(os.path.join(self.fdir, name) if name else self.fdir)
        return request_line('mkdir', self.rel + ('/' + name if name else ''), 'ok')

    def read_data(self, where='head'):
        """Read <where>/data, not in the page cache yet -> the line it must leave."""
        assert len(read_bytes(os.path.join(self.fdir, where, 'data'))) == 2 * BS
        return request_line('read', '%s/%s/data' % (self.rel, where), '%d bytes' % (2 * BS))

    def talk(self):
        """want, ack and a bad line on a channel -> the lines they must leave."""
        path = os.path.join(self.fdir, 'head', 'invalidations')
        lines = b'ack\nbogus\n'
        fd = os.open(path, os.O_RDWR)
        try:
            os.write(fd, b'want %016x\n' % self.tid)
            assert os.read(fd, 4096) == b'have %016x\n' % self.tid
            os.write(fd, lines)
            assert os.read(fd, 4096).startswith(b'error ')
        finally:
            os.close(fd)
        rel = self.rel + '/head/invalidations'
        chan = rel[1:] + ': '
        return [request_line('open', rel, 'ok'), request_line('write', rel, str(len(lines))),
                request_line('release', rel, 'ok'),
                chan + 'C: want ' + hex16(self.tid), chan + 'S: have ' + hex16(self.tid),
                chan + 'C: ack', chan + 'C: bogus', chan + 'S: error ']


def check_debug_log(s, logfile, pid):
    """Requests of every kind leave their lines in logfile, and in the new
    logfile once it was moved away and SIGHUP sent to pid."""
    want = [s.mkdir(None), s.lookup_missing('nothere'), s.read_data(), *s.talk()]
    wait_for(lambda: logged(logfile, *want), 10, 'the --debug lines in %s' % logfile)

    rotated = str(logfile) + '.1'
    os.rename(logfile, rotated)
    os.kill(pid, signal.SIGHUP)
    # The signal is handled asynchronously: make requests until one lands in the new file.
    tries = iter(range(1000))
    wait_for(lambda: logged(logfile, s.lookup_missing('after-hup-%d' % next(tries))), 10,
             'a request line in the reopened %s' % logfile)

    revdir = '@' + hex16(s.tid)
    want = [s.mkdir(revdir), s.lookup_missing('missing'), s.read_data(revdir), *s.talk()]
    wait_for(lambda: logged(logfile, *want), 10, 'the --debug lines in the reopened %s' % logfile)
    moved = read_text(rotated)
    assert '/' + revdir not in moved and '/missing' not in moved


def commit_file(zeo):
    w = Writer(zeo.db())
    _, oid, tid = w.new_file(BS, {0: os.urandom(BS), 1: b'last block'})
    return oid, tid


def test_debug_logs_requests_and_messages_to_the_logfile(zeo, wcfs_mount, tmp_path):
    oid, tid = commit_file(zeo)
    logfile = tmp_path / 'debug.log'
    m = wcfs_mount(zeo.zurl, '--debug', '--logfile', str(logfile))
    check_debug_log(Session(m.path, oid, tid), logfile, m.pid)
    assert 'opcode:' not in m.log(), "libfuse's own debug output on stderr"


def test_debug_logs_requests_and_messages_in_daemon_mode(zeo, wcfs_d, mnt, tmp_path):  # noqa: F811
    oid, tid = commit_file(zeo)
    logfile = tmp_path / 'debug.log'
    d = wcfs_d(zeo.zurl, mnt, '--debug', logfile=logfile)
    assert d.returncode == 0, d.stderr
    check_debug_log(Session(mnt, oid, tid), logfile, d.pid)


def test_no_request_lines_without_debug(zeo, wcfs_mount, tmp_path):
    oid, tid = commit_file(zeo)
    logfile = tmp_path / 'plain.log'
    m = wcfs_mount(zeo.zurl, '--logfile', str(logfile))
    s = Session(m.path, oid, tid)
    s.mkdir(None)
    s.read_data()
    s.talk()
    with pytest.raises(OSError) as e:
        os.mkdir(os.path.join(m.path, 'bigfile', 'not-an-oid'))
    assert e.value.errno == errno.EINVAL
    text = read_text(logfile)
    assert 'serving' in text
    assert ' DEBUG: ' not in text and ': C: ' not in text and ': S: ' not in text
