"""The share rule of wcfs_lib/service/quota.py (SPEC §4.6), without a mount: no group
of up to four uids can deny a fifth, in any order of takes and releases; one
uid alone still holds at least 1000 channels and 1000 `@<tid>/` directories;
a uid over a fifth gets another only while a fifth stays free."""

import itertools

import pytest

from wcfs_lib.files.bigfile import MAX_REVDIRS
from wcfs_lib.service.quota import Quota
from wcfs_lib.service.server import MAX_CHANNELS


def take_all(q, uid):
    """Acquire for `uid` until refused; -> how many it got."""
    n = 0
    while q.acquire(uid) is None:
        n += 1
    return n


@pytest.mark.parametrize('total', [MAX_CHANNELS, MAX_REVDIRS])
def test_one_uid_alone_holds_four_fifths_and_at_least_1000(total):
    q = Quota('slots', total)
    assert take_all(q, 7) == total - total // 5 >= 1000


@pytest.mark.parametrize('total', [MAX_CHANNELS, MAX_REVDIRS])
def test_four_uids_taking_all_they_can_in_turn_leave_a_fifth_served(total):
    for order in itertools.permutations(range(4)):
        q = Quota('slots', total)
        for uid in order:
            take_all(q, uid)
        assert q.acquire(99) is None, order
        for uid in order:   # nobody of the four gets more, not even after the fifth took one
            assert q.acquire(uid) is not None


def test_uid_over_a_fifth_gets_another_only_while_a_fifth_stays_free():
    q = Quota('slots', 100)
    for held in range(21, 100):
        for used in range(held, 101):
            allowed = q.refusal(held, used) is None
            assert allowed == (100 - used - 1 >= 20), (held, used)


def test_refusal_names_uid_and_numbers():
    q = Quota('channels', 100)
    take_all(q, 5)
    why = q.acquire(5)
    assert why.startswith('uid 5 holds 80: 20 of 100 channels are free'), why


def reachable(total, uids):
    """Every state (sorted holdings of `uids` uids) reachable by takes the
    rule allows and releases, in any order."""
    q = Quota('slots', total)
    start = (0,) * uids
    seen, todo = {start}, [start]
    while todo:
        state = todo.pop()
        used = sum(state)
        for i, held in enumerate(state):
            nexts = []
            if q.refusal(held, used) is None:
                nexts.append(held + 1)
            if held:
                nexts.append(held - 1)
            for h in nexts:
                n = tuple(sorted(state[:i] + (h,) + state[i + 1:]))
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
    return seen


def test_no_group_of_four_uids_can_deny_a_fifth_in_any_order():
    total = 80      # the smallest total the rule is made for; every state, exhaustively
    q = Quota('slots', total)
    states = reachable(total, 4)
    assert max(max(s) for s in states) == total - total // 5
    for s in states:
        assert q.refusal(0, sum(s)) is None, s
