-- Tell wcfs of each commit to a RelStorage database (history-preserving),
-- so that it is told instead of polling: man wcfs, "PostgreSQL: told of
-- commits". Run once per database, as its owner or a superuser:
--
--     psql -d DBNAME -f /usr/share/wcfs/wcfs-notify.sql
--
-- Running it again changes nothing. wcfs-notify-remove.sql takes it away.
--
-- RelStorage inserts one row into its table `transaction` per commit, in
-- the committing transaction (lock_and_choose_tid, under its commit lock):
-- a notification is delivered when that transaction commits, in commit
-- order, and never for one rolled back. The payload is the tid in decimal.
-- Not for RelStorage's two-phase commit (option `twophase`): PostgreSQL
-- refuses PREPARE TRANSACTION after a NOTIFY.

BEGIN;

CREATE OR REPLACE FUNCTION wcfs_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('wcfs', NEW.tid::text);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS wcfs_notify ON transaction;
CREATE TRIGGER wcfs_notify AFTER INSERT ON transaction
    FOR EACH ROW EXECUTE FUNCTION wcfs_notify();

COMMIT;
