"""Ears (zstorage/listen.py): when the poller is told of commits by
PostgreSQL and when it polls, without a database: a fake probe, a fake
listening connection and a fake clock. The real thing: tests/test_pg_notify.py."""

import contextlib
import re
from pathlib import Path

import pytest

from wcfs_lib.zodb.zstorage import listen
from wcfs_lib.zodb.zstorage.listen import Ears, NotListening, told_tid, trigger_state

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class FakeListener:
    """Hands out the notifications queued in `coming`, one batch a wait;
    an empty batch is a wait that times out (the clock moves on)."""

    def __init__(self, clock, refuse=None):
        self.clock = clock
        self.refuse = refuse
        self.coming = []
        self.closed = False

    def open(self):
        if self.refuse:
            raise NotListening(self.refuse)

    def wait(self, timeout, wake_fd):
        if self.coming:
            return self.coming.pop(0)
        self.clock.now += timeout
        return []

    def close(self):
        self.closed = True


@contextlib.contextmanager
def watching(what, target):
    yield


def ears_with(trigger='O', refuse=None):
    clock = Clock()
    made = []

    def new_listener():
        made.append(FakeListener(clock, refuse))
        return made[-1]
    rows = [] if trigger is None else [(trigger,)]
    ears = Ears(lambda query, args: rows, new_listener, watching, -1, lambda: False, clock)
    return ears, clock, made


@pytest.mark.parametrize('payload, tid', [
    ('285', 285), (' 285\n', 285), (str((1 << 64) - 1), (1 << 64) - 1),
    (str(1 << 64), None), ('-1', None), ('', None), ('0x11d', None), ('12a', None),
    ('9' * 40, None), (None, None), ('١٢', None)])
def test_a_payload_is_a_tid_or_nothing(payload, tid):
    assert told_tid(payload) == tid


@pytest.mark.parametrize('rows, fires', [
    ([('O',)], True), ([('A',)], True), ([(b'O',)], True),
    ([('D',)], False), ([('R',)], False), ([], False)])
def test_the_trigger_counts_when_it_fires_for_ordinary_sessions(rows, fires):
    why = trigger_state(lambda query, args: rows)
    assert (why is None) == fires, why
    if not fires:
        assert listen.TRIGGER in why


def test_the_sql_file_installs_the_trigger_wcfs_looks_for():
    text = (ROOT / 'sql' / 'wcfs-notify.sql').read_text()
    assert re.search(r"pg_notify\('%s', NEW\.tid::text\)" % listen.CHANNEL, text)
    assert re.search(r'DROP TRIGGER IF EXISTS %s ON transaction;' % listen.TRIGGER, text)
    assert re.search(r'CREATE TRIGGER %s AFTER INSERT ON transaction\s+FOR EACH ROW'
                     % listen.TRIGGER, text)
    removal = (ROOT / 'sql' / 'wcfs-notify-remove.sql').read_text()
    assert 'DROP TRIGGER IF EXISTS %s ON transaction;' % listen.TRIGGER in removal


def test_without_the_trigger_it_polls_and_looks_again_later():
    ears, clock, made = ears_with(trigger=None)
    assert ears.try_due()
    assert ears.listen() is False
    assert not ears.listening and made == []        # no connection of its own
    assert not ears.try_due()
    clock.now += listen.RETRY
    assert ears.try_due()


@pytest.mark.parametrize('trigger, refuse', [('D', None), ('O', 'the server is a standby')])
def test_a_disabled_trigger_or_a_standby_is_polled(trigger, refuse):
    ears, clock, made = ears_with(trigger, refuse)
    assert ears.listen() is False and not ears.listening
    assert all(listener.closed for listener in made)


def test_told_the_first_poll_covers_what_came_before_listen():
    ears, clock, made = ears_with()
    assert ears.listen() is True and ears.listening
    assert ears.wait(1.0) is True                    # poll at once after LISTEN
    assert ears.polled(500) is True                  # commits before LISTEN: not announced
    assert ears.wait(1.0) is False                   # the safety net's turn


def test_a_notification_asks_for_a_poll_once():
    ears, clock, made = ears_with()
    ears.listen()
    ears.polled(500)
    made[0].coming = [[600, 610]]
    assert ears.wait(1.0) is True
    assert ears.wait(1.0) is True                    # not polled for yet
    assert ears.polled(610) is True
    made[0].coming = [[605]]                         # late, and polled already
    assert ears.wait(1.0) is False


def test_a_payload_that_is_no_tid_asks_for_a_poll_and_breaks_nothing():
    ears, clock, made = ears_with()
    ears.listen()
    ears.polled(500)
    made[0].coming = [[None]]
    assert ears.wait(1.0) is True
    assert ears.polled(500) is True


def test_a_notification_on_its_way_is_waited_for():
    ears, clock, made = ears_with()
    ears.listen()
    ears.polled(500)
    made[0].coming = [[], [700]]     # the safety net's poll is faster than the notification
    start = clock.now
    assert ears.polled(700) is True
    assert clock.now - start < listen.GRACE


def test_a_commit_nobody_announced_is_a_miss_after_the_grace():
    ears, clock, made = ears_with()
    ears.listen()
    ears.polled(500)
    start = clock.now
    assert ears.polled(700) is False
    assert clock.now - start >= listen.GRACE
    ears.fall_back('missed')
    assert not ears.listening and made[0].closed
    assert not ears.try_due()
    clock.now += listen.RETRY
    assert ears.try_due() and ears.listen() is True


def test_after_an_outage_it_listens_again_at_once():
    ears, clock, made = ears_with()
    ears.listen()
    ears.fall_back(None, retry=0)
    assert ears.try_due() and ears.listen() is True
    assert ears.polled(900) is True                  # a new LISTEN: its first poll settles
