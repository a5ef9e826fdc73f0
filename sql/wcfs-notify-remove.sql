-- Take away what wcfs-notify.sql installed: every wcfs on this database
-- then polls again (it notices within a few seconds). Run once per
-- database; running it again changes nothing:
--
--     psql -d DBNAME -f /usr/share/wcfs/wcfs-notify-remove.sql

BEGIN;
DROP TRIGGER IF EXISTS wcfs_notify ON transaction;
DROP FUNCTION IF EXISTS wcfs_notify();
COMMIT;
