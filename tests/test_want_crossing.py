"""An update that starts while wcfs checks a `want` never makes the want's
answer ambiguous (SPEC 4.2: every `have` is either the answer to the last
`want` or an update; while a want waits, updates are `have <S>` with S <
Cat).

wcfs reads a `want <Cat>`, checks Cat (the database's last tid, the file's
revisions: database I/O, with the file's lock released), and only then
answers it. An update that started in between once went to the channel as a
plain update `have <S>`, S >= Cat: by SPEC the answer, and the client acked
it as such; wcfs then answered the want again (a second `have`, or `have
<Sat> wait` when the client had not acked yet: a protocol error for the
client library, whose view failed). Seen by bench/bench_want_contention.py
with commits (556 errors in one run).

Here the window is made wide on purpose: wcfs runs under a launcher (this
file, `launch`) that takes DELAY seconds more to check a Cat once the test
arms it; wcfs itself is unchanged.
"""

import os
import select
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)        # run as a script too: `launch`

from devtools.procs import wait_for  # noqa: E402
from zhelp import KiB, LaunchedWCFS, Writer, head_at, hex16  # noqa: E402

BS = 64 * KiB
DELAY = 1.0


def launch(armed, done, argv):
    """Run wcfs with argv; while the file `armed` exists, a Cat's check takes
    DELAY seconds more (`armed`.checking is made when it starts), and each
    want's handling appends its Cat to `done`."""
    from wcfs_lib.files import subscribers
    import wcfs

    check_now = subscribers.Subscribers._check_cat
    want_now = subscribers.Subscribers.want

    def check_late(self, cat, request):
        r = check_now(self, cat, request)
        if os.path.exists(armed):
            open(armed + '.checking', 'w').close()
            time.sleep(DELAY)
        return r

    def want_noted(self, ch, cat, request):
        try:
            return want_now(self, ch, cat, request)
        finally:
            if os.path.exists(armed):
                with open(done, 'a') as f:
                    f.write('%016x\n' % cat)

    subscribers.Subscribers._check_cat = check_late
    subscribers.Subscribers.want = want_noted
    return wcfs.main(argv)


class CheckingWCFS(LaunchedWCFS):
    """wcfs run by `launch`; `armed` arms its delay."""

    def __init__(self, zurl, tmp_path):
        self.armed = str(tmp_path / 'armed')
        self.done = str(tmp_path / 'done')
        super().__init__([__file__, 'wcfs', self.armed, self.done], zurl, tmp_path)

    def handled(self):
        """The Cats of the wants handled since armed."""
        try:
            with open(self.done) as f:
                return f.read().split()
        except FileNotFoundError:
            return []


def read_line(fd, timeout=10):
    p = select.poll()
    p.register(fd, select.POLLIN)
    if not p.poll(timeout * 1000):
        raise AssertionError('no line from wcfs within %g s' % timeout)
    return os.pread(fd, 4096, 0).decode()


def pending(fd):
    p = select.poll()
    p.register(fd, select.POLLIN)
    return os.pread(fd, 4096, 0).decode() if p.poll(0) else ''


@pytest.mark.timeout(120)
@pytest.mark.parametrize('acks', ['at once', 'after the check'])
def test_update_during_the_check_of_a_want_leaves_one_answer(zeo, tmp_path, acks):
    w = Writer(zeo.db())
    f, oid, t0 = w.new_file(BS, {0: b'a' * BS, 1: b'b' * BS})
    mnt = CheckingWCFS(zeo.zurl, tmp_path)
    try:
        fdir = os.path.join(mnt.path, 'bigfile', hex16(oid))
        os.mkdir(fdir)
        fd = os.open(os.path.join(fdir, 'head', 'invalidations'), os.O_RDWR)
        try:
            os.pwrite(fd, b'want %s\n' % hex16(t0).encode(), 0)
            assert read_line(fd) == 'have %s\n' % hex16(t0)
            os.pwrite(fd, b'ack\n', 0)

            open(mnt.armed, 'w').close()
            # the write returns once the want is handled: commit meanwhile
            writer = threading.Thread(target=os.pwrite,
                                      args=(fd, b'want %s\n' % hex16(t0).encode(), 0))
            writer.start()
            wait_for(lambda: os.path.exists(mnt.armed + '.checking'), 10, 'the check to start')
            f.write_block(1, b'B' * BS)
            t1 = w.commit()
            lines = []
            while not lines or ' wait' in lines[-1]:
                lines += read_line(fd).splitlines()
            # the answer: a have at or after Cat; before it at most one wait
            assert all(' wait' in line for line in lines[:-1]) and len(lines) <= 2, lines
            answer = lines[-1].split()
            assert answer[0] == 'have' and answer[1] >= hex16(t0), lines
            if acks == 'after the check':
                wait_for(lambda: mnt.handled(), 10, 'wcfs to handle the want')
            os.pwrite(fd, b'ack\n', 0)
            # from now on only updates, each after the last tid told
            told = answer[1]

            def settled():
                nonlocal told
                for line in pending(fd).splitlines():
                    words = line.split()
                    assert words[0] == 'have' and 'wait' not in words and words[1] > told, \
                        'after the answer %s: %r' % (lines, line)
                    told = words[1]
                    os.pwrite(fd, b'ack\n', 0)
                return mnt.handled() and told == hex16(t1) and head_at(fdir) == t1

            wait_for(settled, 30, 'the file and the channel to settle at %s' % hex16(t1))
            writer.join()
            assert pending(fd) == "", lines
        finally:
            os.close(fd)
    finally:
        mnt.close()


if __name__ == '__main__' and sys.argv[1:2] == ['wcfs']:
    sys.exit(launch(sys.argv[2], sys.argv[3], sys.argv[4:]))
