-- Certificate profiles and IP identifiers (RFC 8738).
-- An order's and an authorization's profile; '' for rows written before
-- profiles existed, read as the configured default profile. An
-- authorization is reused only by orders of the same profile (its reuse
-- period is the profile's).
ALTER TABLE orders ADD COLUMN profile TEXT NOT NULL DEFAULT '';
ALTER TABLE authzs ADD COLUMN profile TEXT NOT NULL DEFAULT '';
-- 'dns' or 'ip'; `identifier` holds the name or the address's canonical text.
ALTER TABLE authzs ADD COLUMN identifier_type TEXT NOT NULL DEFAULT 'dns';
DROP INDEX authzs_reuse;
CREATE INDEX authzs_reuse ON authzs (account_id, identifier, identifier_type, wildcard, profile, status, expires);
