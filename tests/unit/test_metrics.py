"""service/metrics.py: `.wcfs/metrics` as Prometheus' parser reads it.

Every output is parsed with prometheus_client's own parser of the text
format (version 0.0.4) and checked line by line besides: a scraper that
rejects one line drops the whole file."""

import math
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from wcfs_lib.service import metrics
from wcfs_lib.service.stats import COUNTERS, Stats
from wcfs_lib.zodb.zstorage import FOLLOWING_MODES

DB = metrics.DatabaseState(reachable=True, unreachable_for=0, zhead_time=1764900000.25,
                           last_time=1764900002.75, queued=3, pool_waits=4, pool_waited=0.5,
                           following='polling', modes=('told', 'polling'))

# a sample line: name, labels, value (0.0.4, no timestamps)
SAMPLE = re.compile(r'(wcfs_[a-zA-Z0-9_]+)(\{[a-z_]+="(?:[^"\\\n]|\\[\\"n])*"'
                    r'(?:,[a-z_]+="(?:[^"\\\n]|\\[\\"n])*")*\})? (\S+)\Z')


def parse(text):
    """-> {family name: (type, {(sample name, labels): value})}; asserts
    that every line is a HELP, TYPE or sample line of a wcfs_ metric."""
    assert text.endswith(b'\n')
    for line in text.decode().splitlines():
        if line.startswith('#'):
            assert re.match(r'# (HELP|TYPE) wcfs_[a-zA-Z0-9_]+ \S', line), line
        else:
            assert SAMPLE.match(line), line
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}
        assert fam.name not in out, 'family %s twice' % fam.name
        out[fam.name] = (fam.type, samples)
    return out


def value(families, name, labels=()):
    """The value of sample `name` (a counter's with its _total)."""
    for kind, samples in families.values():
        if (name, labels) in samples:
            return samples[(name, labels)]
    raise AssertionError('no sample %s%s in %s' % (name, labels, sorted(families)))


def stats_of_a_server():
    """A Stats with the values and gauges a Server gives it."""
    s = Stats()
    s.set('subscribed', 2)
    for name, n in [('bigfiles', 5), ('channels', 7), ('revdirs', 1), ('db_requests', 90),
                    ('history_walks', 1), ('history_walked', 30), ('prefetched_unused', 0),
                    ('loads_rested', 0)]:
        s.gauge(name, lambda n=n: n)
    s.add('reads', 11)
    s.add('bytes_read', 3 << 40)    # past 2**32, and exact: bytes count
    s.set('zhead', '03e5c1a2b3c4d5e6')
    return s


def test_stats_are_every_counter_and_gauge_with_its_type():
    families = parse(metrics.render(stats_of_a_server().values(), DB))
    types = {name: kind for name, (kind, _) in families.items()}
    for name in COUNTERS + ('db_requests', 'history_walks', 'history_walked',
                            'prefetched_unused', 'loads_rested'):
        assert types['wcfs_' + name] == 'counter', name
    for name in ('bigfiles', 'channels', 'revdirs', 'subscribed', 'uptime_seconds'):
        assert types['wcfs_' + name] == 'gauge', name
    assert value(families, 'wcfs_reads_total') == 11
    assert value(families, 'wcfs_bytes_read_total') == 3 << 40
    assert value(families, 'wcfs_subscribed') == 2
    assert value(families, 'wcfs_bigfiles') == 5
    assert value(families, 'wcfs_db_requests_total') == 90
    assert 0 <= value(families, 'wcfs_uptime_seconds') < 60


def test_integers_are_written_exactly():
    text = metrics.render({'bytes_read': (1 << 62) + 1}, DB)
    assert b'\nwcfs_bytes_read_total 4611686018427387905\n' in text


def test_the_database_state():
    families = parse(metrics.render({}, DB))
    assert {name: kind for name, (kind, _) in families.items()} == {
        'wcfs_database_reachable': 'gauge',
        'wcfs_database_unreachable_seconds': 'gauge',
        'wcfs_zhead_timestamp_seconds': 'gauge',
        'wcfs_database_last_transaction_timestamp_seconds': 'gauge',
        'wcfs_zhead_lag_seconds': 'gauge',
        'wcfs_zhead_lag_transactions': 'gauge',
        'wcfs_db_pool_waits': 'counter',
        'wcfs_db_pool_wait_seconds': 'counter',
        'wcfs_following': 'gauge',
    }
    assert value(families, 'wcfs_database_reachable') == 1
    assert value(families, 'wcfs_database_unreachable_seconds') == 0
    assert value(families, 'wcfs_zhead_timestamp_seconds') == 1764900000.25
    assert value(families, 'wcfs_database_last_transaction_timestamp_seconds') == 1764900002.75
    assert value(families, 'wcfs_zhead_lag_seconds') == 2.5
    assert value(families, 'wcfs_zhead_lag_transactions') == 3
    assert value(families, 'wcfs_db_pool_waits_total') == 4
    assert value(families, 'wcfs_db_pool_wait_seconds_total') == 0.5
    assert value(families, 'wcfs_following', (('mode', 'polling'),)) == 1
    assert value(families, 'wcfs_following', (('mode', 'told'),)) == 0


def test_unreachable_says_since_when():
    families = parse(metrics.render({}, DB._replace(reachable=False, unreachable_for=42.5)))
    assert value(families, 'wcfs_database_reachable') == 0
    assert value(families, 'wcfs_database_unreachable_seconds') == 42.5


def test_lag_is_never_negative():
    """zhead may be past what the poller last heard (a resync asks the
    server itself): then wcfs is not behind."""
    families = parse(metrics.render({}, DB._replace(last_time=DB.zhead_time - 5)))
    assert value(families, 'wcfs_zhead_lag_seconds') == 0
    assert value(families, 'wcfs_database_last_transaction_timestamp_seconds') == DB.zhead_time


def test_every_following_mode_of_the_database_layer_is_shown():
    for mode in FOLLOWING_MODES:
        families = parse(metrics.render({}, DB._replace(following=mode,
                                                        modes=FOLLOWING_MODES)))
        got = {dict(labels)['mode']: v for (_, labels), v in families['wcfs_following'][1].items()}
        assert got == {m: int(m == mode) for m in FOLLOWING_MODES}


def test_a_mode_the_formatter_was_not_told_of_is_shown_too():
    families = parse(metrics.render({}, DB._replace(following='notify')))
    got = {dict(labels)['mode']: v for (_, labels), v in families['wcfs_following'][1].items()}
    assert got == {'told': 0, 'polling': 0, 'notify': 1}


def test_a_mode_label_is_escaped():
    odd = 'a"b\\c\nd'
    text = metrics.render({}, DB._replace(following=odd))
    assert b'wcfs_following{mode="a\\"b\\\\c\\nd"} 1\n' in text
    families = parse(text)
    assert value(families, 'wcfs_following', (('mode', odd),)) == 1


def test_a_stat_the_table_does_not_know_is_untyped_under_its_name():
    families = parse(metrics.render({'new_counter': 5}, DB))
    kind, samples = families['wcfs_new_counter']
    assert kind == 'unknown'        # `untyped` in the text, as the parser calls it
    assert samples == {('wcfs_new_counter', ()): 5}


@pytest.mark.parametrize('stats', [
    {'zhead': '03e5c1a2b3c4d5e6', 'database': 'connected'},     # not numbers: DatabaseState says
    {'bad name': 1, 'a-b': 2, 'x\n': 3},                        # no valid metric name
    {'none': None, 'text': '12'},
])
def test_what_is_no_number_or_no_name_is_left_out(stats):
    families = parse(metrics.render(stats, DB))
    assert not [name for name in families if name.replace('wcfs_', '', 1) in stats]
    assert len(families) == 9       # the database's state only


@pytest.mark.parametrize('v, text', [
    (0, '0'), (7, '7'), (True, '1'), (0.5, '0.5'), (1e-07, '1e-07'), (1764900000.25, '1764900000.25'),
    (math.inf, '+Inf'), (-math.inf, '-Inf'), (math.nan, 'NaN')])
def test_values_as_the_format_spells_them(v, text):
    assert metrics.format_value(v) == text
    parsed = list(text_string_to_metric_families('# TYPE x gauge\nx %s\n' % text))[0].samples[0]
    assert parsed.value == v or (math.isnan(v) and math.isnan(parsed.value))


def test_help_text_is_escaped():
    assert metrics.family('wcfs_x', 'gauge', 'one\\two\nthree', [({}, 1)]) == [
        '# HELP wcfs_x one\\\\two\\nthree', '# TYPE wcfs_x gauge', 'wcfs_x 1']
