"""Each user's share of the time of a database that serves one request at
a time (ZEO).

A ZEO server runs every request of every client on one thread: a load of a
64 MiB record took 0.2 s of its CPU on a busy 2-core machine (it reads the
record and encodes the reply whole, copying it several times), and every
other request, of any client, waits until it is done (another process's
pings: p90 0.2 to 0.7 s meanwhile). A user reading 64 MiB blocks with many
threads keeps it busy all the time (one load of each uid in flight is
enough), so another user's first request lands behind one: bench_stall.py
saw another user's cold read go from 0.008 s to 0.31 s. A second ZEO
connection for the loads of blocks, tried, changed nothing measurable: the
server's one thread is the queue. Taking turns does not help either, since
a load cannot be interrupted once the server runs it; what helps is that
the server be free most of the time when another user asks.

So each uid has a credit of database time, a token bucket: it fills at
`share` seconds per second up to `credit` seconds, and the time the
database serves a load of the uid is taken from it, but only while another
uid reads: alone, a user has the database to itself. The database serves
the loads in the order they were asked (wcfs's one connection), so the
oldest load in flight is the one it serves: the time a load waits behind
another user's costs its own uid nothing. A uid whose credit is spent
starts no load while another uid has read in the last `active` seconds.
So a user that keeps loading has the database at most a third of the time
once another user reads, the other user's request finds the server free
two times in three, and a user that loads now and then never waits.

Pure logic, under BlockCache.lock: times are given by the caller.
"""

SHARE = 1 / 3       # of a serial database's time one uid may take while others read
CREDIT = 0.5        # seconds of database time a uid may take at once beyond its share
ACTIVE = 5.0        # seconds after a uid's last read during which it counts as reading
NOBODY = object()   # charge(): the database serves no load


class Shares:
    def __init__(self, share=SHARE, credit=CREDIT, active=ACTIVE):
        self.share = share
        self.credit_max = credit
        self.active = active
        self._credit = {}       # uid -> (seconds of credit, as of when)
        self._seen = {}         # uid -> when it last read
        self._at = None         # time charged up to

    def seen(self, uid, now):
        """`uid` reads (a block request: a hit too)."""
        self._seen[uid] = now

    def charge(self, uid, now):
        """Charge the time since the last call to `uid`, the uid whose load
        the database served meanwhile (NOBODY: none), as much of it as
        another uid was reading."""
        if self._at is not None and uid is not NOBODY:
            last = self._last_other(uid)
            used = 0 if last is None else min(now, last + self.active) - self._at
            if used > 0:
                self._credit[uid] = (self.credit(uid, now) - used, now)
        self._at = now

    def credit(self, uid, now):
        value, at = self._credit.get(uid, (self.credit_max, now))
        return min(self.credit_max, value + self.share * (now - at))

    def rest(self, uid, now):
        """-> seconds before `uid` may start a load, or None: now."""
        credit = self.credit(uid, now)
        if credit >= 0:
            return None
        last = self._last_other(uid)
        if last is None or now - last >= self.active:
            return None
        return min(-credit / self.share, last + self.active - now)

    def _last_other(self, uid):
        """When another uid last read, or None."""
        last = None
        for other, seen in self._seen.items():
            if other != uid and (last is None or seen > last):
                last = seen
        return last

    def trim(self, now, busy):
        """Forget the uids that stopped reading and whose credit is full
        (`busy`: those with a load in flight, kept)."""
        for uid, seen in list(self._seen.items()):
            if now - seen >= self.active:
                del self._seen[uid]
        for uid in list(self._credit):
            if uid not in busy and self.credit(uid, now) >= self.credit_max:
                del self._credit[uid]
