-- What each CRL was signed from (the revoked, unexpired certificates at
-- its thisUpdate: how many, and how many for keyCompromise), so the CRL
-- check compares two counts instead of every entry. NULL for older CRLs.
ALTER TABLE crls ADD COLUMN entries INTEGER;
ALTER TABLE crls ADD COLUMN key_compromises INTEGER;
