"""Told of commits by PostgreSQL (LISTEN/NOTIFY) where the database has
wcfs's trigger (sql/wcfs-notify.sql), instead of asking for the last tid
every --db-poll-interval.

What the poller (mvcc.py) may rely on:

- A notification says that a transaction committed (payload: its tid in
  decimal), in commit order, once committed. It says nothing of what the
  transaction changed: the poller lists that, as after a poll that moved.
- Nothing is promised for what committed before LISTEN: the poller polls
  once after each `listen()` that succeeds, and takes what that poll finds
  as told (`Ears.polled`).
- A notification can be lost: the listening connection drops (its server
  restarts, an administrator ends it), the trigger is dropped or disabled
  (a restore, `session_replication_role = replica` in the writer). So the
  poller asks for the last tid when it heard nothing for SAFETY_NET
  seconds, and a poll that finds a transaction no notification announced
  (`Ears.polled`, after GRACE for one still on its way) ends the
  listening: polling again, and the trigger looked for again later. So
  no transaction waits for its notification longer than about
  SAFETY_NET + GRACE, and none is missed: the poll lists every commit
  since the last one, whatever told of it.
- A hot standby refuses LISTEN, and its own commits are replayed without
  triggers: polled.

One Ears belongs to the poller thread: no lock. `listening` is read by
other threads (.wcfs/metrics) as a plain attribute.
"""

import logging
import select
import time

from ... import knobs
from .base import oneline, shut_down, silent_for

log = logging.getLogger('wcfs.zstorage')

CHANNEL = 'wcfs'                # the trigger's pg_notify channel
TRIGGER = 'wcfs_notify'         # the trigger's name, on RelStorage's table `transaction`
APPLICATION_NAME = 'wcfs-listen'  # of the listening connection, in pg_stat_activity
# Seconds without a word from the database before wcfs asks its last tid: an
# idle told wcfs sends the server this query and, every pack-check-interval,
# the few of a pack check (issue 18: at most one query a second in all).
SAFETY_NET = 1.5
GRACE = 1.0         # seconds a notification may take after its commit shows to a query
RETRY = knobs.LISTEN_RETRY_INTERVAL    # seconds between two looks for the trigger while polling

# An enabled trigger fires for ordinary sessions: 'O' (origin, the default)
# and 'A' (always); 'D' is disabled, 'R' fires in replica sessions only.
_TRIGGER_STATE = '''
    SELECT tgenabled FROM pg_trigger
    WHERE tgrelid = to_regclass('transaction') AND tgname = %s AND NOT tgisinternal'''
_FIRES = ('O', 'A')


def trigger_state(ask):
    """-> None when the trigger is there and fires, else why not (a phrase).
    ask(query, args) -> rows, on any connection to the database."""
    rows = ask(_TRIGGER_STATE, (TRIGGER,))
    if not rows:
        return 'no trigger %s on the table transaction (sql/wcfs-notify.sql)' % TRIGGER
    state = rows[0][0]
    if isinstance(state, bytes):
        state = state.decode('ascii', 'replace')
    if state not in _FIRES:
        return 'the trigger %s is disabled (tgenabled %r)' % (TRIGGER, state)
    return None


def told_tid(payload):
    """The tid a notification's payload says (an int), None for a payload
    that is no tid: bad input from whoever may NOTIFY, which is then taken
    as a word that something committed, nothing more."""
    text = payload.strip() if isinstance(payload, str) else ''
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        return None     # int() would take Arabic-Indic digits, and any length
    tid = int(text)
    return tid if tid < 1 << 64 else None


class NotListening(Exception):
    """LISTEN cannot work on this connection (a standby, a refusal)."""


class Lost(ConnectionError):
    """The listening connection dropped: notifications may have been lost."""


class Listener:
    """One connection of its own (autocommit) that LISTENs on CHANNEL."""

    def __init__(self, connmanager):
        self._manager = connmanager
        self._conn = None

    def open(self):
        """Connect and LISTEN; NotListening where the server cannot."""
        manager = self._manager
        conn, cursor = manager.open(isolation=manager.isolation_read_committed,
                                    application_name=APPLICATION_NAME)
        self._conn = conn
        conn.rollback()
        conn.autocommit = True
        cursor.execute('SELECT pg_is_in_recovery()')
        if cursor.fetchone()[0]:
            raise NotListening('the server is a standby, which refuses LISTEN')
        try:
            cursor.execute('LISTEN %s' % CHANNEL)
        except Exception as e:
            if _is_refusal(e):
                raise NotListening('LISTEN refused: %s' % oneline(e)) from None
            raise
        cursor.close()

    def fileno(self):
        return self._conn.fileno()

    def wait(self, timeout, wake_fd):
        """Wait up to `timeout` seconds for notifications, or until `wake_fd`
        is readable; -> [tid or None per notification]. Lost when the
        connection dropped."""
        conn = self._conn
        try:
            if not conn.notifies:
                ready, _, _ = select.select([conn, wake_fd], [], [], max(0.0, timeout))
                if conn in ready:
                    conn.poll()
            notes = list(conn.notifies)
            del conn.notifies[:]
        except Exception as e:
            raise Lost('the listening connection: %s' % oneline(e)) from None
        if conn.closed:
            raise Lost('the listening connection closed')
        return [told_tid(n.payload) for n in notes if n.channel == CHANNEL]

    def cut(self):
        """Make a call blocked on the connection return (Watchdog)."""
        shut_down(self._conn)

    def silent_for(self):
        return silent_for(self._conn)

    def close(self):
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as e:
                log.debug('closing the listening connection: %s', oneline(e))


def _is_refusal(exc):
    """Does the server refuse LISTEN itself (not: the connection is gone)?"""
    return type(exc).__name__ not in ('OperationalError', 'InterfaceError')


class Ears:
    """Whether the poller is told or polls, and what it was told.

    ask(query, args) -> rows: a query on the poller's probe connection.
    listener(): a new Listener. watching(what, target): the Watchdog's.
    wake_fd: readable once the poller is to stop; stopped(): whether it is."""

    def __init__(self, ask, listener, watching, wake_fd, stopped, clock=time.monotonic):
        self._ask = ask
        self._new_listener = listener
        self._watching = watching
        self._wake_fd = wake_fd
        self._stopped = stopped
        self._clock = clock
        self._listener = None
        self.listening = False
        self.told = 0           # the last tid a notification gave
        self._polled = 0        # the last tid a poll brought the snapshot to
        self._unsettled = True  # no poll since LISTEN: what it finds was not announced
        self._word = False      # a notification not polled for yet
        self._next_try = clock()   # when to look for the trigger again
        self._said = set()      # reasons to poll logged already

    # ---- becoming told ----

    def try_due(self):
        return not self.listening and self._clock() >= self._next_try

    def listen(self):
        """Look for the trigger and LISTEN; -> True when told from now on (the
        poller then polls at once). Errors of the database propagate; the
        next try is RETRY seconds on, whatever happens."""
        self._next_try = self._clock() + RETRY
        why = trigger_state(self._ask)
        if why is not None:
            self._say('polling: %s' % why)
            return False
        listener = self._new_listener()
        try:
            with self._watching('listening', listener):
                listener.open()
        except NotListening as e:
            listener.close()
            self._say('polling: %s' % e)
            return False
        except BaseException:
            listener.close()
            raise
        self._listener, self.listening = listener, True
        self._unsettled, self._word = True, True
        self._said.clear()
        log.info('told of commits by the database (LISTEN %s, trigger %s)', CHANNEL, TRIGGER)
        return True

    def _say(self, message):
        """Log a reason to poll once, not at every try."""
        if message not in self._said:
            self._said.add(message)
            log.info('%s', message)

    # ---- told ----

    def wait(self, timeout):
        """Wait for a notification, at most `timeout` seconds; -> True when
        one came (or came before and was not polled for). Lost: the
        caller's to take to fall_back()."""
        if not self._word:
            self._heard(self._listener.wait(timeout, self._wake_fd))
        return self._word

    def _heard(self, tids):
        """Note notifications; one of a tid not polled yet (or of no tid)
        asks for a poll."""
        for tid in tids:
            if tid is None or tid > self._polled:
                self._word = True
            if tid is not None:
                self.told = max(self.told, tid)

    def polled(self, tid):
        """A poll brought the snapshot to `tid`; -> False when a transaction
        up to it was not announced (the first poll after LISTEN covers what
        was before it). A notification may still be on its way: GRACE."""
        self._word, self._polled = False, tid
        if self._unsettled:
            self._unsettled = False
            self.told = max(self.told, tid)
        deadline = self._clock() + GRACE
        while self.told < tid and not self._stopped():
            left = deadline - self._clock()
            if left <= 0:
                return False
            self._heard(self._listener.wait(left, self._wake_fd))
        return True

    def fall_back(self, why, retry=RETRY):
        """Stop listening: poll from now on, and look for the trigger again
        in `retry` seconds. `why`, if any, is logged."""
        if self._listener is not None:
            self._listener.close()
        self._listener, self.listening = None, False
        self._word = False
        self._next_try = self._clock() + retry
        if why is not None:
            log.warning('polling: %s', why)

    def close(self):
        self.fall_back(None)
