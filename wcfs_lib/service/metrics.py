"""`.wcfs/metrics`: what `.wcfs/stats` counts and the state of the database,
in Prometheus' text exposition format (version 0.0.4), for node_exporter's
textfile collector or any scraper.

Pure: `render(stats, db)` turns values into bytes; no I/O, no clock, no lock.
Names are `wcfs_` and the name in `.wcfs/stats`; counters end in `_total`;
times are seconds. A number of `.wcfs/stats` that STATS does not know yet is
shown `untyped` under its own name rather than hidden; `zhead` and
`database`, which are no numbers there, are shown as what they mean (a time,
0 or 1) from DatabaseState.
"""

import collections
import math
import re

# name in .wcfs/stats -> (metric, type, help)
STATS = {
    'bigfiles': ('wcfs_bigfiles', 'gauge', 'ZBigFiles made visible under bigfile/'),
    'revdirs': ('wcfs_revdirs', 'gauge', '@<tid>/ directories that exist'),
    'channels': ('wcfs_channels', 'gauge', 'open head/invalidations files'),
    'subscribed': ('wcfs_subscribed', 'gauge', 'channels subscribed'),
    'reads': ('wcfs_reads_total', 'counter', 'reads of data files served'),
    'bytes_read': ('wcfs_bytes_read_total', 'counter', 'bytes served by reads of data files'),
    'blocks_loaded': ('wcfs_blocks_loaded_total', 'counter',
                      'blocks loaded from the database, whoever asked'),
    'blocks_prefetched': ('wcfs_blocks_prefetched_total', 'counter',
                          'blocks loaded ahead of a sequential reader'),
    'prefetched_unused': ('wcfs_prefetched_unused_total', 'counter',
                          'prefetched blocks dropped before any read asked for them'),
    'loads_rested': ('wcfs_loads_rested_total', 'counter',
                     "loads that waited for their user's share of a ZEO server's time"),
    'invalidations_sent': ('wcfs_invalidations_sent_total', 'counter',
                           'have messages sent on channels'),
    'clients_killed': ('wcfs_clients_killed_total', 'counter',
                       'clients killed for holding up an update'),
    'db_requests': ('wcfs_db_requests_total', 'counter',
                    'loads and last-transaction queries asked of the storage'),
    'history_walks': ('wcfs_history_walks_total', 'counter',
                      "walks of the database's history"),
    'history_walked': ('wcfs_history_walked_total', 'counter',
                       'transactions the history walks listed'),
    'uptime': ('wcfs_uptime_seconds', 'gauge', 'seconds since wcfs started'),
}

NAME = re.compile(r'[a-zA-Z_:][a-zA-Z0-9_:]*\Z')


class DatabaseState(collections.namedtuple('DatabaseState', [
        'reachable',            # bool: .wcfs/stats database is `connected`
        'unreachable_for',      # seconds since it became unreachable; 0 while reachable
        'zhead_time',           # time of zhead (.wcfs/stats zhead), seconds since the epoch
        'last_time',            # time of the database's last transaction as wcfs heard of it
        'queued',               # commits told and not taken up by the watcher yet
        'pool_waits',           # waits for a pooled database connection so far
        'pool_waited',          # seconds they took, in all
        'following',            # how commits reach wcfs now: one of `modes`
        'modes'])):             # every way the database layer knows
    """What .wcfs/metrics shows of the database, gathered without asking it."""


def render(stats, db):
    """-> the text of .wcfs/metrics: `stats` as Stats.values() gives them,
    `db` a DatabaseState."""
    out = []
    for name, value in stats.items():
        metric, kind, text = STATS.get(name, ('wcfs_' + name, 'untyped',
                                              '%s of .wcfs/stats' % name))
        if _is_number(value) and NAME.match(metric):
            out += family(metric, kind, text, [({}, value)])
    out += _database(db)
    return ''.join(line + '\n' for line in out).encode()


def _database(db):
    lag = max(0.0, db.last_time - db.zhead_time)
    modes = list(db.modes) + ([db.following] if db.following not in db.modes else [])
    return (
        family('wcfs_database_reachable', 'gauge',
               '1 while the database answers, 0 once a request or the follower gave up on it',
               [({}, int(db.reachable))]) +
        family('wcfs_database_unreachable_seconds', 'gauge',
               'seconds since the database became unreachable; 0 while it is reachable',
               [({}, 0 if db.reachable else db.unreachable_for)]) +
        family('wcfs_zhead_timestamp_seconds', 'gauge',
               'time of zhead, the last transaction wcfs knows of',
               [({}, db.zhead_time)]) +
        family('wcfs_database_last_transaction_timestamp_seconds', 'gauge',
               "time of the database's last transaction, as wcfs last heard of it",
               [({}, max(db.last_time, db.zhead_time))]) +
        family('wcfs_zhead_lag_seconds', 'gauge',
               "time of the database's last transaction minus that of zhead",
               [({}, lag)]) +
        family('wcfs_zhead_lag_transactions', 'gauge',
               'commits the database told of that wcfs has not taken up yet',
               [({}, db.queued)]) +
        family('wcfs_db_pool_waits_total', 'counter',
               'requests that waited for a pooled database connection (0 without a pool)',
               [({}, db.pool_waits)]) +
        family('wcfs_db_pool_wait_seconds_total', 'counter',
               'seconds requests waited for a pooled database connection',
               [({}, db.pool_waited)]) +
        family('wcfs_following', 'gauge',
               'how commits reach wcfs: 1 for the mode in use',
               [({'mode': mode}, int(mode == db.following)) for mode in modes]))


def family(name, kind, text, samples):
    """The lines of one metric: HELP, TYPE, and a sample per (labels, value)."""
    lines = ['# HELP %s %s' % (name, _escape(text, '\\\n')), '# TYPE %s %s' % (name, kind)]
    for labels, value in samples:
        lines.append('%s%s %s' % (name, _labels(labels), format_value(value)))
    return lines


def _labels(labels):
    if not labels:
        return ''
    return '{%s}' % ','.join('%s="%s"' % (k, _escape(str(v), '\\\n"'))
                             for k, v in sorted(labels.items()))


_ESCAPES = {'\\': '\\\\', '\n': '\\n', '"': '\\"'}


def _escape(text, chars):
    return ''.join(_ESCAPES[c] if c in chars else c for c in text)


def _is_number(value):
    return isinstance(value, (int, float))


def format_value(value):
    """A sample's value as the format spells it: integers exactly, floats
    as Python's shortest repr, and the special ones as Prometheus does."""
    if isinstance(value, bool) or isinstance(value, int):
        return '%d' % value
    if math.isnan(value):
        return 'NaN'
    if math.isinf(value):
        return '+Inf' if value > 0 else '-Inf'
    return repr(float(value))
