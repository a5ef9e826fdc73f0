"""Updates of a file's subscribed clients: haves, acks, deadlines, kills.

An `Update` is one move of a file's head with subscribed clients (SPEC 4.3).
The set of channels it waits for is fixed when it starts: a channel that
subscribes later never holds it up, so whatever clients do, the update ends
within the kill timeout of its start (SPEC 4.2 step 2, 4.4).

For each channel of its set the update sends `have <target> δR(Sprev,
target)` (once the channel acked what it was sent before), then waits until
every one of them acked, closed or was dropped. A channel whose `want` wcfs
is checking (database I/O) gets nothing until that want is answered or
refused, so that the client can tell an update from the answer; it is
waited for, past the deadline too (the check gives up within the database
timeout). At the deadline each other channel
still holding it up is dealt with by `KillPolicy`: its process is killed
when it is sure to be the one that made the subscription and still holds the
channel, and the channel is dropped in every case.

Locks: the file's `cond` (BigFile) guards channel states and the update;
δR from the database, /proc reads and kills happen with it released.
"""

import logging
import os
import signal
import time

from .. import procfs
from ..ranges import merge_ranges

log = logging.getLogger('wcfs.subscription')


class Update:
    """One move of a file's head to `target`, waiting for `waitset`."""

    def __init__(self, target, waitset, kill_timeout):
        self.target = target
        self.waitset = set(waitset)
        self.started = time.monotonic()
        self.deadline = self.started + kill_timeout
        self.ranges = {}        # channel -> δR(its Sprev, target), computed at start
        self.since_cat = {}     # (channel, Cat) -> δR(Cat, target) for a waiting want
        self.sent = set()       # channels that were sent this update's have

    def pending(self):
        """Channels that still hold the update up. cond held. One whose
        `want` is being checked is not late, whatever the deadline says: the
        check is wcfs's own work (bounded by the database timeout)."""
        return [ch for ch in self.waitset
                if not ch.dropped and not ch.closed and (ch not in self.sent or ch.state.unacked)]

    def answers_needed(self):
        """(channel, Cat) of the set whose waiting `want <Cat>` this update's
        have will answer (SPEC 4.2: a have at or after Cat is the answer),
        and whose δR(Cat, target) is not known yet. cond held."""
        tid = self.target.at
        return [(ch, ch.state.waiting) for ch in self.waitset
                if ch not in self.sent and ch.state.waiting is not None
                and ch.state.waiting <= tid and (ch, ch.state.waiting) not in self.since_cat]

    def send_ready(self, send_have):
        """Send the have to every channel of the set that acked its previous
        one. cond held; send_have(ch, tid, ranges, update) sends one.

        A have that answers a waiting `want <Cat>` is sent while head/data
        still shows Sprev: its ranges are δR(Cat, target) and δR(Sprev,
        target), all that the client must take from @<Cat>/data until head
        moves (SPEC 4.2)."""
        tid = self.target.at
        for ch in self.waitset:
            if ch in self.sent or ch.dropped or ch.closed or ch.state.unacked \
                    or ch.state.checking:
                continue
            cat = ch.state.waiting
            answers = cat is not None and cat <= tid
            ranges = self.ranges[ch]
            if answers:
                ranges = merge_ranges(ranges + self.since_cat[(ch, cat)])
            send_have(ch, tid, ranges, update=not answers)
            self.sent.add(ch)


class KillPolicy:
    """Who may be killed for holding up an update (SPEC 4.4)."""

    def __init__(self, mountpoint, kill_timeout, stats):
        self.mountpoint = mountpoint
        self.kill_timeout = kill_timeout
        self.stats = stats

    def deal_with(self, ch, channels):
        """Kill the process holding up an update through `ch`, if it is sure
        to be the one that subscribed and still has `ch` open. `channels`:
        the file's open channels. Called with no lock held (reads /proc)."""
        owner = ch.owner
        if owner is not None and owner.pid != os.getpid():
            try:
                if self._kill_if(owner, lambda: self._holds_only(owner, ch, channels)):
                    log.warning('%s: killed pid %d (%s): no ack within %gs',
                                ch.path, owner.pid, owner.comm, self.kill_timeout)
                    self.stats.add('clients_killed')
                    return
            except OSError as e:
                log.warning('%s: cannot kill pid %d (%s): %s', ch.path, owner.pid, owner.comm, e)
                return
        log.warning('%s: no ack within %gs; dropping the subscription (its process '
                    'cannot be identified for sure, not killed)', ch.path, self.kill_timeout)

    @staticmethod
    def _kill_if(owner, sure):
        """SIGKILL the process `owner` if sure() (which reads /proc and checks
        that `owner` is still that very process); -> whether it was killed.

        The signal goes through a pidfd opened before sure() runs: once its
        start time matched, the pidfd is that process whatever happens to
        the pid after, so a pid reused between the check and the kill by
        another process is never signalled (the kill then fails: ESRCH)."""
        try:
            pidfd = os.pidfd_open(owner.pid)
        except ProcessLookupError:
            return False
        try:
            if not sure():
                return False
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            return True
        finally:
            os.close(pidfd)

    def _holds_only(self, owner, ch, channels):
        """/proc shows paths, not open files: be sure only when the owner
        opened this channel, opened no other channel of the file, has one
        descriptor open on it, and is still the same process."""
        if not owner.same(ch.opener) or not owner.alive():
            return False
        opened = sum(1 for c in channels if owner.same(c.opener))
        path = os.path.join(self.mountpoint, ch.path)
        return opened == 1 and procfs.count_open(owner.pid, path) == 1
