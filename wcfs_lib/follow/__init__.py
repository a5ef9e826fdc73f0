"""Following the database: the watcher, each file's δ index, the oid index,
δR over history."""
