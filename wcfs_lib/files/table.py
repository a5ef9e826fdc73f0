"""The visible files: oid -> BigFile, the files being made visible (each
with the transactions it must catch up on), and the files with a `want`
that waits for a later head."""

from .. import locks


class BigFileTable:
    """oid -> BigFile, and the files being made visible.

    `lock` is held only to look up or change the table."""

    def __init__(self):
        self.lock = locks.lock('BigFileTable.lock')
        self.waiting = WaitingFiles()
        self._files = {}
        self._by_fid = {}               # OidIndex file id -> BigFile
        self._loading = {}              # oid -> Loading

    def get(self, oid):
        with self.lock:
            return self._files.get(oid)

    def files(self):
        with self.lock:
            return list(self._files.values())

    def count(self):
        with self.lock:
            return len(self._files)

    def start_loading(self, oid, at):
        """-> ('visible', BigFile), ('loading', Loading) of another mkdir, or
        ('new', Loading): the caller loads `oid` as of `at`."""
        with self.lock:
            if oid in self._files:
                return 'visible', self._files[oid]
            if oid in self._loading:
                return 'loading', self._loading[oid]
            loading = self._loading[oid] = Loading(oid, at)
            return 'new', loading

    def note_transaction(self, tid, oids):
        """A transaction: the files being loaded get it in their backlog;
        -> {fid: BigFile} of the files visible now, which get it from the
        watcher. Both under one hold of the lock, and a copy: a file
        published after this caught up on it from its backlog, and must not
        get it from the watcher too."""
        with self.lock:
            for loading in self._loading.values():
                loading.backlog.append((tid, oids))
            return dict(self._by_fid)

    def publish(self, loading, make):
        """Publish the file make() builds, unless transactions wait for it:
        -> (BigFile, None), or (None, the transactions to catch up on first)."""
        with self.lock:
            if loading.backlog:
                backlog, loading.backlog = loading.backlog, []
                return None, backlog
            bf = self._files[loading.oid] = make()
            self._by_fid[bf.index.fid] = bf
            del self._loading[loading.oid]
        loading.done.set()
        return bf, None

    def abandon(self, loading):
        """The load failed: the oid is free again."""
        with self.lock:
            if self._loading.get(loading.oid) is loading:
                del self._loading[loading.oid]
        loading.done.set()


class WaitingFiles:
    """The files with a channel whose `want` waits for a later head: the
    watcher pokes them after each transaction, touched or not."""

    def __init__(self):
        self.lock = locks.lock('WaitingFiles.lock')    # guards _files
        self._files = set()

    def add(self, bf):
        with self.lock:
            self._files.add(bf)

    def discard(self, bf):
        with self.lock:
            self._files.discard(bf)

    def files(self):
        with self.lock:
            return list(self._files)


class Loading:
    """A file being made visible: the transactions it must catch up on."""

    def __init__(self, oid, at):
        self.oid = oid
        self.at = at
        self.backlog = []               # (tid, oids) after `at`; guarded by the table's lock
        self.done = locks.event('Loading.done')
