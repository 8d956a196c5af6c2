-- The CRL reads the revoked, unexpired certificates' serials, dates and
-- reasons, and the CRL check counts them: from this index alone, in
-- (not_after, serial) order, which the CRL's read pages through. Through
-- certificates_revoked each entry cost a read of its certificate's row
-- (about 4 KB with its chain), which on a large store filled the
-- connection's page cache with rows only the CRL wanted.
DROP INDEX certificates_revoked;
CREATE INDEX certificates_revoked ON certificates (not_after, serial, revoked_at, revoked_reason)
    WHERE revoked_at IS NOT NULL;
