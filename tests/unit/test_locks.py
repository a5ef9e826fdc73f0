"""The lock contract (wcfs_lib/locks.py) checks itself: a wrong nesting or a
wait with a lock held fails at once, instead of deadlocking a workstation
some day; and the knobs that turn it on are refused when misspelt."""

import threading

import pytest

from wcfs_lib import knobs, locks

FIRST, LATER = 'BigFile.cond', 'Stats._lock'


def test_the_suite_runs_with_lock_ranks():
    assert knobs.LOCK_RANKS, 'conftest.py sets WCFS_DEBUG=lock-ranks'
    assert isinstance(locks.lock(FIRST), locks.RankedLock)


def test_every_lock_of_the_order_is_known_once():
    names = [name for name, _, _ in locks.ORDER]
    assert len(names) == len(set(names))
    assert all(guards and threads for _, guards, threads in locks.ORDER)


def test_nesting_in_order_is_fine():
    a, b = locks.lock(FIRST), locks.lock(LATER)
    with a, b:
        assert a.locked() and b.locked()
    assert not a.locked() and not b.locked()


def test_nesting_against_the_order_fails_and_takes_nothing():
    a, b = locks.lock(FIRST), locks.lock(LATER)
    with b:
        with pytest.raises(locks.LockOrderError, match='BigFile.cond taken while Stats._lock'):
            a.acquire()
    assert not a.locked()


def test_taking_a_lock_of_the_same_rank_twice_fails():
    a, b = locks.lock('Channel.lock'), locks.lock('Channel.lock')
    with a:
        with pytest.raises(locks.LockOrderError):
            b.acquire()


def test_a_condition_waits_holding_only_its_lock():
    cond = locks.condition(FIRST)
    with cond:
        assert not cond.wait(0.01)      # its own lock released and taken back
    other = locks.lock('Watcher.zhead_lock')
    with other, cond:
        with pytest.raises(locks.LockOrderError, match='waits on BigFile.cond while '
                                                        'Watcher.zhead_lock is held'):
            cond.wait(0.01)


def test_an_event_is_waited_for_holding_no_lock():
    done = locks.event('Loading.done')
    held = locks.lock(FIRST)
    with held:
        with pytest.raises(locks.LockOrderError):
            done.wait(0.01)
        done.set()
        assert done.wait(0.01)          # set already: no wait, nothing to check
    done.clear()
    threading.Timer(0.01, done.set).start()
    assert done.wait(10)


def test_each_thread_has_its_own_held_locks():
    a, b = locks.lock(FIRST), locks.lock(LATER)
    errors = []

    def other():
        try:
            with a:
                pass
        except Exception as e:
            errors.append(e)
    with b:
        t = threading.Thread(target=other)
        t.start()
        t.join(10)
    assert errors == []


def test_unknown_names_are_refused():
    with pytest.raises(KeyError):
        locks.lock('Nobody.lock')
    with pytest.raises(KeyError):
        locks.event('Nobody.done')


@pytest.mark.parametrize('text, knob, value', [
    ('', 'lock-ranks', False),
    ('lock-ranks', 'lock-ranks', True),
    (' lock-ranks , pack-check-interval=0.5 ', 'pack-check-interval', 0.5),
    ('', 'pack-check-interval', 60.0),
])
def test_knobs(text, knob, value):
    assert knobs.parse(text)[knob] == value


@pytest.mark.parametrize('text', ['lock-rank', 'lock-ranks=1', 'pack-check-interval=soon',
                                  'pack-check-interval=0', 'pack-check-interval'])
def test_bad_knobs_are_refused(text):
    with pytest.raises(knobs.KnobError):
        knobs.parse(text)
