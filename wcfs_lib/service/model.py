"""What the kernel side may ask of the rest of wcfs (kernel/fs.py gets a
Model, never the Server): the visible files, making one visible, a file as of
a revision, channels and their slots, what `.wcfs/` shows."""

from ..files.bigfile import snapshot_of


class Model:
    def __init__(self, srv):
        self._srv = srv
        self.zurl_shown = srv.zurl_shown        # .wcfs/zurl
        self.revdir_quota = srv.revdir_quota    # @<tid>/ slots per uid

    def file(self, oid):
        """The visible BigFile `oid`, or None."""
        return self._srv.table.get(oid)

    def files(self):
        return self._srv.table.files()

    def make_visible(self, oid):
        """Make the ZBigFile `oid` visible; -> its BigFile, or None if it is
        visible already. Raises what loading it raises (errors.py maps it)."""
        srv = self._srv
        # the client may have seen a commit the watcher has not applied yet
        srv.watcher.wait_zhead(srv.last_tid(), srv.opts.db_timeout)
        bf = srv.watcher.add_file(oid)
        if bf is not None:
            srv.malloc.trim()           # what loading a big index left over
        return bf

    def snapshot_at(self, oid, tid):
        """The file `oid` as of `tid`; None when the database has no `tid`
        yet. Raises ObjectMissing where the file did not exist then or was
        packed away."""
        if not self._srv.committed(tid):
            return None
        loader = self._srv.loader
        zh = loader.zbigfile(oid, tid, fresh=True)
        return snapshot_of(zh, loader.size(zh))

    def open_channel(self, bf, caller_tid, uid):
        return self._srv.open_channel(bf, caller_tid, uid)

    def channel_released(self, uid):
        self._srv.channel_released(uid)

    def stats_text(self):
        return self._srv.stats.render()

    def metrics_text(self):
        return self._srv.metrics_text()

    def mounted(self):
        """From the FUSE init handler: the kernel talks to us."""
        self._srv.on_mounted()
