"""Signal handlers of wcfs.py only record; the timer loop acts (STYLE: the
handlers of gunicorn's arbiter). A handler runs in the main thread between
two bytecodes, maybe in the middle of a log line: a SIGHUP that reopened
the log right there closed the file under the line being written.

In-process, without a mount: the real handlers of wcfs.install_signals on a
Server that was not started, and a log file whose writes are cut in two by
a SIGHUP sent to this process."""

import logging
import os
import signal

import pytest

import wcfs
from wcfs_lib.service import server


class CutStream:
    """A file whose writes send SIGHUP to this process half-way through."""

    def __init__(self, path):
        self.file = open(path, 'a')

    def write(self, text):
        half = len(text) // 2
        self.file.write(text[:half])
        os.kill(os.getpid(), signal.SIGHUP)     # the handler runs before this returns
        self.file.write(text[half:])

    def flush(self):
        self.file.flush()

    def close(self):
        self.file.close()


class CutFileHandler(logging.FileHandler):
    def _open(self):
        return CutStream(self.baseFilename)


@pytest.fixture
def own_signals():
    """Give back pytest's handlers of the signals wcfs installs."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def test_sighup_in_the_middle_of_a_log_line_leaves_it_whole_and_reopens_at_the_tick(
        tmp_path, own_signals):
    path = tmp_path / 'wcfs.log'
    handler = CutFileHandler(path)
    handler.setFormatter(logging.Formatter('%(message)s'))
    log = logging.getLogger('wcfs.test_signals')
    log.addHandler(handler)
    log.propagate = False
    try:
        srv = server.Server(wcfs.parse_args(['file:///nowhere/Data.fs', str(tmp_path)]),
                            reopen_log=lambda: wcfs.reopen_log(handler))
        wcfs.install_signals(srv)
        log.warning('a line written while SIGHUP comes')
        os.rename(path, tmp_path / 'wcfs.log.1')    # logrotate moved it away
        srv.act_on_signals()                        # the timer loop's next tick
        log.warning('after the reopen')
    finally:
        log.removeHandler(handler)
        handler.close()
    assert (tmp_path / 'wcfs.log.1').read_text().startswith('a line written while SIGHUP comes\n')
    assert path.read_text().startswith('after the reopen\n')
