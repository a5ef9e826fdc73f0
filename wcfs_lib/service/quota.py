"""Slots of a bounded resource shared by the users of a mount (SPEC §4.6).

wcfs bounds what all clients together may hold (channels, `@<tid>/`
directories); without a share per user, a few users could take every slot
and leave the others EMFILE or ENOSPC. SPEC §4.6: no group of up to four
uids may deny a fifth. A `Quota` lets a uid take a slot only while, after
it, at least as many slots stay free as the uid holds, or a fifth of them
once it holds more than a fifth:

    free after >= min(held after, total // 5)

One uid alone stops with a fifth free (it may hold four fifths); a uid over
a fifth gets another only while a fifth stays free (the SPEC's words); a uid
below a fifth takes at most half of what is free, so that each newcomer
leaves something for the next: after any four uids took, released and took
again all they could, about total/40 slots stay free (1/5 halved three
times) and a fifth uid still gets one (tests/unit/test_quota.py checks every
order on a small total; total must be at least 80 for this).
"""

import collections

from .. import locks


class Quota:
    """At most `total` slots in use; a uid keeps as many free as it holds,
    up to a fifth of them."""

    def __init__(self, what, total):
        self.what = what            # what a slot is, for messages: 'channels'
        self.total = total
        self.reserve = total // 5   # what a uid over a fifth leaves free
        self._lock = locks.lock('Quota._lock')   # guards _held, _used
        self._held = collections.Counter()  # uid -> slots it holds
        self._used = 0

    def refusal(self, held, used):
        """Why a uid holding `held` slots, `used` of all in use, may not take
        one more; None if it may. Pure: the rule of the module docstring."""
        free = self.total - used
        if free <= 0:
            return 'all %d %s are in use' % (self.total, self.what)
        if free - 1 < min(held + 1, self.reserve):
            return ('%d of %d %s are free; one more would leave fewer free than it '
                    'holds, or than a fifth (%d)' % (free, self.total, self.what, self.reserve))
        return None

    def acquire(self, uid):
        """Take a slot for `uid`; -> None, or why not (for the log)."""
        with self._lock:
            held = self._held[uid]
            why = self.refusal(held, self._used)
            if why is not None:
                return 'uid %d holds %d: %s' % (uid, held, why)
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
