"""The invalidation protocol without I/O (SPEC §4.1, §4.2, §4.5): request
lines in, requests or errors out; `have` lines; one channel's state machine;
δR as merged byte ranges over (A, B]. Table-driven."""

import pytest

from wcfs_lib.follow.delta import DeltaHistory
from wcfs_lib.ranges import blocks_to_ranges, merge_ranges
from wcfs_lib.protocol import (MAX_LINE, ChannelState, LineBuffer, ProtocolError, format_error,
                               format_have, parse_request)

TID = '0285cbac258bf266'
E = ProtocolError   # in the tables: "an error here"


def feed_all(writes):
    """Feed writes to one LineBuffer; -> items, errors as E."""
    lb = LineBuffer()
    out = []
    for data in writes:
        out += [E if isinstance(item, ProtocolError) else item for item in lb.feed(data)]
    return out


# ---- LineBuffer: bytes written -> lines ----

@pytest.mark.parametrize('writes, items', [
    ([b''], []),
    ([b'ack'], []),                                     # no newline yet
    ([b'ack\n'], [b'ack']),
    ([b'ack\nwant 1\n'], [b'ack', b'want 1']),
    ([b'a', b'c', b'k', b'\n'], [b'ack']),              # split over writes
    ([b'want ' + TID[:5].encode(), TID[5:].encode(), b'\n'], [b'want ' + TID.encode()]),
    ([b'ack\r\n'], [b'ack']),                           # \r before \n ignored
    ([b'ack\r', b'\n'], [b'ack']),                      # ... also split between them
    ([b'ack\r\r\n'], [b'ack\r']),                       # only one \r is dropped
    ([b'\n'], [b'']),                                   # empty line
    ([b'\r\n'], [b'']),
    ([b'\n\n'], [b'', b'']),
    ([b'x' * MAX_LINE + b'\n'], [b'x' * MAX_LINE]),     # exactly the bound: a line
    ([b'x' * (MAX_LINE + 1) + b'\n'], [E]),
    ([b'x' * 1000 + b'\nack\n'], [E, b'ack']),          # usable again after the error
    ([b'x' * 200, b'x' * 200, b'\n', b'ack\n'], [E, b'ack']),
    ([b'x' * 100000] * 50 + [b'\nack\n'], [E, b'ack']),  # megabytes: one error
    ([b'\x00\xff\xfe\x80garbage\n'], [b'\x00\xff\xfe\x80garbage']),
    ([b'\xff' * 300 + b'\n'], [E]),
])
def test_linebuffer_cuts_lines(writes, items):
    assert feed_all(writes) == items


def test_linebuffer_holds_at_most_a_line_without_newline():
    lb = LineBuffer()
    for _ in range(1000):
        assert lb.feed(b'y' * 10000) == []
    assert len(lb._buf) <= MAX_LINE


# ---- parse_request: a line -> a request ----

@pytest.mark.parametrize('line, parsed', [
    (b'ack', ('ack', None)),
    (b'want ' + TID.encode(), ('want', int(TID, 16))),
    (b'want 0000000000000000', ('want', 0)),
    (b'want ffffffffffffffff', ('want', 2**64 - 1)),
])
def test_parse_request_valid(line, parsed):
    assert parse_request(line) == parsed


@pytest.mark.parametrize('line', [
    b'',                                    # empty line
    b'hello',                               # unknown verb
    b'WANT ' + TID.encode(),                # verbs are lower case
    b'ACK',
    b'have ' + TID.encode(),                # a reply is no request
    b'want',                                # no tid
    b'want ',
    b'want ' + TID.upper().encode(),        # tid in upper case
    b'want 0285CBAC258BF266',
    b'want ' + TID[:15].encode(),           # 15 digits
    b'want ' + TID.encode() + b'0',         # 17 digits
    b'want 0x85cbac258bf266',
    b'want 0285cbac258bf26g',
    b'want ' + TID.encode() + b' extra',    # extra words
    b'want  ' + TID.encode(),               # two spaces
    b'want ' + TID.encode() + b' ',         # trailing space
    b' want ' + TID.encode(),               # leading space
    b'want\t' + TID.encode(),
    b'ack extra',
    b'ack ',
    b'\x00\xff\xfegarbage',
])
def test_parse_request_invalid_is_error(line):
    with pytest.raises(ProtocolError):
        parse_request(line)


# ---- replies ----

@pytest.mark.parametrize('args, kw, line', [
    ((0x0285cbac258bf266,), {}, b'have 0285cbac258bf266\n'),
    ((1,), {}, b'have 0000000000000001\n'),
    ((1,), {'wait': True}, b'have 0000000000000001 wait\n'),
    ((1, [(0, 4096)]), {}, b'have 0000000000000001 0-4096\n'),
    ((1, [(0, 4096), (8192, 2 << 20)]), {}, b'have 0000000000000001 0-4096 8192-2097152\n'),
    ((2**64 - 1, [(2**40, 2**40 + 65536)]), {},
     b'have ffffffffffffffff 1099511627776-1099511693312\n'),
])
def test_format_have(args, kw, line):
    assert format_have(*args, **kw) == line


@pytest.mark.parametrize('message', ['unknown request', 'a\nb', 'bad \xff', ProtocolError('x')])
def test_format_error_is_one_ascii_line(message):
    line = format_error(message)
    assert line.startswith(b'error ') and line.endswith(b'\n')
    assert line.count(b'\n') == 1
    line.decode('ascii')


# ---- ChannelState: which request is allowed when ----

def state_after(events):
    """A ChannelState after events: 'want' (read and checked), 'checking' (read,
    its check not done), 'ack', 'wait' (sent), 'have' (sent)."""
    st = ChannelState()
    for ev in events:
        {'want': lambda: (st.want(5), st.checked()), 'checking': lambda: st.want(5),
         'ack': st.ack, 'wait': lambda: st.sent_wait(5), 'have': lambda: st.sent_have(5)}[ev]()
    return st


@pytest.mark.parametrize('events, req, ok', [
    ([], 'want', True),
    ([], 'ack', False),                                         # ack with nothing
    (['want', 'have'], 'want', False),                          # want while unacked
    (['checking'], 'want', False),                              # want while one is checked
    (['checking'], 'ack', False),
    (['want', 'have'], 'ack', True),
    (['want', 'have', 'ack'], 'want', True),                    # want again after ack
    (['want', 'have', 'ack'], 'ack', False),                    # ack twice
    (['want', 'wait'], 'want', False),                          # want while waiting
    (['want', 'wait'], 'ack', False),                           # ack while only waiting
    (['want', 'wait', 'have'], 'ack', True),                    # the have after the wait
    (['want', 'wait', 'have'], 'want', False),
    (['want', 'wait', 'have', 'ack'], 'want', True),
    (['want', 'have', 'ack', 'have'], 'ack', True),             # an update
    (['want', 'have', 'ack', 'have'], 'want', False),
    (['want', 'have', 'ack', 'have', 'ack'], 'ack', False),
])
def test_channel_state_allows(events, req, ok):
    st = state_after(events)
    before = vars(st).copy()
    request = (lambda: st.want(7)) if req == 'want' else st.ack
    if ok:
        request()
    else:
        with pytest.raises(ProtocolError):
            request()
        assert vars(st) == before, 'a request refused changed the state'


def test_channel_state_records_subscription():
    st = ChannelState()
    assert not st.subscribed and st.reported is None and st.waiting is None and not st.unacked
    st.want(5)
    st.sent_wait(5)
    assert not st.subscribed and st.waiting == 5
    st.sent_have(7)
    assert st.subscribed and st.reported == 7 and st.waiting is None and st.unacked
    st.ack()
    assert st.subscribed and st.reported == 7 and not st.unacked
    st.sent_have(9)
    assert st.reported == 9 and st.unacked


# ---- δR: merged ranges ----

@pytest.mark.parametrize('ranges, merged', [
    ([], []),
    ([(0, 10)], [(0, 10)]),
    ([(10, 20), (0, 10)], [(0, 20)]),               # sorted, adjacent merged
    ([(0, 10), (5, 15)], [(0, 15)]),                # overlapping merged
    ([(0, 10), (2, 5)], [(0, 10)]),                 # contained
    ([(0, 10), (20, 30)], [(0, 10), (20, 30)]),     # apart stay apart
    ([(5, 5), (0, 0)], []),                         # empty dropped
    ([(20, 30), (0, 10), (10, 20), (40, 50)], [(0, 30), (40, 50)]),
    ([(0, 10), (0, 10)], [(0, 10)]),
])
def test_merge_ranges(ranges, merged):
    assert merge_ranges(ranges) == merged


@pytest.mark.parametrize('blocks, blksize, ranges', [
    (set(), 4096, []),
    ({0}, 4096, [(0, 4096)]),
    ({3, 1, 2}, 4096, [(4096, 16384)]),
    ({0, 2}, 65536, [(0, 65536), (131072, 196608)]),
    ({5, 7, 6, 9}, 8192, [(40960, 65536), (73728, 81920)]),
])
def test_blocks_to_ranges(blocks, blksize, ranges):
    assert blocks_to_ranges(blocks, blksize) == ranges


def history():
    """since 100; tid 101: block 0; 102: nothing; 103: blocks 2-3; 105: block 1."""
    h = DeltaHistory(100)
    h.append(101, [(0, 10)])
    h.append(102, [])
    h.append(103, [(20, 40)])
    h.append(105, [(10, 20)])
    return h


@pytest.mark.parametrize('a, b, ranges', [
    (100, 100, []),
    (100, 101, [(0, 10)]),          # (a, b]: b counts
    (101, 101, []),                 # a does not
    (101, 102, []),
    (101, 103, [(20, 40)]),
    (102, 104, [(20, 40)]),
    (103, 104, []),
    (104, 105, [(10, 20)]),
    (100, 105, [(0, 40)]),          # merged over transactions
    (101, 105, [(10, 40)]),
    (105, 200, []),
])
def test_delta_history_ranges_over_a_b(a, b, ranges):
    assert history().ranges(a, b) == ranges


def test_delta_history_forgets_oldest_and_moves_since():
    h = DeltaHistory(100, max_steps=2)
    assert h.covers(100) and not h.covers(99)
    h.append(101, [(0, 10)])
    h.append(102, [(10, 20)])
    assert h.covers(100)
    h.append(103, [(20, 30)])
    assert not h.covers(100) and h.covers(101)
    assert h.ranges(101, 103) == [(10, 30)]


def test_delta_history_covers_no_tid_inside_a_folded_step():
    """A step that folds (110, 120] is their net δ: a file grown in 115 and
    shrunk back in 120 has none, yet δR(115, 120) is not empty. A tid
    strictly inside is not covered (δR from there comes from the
    database); its ends are, and so is everything around it."""
    h = DeltaHistory(100)
    h.append(110, [(0, 10)])
    h.append(120, [], since=110)            # no net δ: still a fold
    h.append(130, [(10, 20)], since=125)
    assert [t for t in (100, 105, 110, 111, 115, 119, 120, 121, 125, 126, 129, 130, 140)
            if h.covers(t)] == [100, 105, 110, 120, 121, 125, 130, 140]
    assert h.ranges(110, 130) == [(10, 20)]


def test_delta_history_forgets_folds_with_their_steps():
    h = DeltaHistory(100, max_steps=2)
    h.append(110, [(0, 10)], since=105)
    assert not h.covers(107)
    h.append(120, [(0, 10)])
    h.append(130, [(0, 10)])                # 110 forgotten: since is 110
    assert not h.covers(107) and h.covers(110)
    for tid in range(140, 200, 10):         # empty folds count against the bound too
        h.append(tid, [], since=tid - 5)
    assert h.since >= 170 and not h.covers(h.since - 1) and not h.covers(187)
    assert h.covers(190) and h.covers(200)
