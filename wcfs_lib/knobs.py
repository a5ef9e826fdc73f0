"""What the test suite may turn inside a running wcfs, read in this one place
when wcfs starts, from one environment variable (man wcfs, ENVIRONMENT):

    WCFS_DEBUG=lock-ranks,pack-check-interval=0.5

lock-ranks            every lock and wait checks the order of locks.py, and
                      a wrong nesting fails loudly instead of deadlocking
pack-check-interval   seconds between two checks for files packed away on a
                      database that tells of no pack (default 60)
listen-retry-interval seconds between two looks for the trigger of LISTEN/NOTIFY
                      on PostgreSQL while polling (default 30)

An unknown knob is refused at start (ERROR, which the service reports
before it detaches), so that a typo does not test nothing.
"""

import os

VARIABLE = 'WCFS_DEBUG'
_DEFAULTS = {'lock-ranks': False, 'pack-check-interval': 60.0, 'listen-retry-interval': 30.0}


class KnobError(ValueError):
    pass


def parse(text):
    """'a,b=1' -> {'a': True, 'b': 1.0} over the defaults; KnobError else."""
    knobs = dict(_DEFAULTS)
    for word in filter(None, (w.strip() for w in text.split(','))):
        name, sep, value = word.partition('=')
        if name not in _DEFAULTS:
            raise KnobError('%s: unknown knob %r (known: %s)'
                            % (VARIABLE, name, ', '.join(sorted(_DEFAULTS))))
        if isinstance(_DEFAULTS[name], bool):
            if sep:
                raise KnobError('%s: %s takes no value' % (VARIABLE, name))
            knobs[name] = True
            continue
        try:
            knobs[name] = float(value)
        except ValueError:
            raise KnobError('%s: %s=%r: not a number' % (VARIABLE, name, value)) from None
        if not knobs[name] > 0:
            raise KnobError('%s: %s=%s: not positive' % (VARIABLE, name, value))
    return knobs


try:
    KNOBS, ERROR = parse(os.environ.get(VARIABLE, '')), None
except KnobError as e:
    KNOBS, ERROR = dict(_DEFAULTS), str(e)
LOCK_RANKS = KNOBS['lock-ranks']
PACK_CHECK_INTERVAL = KNOBS['pack-check-interval']
LISTEN_RETRY_INTERVAL = KNOBS['listen-retry-interval']
