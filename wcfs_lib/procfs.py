"""Everything wcfs reads from /proc, parsed in one place.

Processes are named by (pid, start time): a pid alone may be reused by an
unrelated process between two reads, the start time (clock ticks since boot,
field 22 of /proc/<pid>/stat) tells them apart. Every function here answers
None / 0 / False for a process that is gone, never raises OSError.
"""

import collections
import os


class Process(collections.namedtuple('Process', 'pid start comm')):
    """One process, identified for sure by its pid and start time."""

    def same(self, other):
        """Is `other` (a Process or None) this very process?"""
        return other is not None and (other.pid, other.start) == (self.pid, self.start)

    def alive(self):
        """Is this very process (not a reuse of its pid) still there?"""
        return process_start(self.pid) == self.start


def _stat_fields(pid):
    """Fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            text = f.read()
    except OSError:
        return None
    return text.rsplit(')', 1)[1].split()


def process_start(pid):
    """Start time of a process (clock ticks since boot), or None if gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def process_state(pid):
    """The one-letter state of a process ('R', 'S', 'Z'...), or None if gone."""
    fields = _stat_fields(pid)
    return None if fields is None else fields[0]


def cmdline(pid):
    """The argv of a process as a list of bytes, or None if gone."""
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return f.read().split(b'\0')
    except OSError:
        return None


def thread_process(thread_id):
    """The Process of a thread (a FUSE request's caller), or None if gone.

    Read while the request is in flight, so that the thread is still there.
    """
    try:
        with open('/proc/%d/status' % thread_id) as f:
            status = dict(line.split(':\t', 1) for line in f if ':\t' in line)
        pid = int(status['Tgid'])
    except (OSError, KeyError, ValueError):
        return None
    start = process_start(pid)
    if start is None:
        return None
    return Process(pid, start, status.get('Name', '?').strip())


def threads():
    """{thread id: its command name} of this process's threads."""
    out = {}
    for name in os.listdir('/proc/self/task'):
        try:
            with open('/proc/self/task/%s/comm' % name) as f:
                out[int(name)] = f.read().strip()
        except OSError:
            continue        # ended meanwhile
    return out


def count_open(pid, path):
    """How many descriptors of process `pid` are open on `path` (a real path)."""
    fddir = '/proc/%d/fd' % pid
    try:
        names = os.listdir(fddir)
    except OSError:
        return 0
    n = 0
    for name in names:
        try:
            n += os.readlink(os.path.join(fddir, name)) == path
        except OSError:
            continue
    return n


class MountEntry(collections.namedtuple('MountEntry',
                                         'mount_id dev mountpoint fstype source super_options')):
    """One line of /proc/self/mountinfo; `dev` is (major, minor); `super_options`
    the filesystem's own options as {name: value or None} (a FUSE mount's
    `user_id`, set by the kernel from whoever mounted it)."""


def mounts():
    """The mounts this process sees, as MountEntry, in mount order."""
    out = []
    with open('/proc/self/mountinfo') as f:
        for line in f:
            fields = line.split()
            sep = fields.index('-')
            major, minor = fields[2].split(':')
            out.append(MountEntry(int(fields[0]), (int(major), int(minor)),
                                  _unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2]),
                                  _options(fields[sep + 3] if len(fields) > sep + 3 else '')))
    return out


def _options(field):
    out = {}
    for opt in field.split(','):
        name, eq, value = opt.partition('=')
        out[name] = _unescape(value) if eq else None
    return out


def _unescape(field):
    """mountinfo writes space, tab, newline and backslash as \\ooo."""
    if '\\' not in field:
        return field
    return field.encode().decode('unicode_escape').encode('latin-1').decode(errors='surrogateescape')
