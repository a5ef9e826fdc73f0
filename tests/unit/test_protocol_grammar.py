"""One grammar for both sides (protocol.py): every line either side writes
parses back to what was written, and the client and the tests' helpers read
wcfs's lines with the same parser."""

import pytest

from wcfs_lib import protocol
from wcfs_lib.ranges import clip, merge_ranges, subtract

T = 0x03f2c6e4b5a1d000


@pytest.mark.parametrize('line, parsed', [
    (protocol.format_want(T), ('want', T)),
    (protocol.format_want(0), ('want', 0)),
    (protocol.format_ack(), ('ack', None)),
])
def test_requests_round_trip(line, parsed):
    assert line.endswith(b'\n') and line.count(b'\n') == 1
    assert protocol.parse_request(line[:-1]) == parsed


@pytest.mark.parametrize('line, reply', [
    (protocol.format_have(T), ('have', T, [])),
    (protocol.format_have(T, [(0, 4096)]), ('have', T, [(0, 4096)])),
    (protocol.format_have(T, [(0, 4096), (8192, 1 << 40)]), ('have', T, [(0, 4096), (8192, 1 << 40)])),
    (protocol.format_have(T, wait=True), ('wait', T, None)),
    (protocol.format_error('want: invalid tid'), ('error', 'want: invalid tid', None)),
    (protocol.format_error('two\nlines'), ('error', 'two lines', None)),
])
def test_replies_round_trip(line, reply):
    assert line.endswith(b'\n') and line.count(b'\n') == 1
    assert protocol.parse_reply(line[:-1]) == reply


@pytest.mark.parametrize('line', [
    b'', b'have', b'hav 03f2c6e4b5a1d000', b'have 3f2c6e4b5a1d000', b'have 03F2C6E4B5A1D000',
    b'have 03f2c6e4b5a1d000 5-3', b'have 03f2c6e4b5a1d000 0-0', b'have 03f2c6e4b5a1d000 a-b',
    b'have 03f2c6e4b5a1d000 -1-5', b'have 03f2c6e4b5a1d000 4096', b'have 03f2c6e4b5a1d000 wait 0-1',
    b'want 03f2c6e4b5a1d000',
])
def test_malformed_replies_are_refused(line):
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_reply(line)


def test_range_arithmetic_of_both_sides():
    assert merge_ranges([(8, 12), (0, 4), (4, 6), (20, 20)]) == [(0, 6), (8, 12)]
    assert clip([(0, 10), (20, 30)], 5, 25) == [(5, 10), (20, 25)]
    assert subtract([(0, 30)], [(5, 10), (20, 25)]) == [(0, 5), (10, 20), (25, 30)]
    assert subtract([(0, 10)], [(0, 10)]) == []
