"""Counters shown in `.wcfs/stats`, one `name: value` a line."""

import time

from .. import locks

COUNTERS = ('reads', 'bytes_read', 'blocks_loaded', 'blocks_prefetched', 'invalidations_sent',
            'clients_killed')


class Stats:
    def __init__(self):
        self._lock = locks.lock('Stats._lock')   # guards _values
        self._values = dict.fromkeys(COUNTERS, 0)
        self._values['zhead'] = '0000000000000000'
        self._values['database'] = 'connected'
        self._gauges = {}               # name -> callable giving the live value
        self._start = time.monotonic()

    def add(self, name, n=1):
        with self._lock:
            self._values[name] += n

    def set(self, name, value):
        with self._lock:
            self._values[name] = value

    def get(self, name):
        with self._lock:
            return self._values[name]

    def gauge(self, name, fn):
        """Show `fn()` as `name`, computed each time stats are read."""
        self._gauges[name] = fn

    def values(self):
        """-> {name: value} as of now, the live gauges and uptime included:
        what .wcfs/stats and .wcfs/metrics show. Uptime is in whole seconds,
        so that the files' size stays their length from a stat to the read
        that follows, within a second."""
        with self._lock:
            values = dict(self._values)
        for name, fn in self._gauges.items():
            values[name] = fn()
        values['uptime'] = round(time.monotonic() - self._start)
        return values

    def render(self):
        return ''.join('%s: %s\n' % kv for kv in self.values().items()).encode()
