"""Each user's share of a serial database's time (shares.py), without a
mount: the token bucket with times given, then BlockCache holding a user's
loads back by it.

On a ZEO server a load of a 64 MiB record keeps the server's one thread
busy for a tenth of a second or more, for every client; a user whose
threads keep loading such blocks made every request of another user wait
behind one (bench_stall.py: another user's cold read from 0.008 s to
0.31 s). See tests/test_stall.py for the same on a mount."""

import threading
import time

import pytest

from wcfs_lib.files.blockcache import BlockCache
from wcfs_lib.files.shares import NOBODY, Shares

BS = 1 << 20


def _started(*readers, share=0.5, credit=1, active=5, at=0):
    """Shares with these users seen reading at `at`, where the database's
    clock starts."""
    s = Shares(share=share, credit=credit, active=active)
    for uid in readers:
        s.seen(uid, at)
    s.charge(NOBODY, at)
    return s


def test_a_user_alone_has_the_database_to_itself():
    s = _started('a')
    s.charge('a', 100)              # 100 s of loads, nobody else reading
    assert s.rest('a', 100) is None
    assert s.credit('a', 100) == 1


def test_a_user_past_its_share_rests_while_another_reads():
    s = _started('a', 'b')
    s.charge('a', 1)                # 1 s of a's loads: its credit spent, to the last bit
    assert s.rest('a', 1) is None
    s.charge('a', 3)                # 2 s more: 1 s in debt after 1 s of refill (0.5 s/s)
    assert s.credit('a', 3) == pytest.approx(-1)
    assert s.rest('a', 3) == pytest.approx(2)       # debt / share
    assert s.rest('a', 5) is None                   # refilled
    assert s.rest('b', 3) is None                   # b's credit is whole


def test_a_rest_ends_when_the_other_user_stops_reading():
    s = _started('b', share=0.1, credit=0, at=10)
    s.charge('a', 12)               # 2 s in debt: 20 s of rest at 0.1 s/s
    assert s.rest('a', 12) == pytest.approx(3)      # b read last at 10: reading until 15
    assert s.rest('a', 15) is None
    s.seen('b', 16)
    assert s.rest('a', 16) > 0


def test_a_load_is_charged_for_the_time_another_user_read():
    # b's last read at 0 counts until 5: a's load from 0 to 20 costs 5 s
    s = _started('b')
    s.charge('a', 20)
    assert s.credit('a', 20) == pytest.approx(-4)
    assert s.rest('a', 20) is None                  # nobody else reads now
    s.seen('b', 21)
    assert s.rest('a', 21) == pytest.approx(5)      # b's window; the debt would take 7


def test_only_the_load_the_database_serves_is_charged():
    # the database serves the loads in the order asked: time a user's load
    # waits behind another user's costs the one served, not the one waiting
    s = _started('a', 'b')
    s.charge('a', 3)                # a's 64 MiB load, with b's load waiting behind it
    s.charge('b', 3.01)             # then b's own
    assert s.credit('b', 3.01) == pytest.approx(0.99)     # its own 0.01 s only
    assert s.rest('a', 3.01) is not None and s.rest('b', 3.01) is None


def test_credit_fills_at_the_share_up_to_its_bound():
    s = _started('b', share=0.25, active=100)
    s.charge('a', 3)
    assert s.credit('a', 3) == pytest.approx(-2)
    assert s.credit('a', 7) == pytest.approx(-1)
    assert s.credit('a', 100) == 1


def test_trim_forgets_users_that_stopped_reading():
    s = _started('a', 'b')
    s.charge('a', 2)
    s.trim(3, busy=())
    assert s.credit('a', 3) < 0                     # in debt: kept
    s.trim(60, busy=())
    assert not s._seen and not s._credit


def _get(cache, key, uid, load):
    return cache.get(key, 1, BS, lambda: key, lambda cid: (load(), (0, 1), ()), uid)


def _slow(seconds, log, name):
    """A load that keeps the database busy for `seconds` (the time is what
    is charged, not a synchronisation)."""
    def load():
        log.append((name, 'start', time.monotonic()))
        time.sleep(seconds)
        log.append((name, 'end', time.monotonic()))
        return name
    return load


def test_blockcache_holds_back_a_user_past_its_share_while_another_reads():
    cache = BlockCache(shares=Shares(share=0.1, credit=0, active=60))
    log = []
    assert _get(cache, ('b', 0), 'b', _slow(0, log, 'b0')) == 'b0'     # b reads
    assert _get(cache, ('a', 0), 'a', _slow(0.3, log, 'a0')) == 'a0'   # a: 0.3 s in debt
    got = []
    a1 = threading.Thread(target=lambda: got.append(_get(cache, ('a', 1), 'a',
                                                         _slow(0, log, 'a1'))))
    a1.start()
    # b is not held back by a's rest, nor by its own share
    assert _get(cache, ('b', 1), 'b', _slow(0, log, 'b1')) == 'b1'
    a1.join(30)
    assert got == ['a1']
    when = {(name, what): t for name, what, t in log}
    assert when['b1', 'start'] < when['a1', 'start']
    # a's next load started its rest (0.3 s of debt at 0.1 s/s) after a0's end
    assert when['a1', 'start'] - when['a0', 'end'] >= 2.5
    assert cache.rested == 1


def test_blockcache_lets_a_user_alone_load_without_rest():
    cache = BlockCache(shares=Shares(share=0.5, credit=0, active=60))
    log = []
    assert _get(cache, ('a', 0), 'a', _slow(0.3, log, 'a0')) == 'a0'
    assert _get(cache, ('a', 1), 'a', _slow(0, log, 'a1')) == 'a1'
    assert cache.rested == 0


def test_blockcache_charges_the_oldest_load_in_flight():
    # b's load asked while a's is in flight waits behind it at the database:
    # a is charged for that time, b only for its own
    shares = Shares(share=0.1, credit=0.1, active=60)
    cache = BlockCache(shares=shares)
    release = threading.Event()
    started = {'a': threading.Event(), 'b': threading.Event()}

    def held(uid):
        def load():
            started[uid].set()
            release.wait(30)
            return uid
        return load

    _get(cache, ('b', 0), 'b', lambda: 'b0')
    a0 = threading.Thread(target=_get, args=(cache, ('a', 0), 'a', held('a')))
    a0.start()
    assert started['a'].wait(30)
    b1 = threading.Thread(target=_get, args=(cache, ('b', 1), 'b', held('b')))
    b1.start()
    assert started['b'].wait(30)
    time.sleep(0.5)                 # the database's time on a's load, b's waiting behind
    release.set()
    a0.join(30)
    b1.join(30)
    now = time.monotonic()
    assert shares.credit('a', now) < 0
    assert shares.credit('b', now) > 0
