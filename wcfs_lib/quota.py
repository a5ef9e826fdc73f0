"""Slots of a bounded resource shared by the users of a mount (SPEC §4.6).

wcfs bounds what all clients together may hold (channels, `@<tid>/`
directories); without a share per user, one user could take every slot and
leave the others EMFILE or ENOSPC. A `Quota` gives one uid at most half of
the slots, so that others are still served while one user is at its bound.
"""

import collections
import threading


class Quota:
    """At most `total` slots in use, at most `total // 2` of them by one uid."""

    def __init__(self, what, total):
        self.what = what            # what a slot is, for messages: 'channels'
        self.total = total
        self.per_uid = total // 2
        self._lock = threading.Lock()   # guards _held, _used
        self._held = collections.Counter()  # uid -> slots it holds
        self._used = 0

    def acquire(self, uid):
        """Take a slot for `uid`; -> None, or why not (for the log)."""
        with self._lock:
            held = self._held[uid]
            if self._used >= self.total:
                return 'all %d %s are in use (uid %d holds %d)' % (self.total, self.what, uid, held)
            if held >= self.per_uid:
                return 'uid %d holds %d %s, its share of %d (%d in use)' % (
                    uid, held, self.what, self.total, self._used)
            self._held[uid] = held + 1
            self._used += 1
            return None

    def used(self):
        """Slots in use now, by every uid."""
        return self._used

    def release(self, uid):
        """Give back a slot `uid` took."""
        with self._lock:
            self._held[uid] -= 1
            if not self._held[uid]:
                del self._held[uid]
            self._used -= 1
