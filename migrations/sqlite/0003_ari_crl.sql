-- Renewal information (RFC 9773), CRLs (RFC 5280) and blocked keys.

-- The certificate's names (JSON array, as ordered) and the hash of its
-- identifier set (lower-cased, de-duplicated, sorted, comma-joined, SHA-256
-- hex): renewal detection and the exact-set rate limit look it up.
ALTER TABLE certificates ADD COLUMN names TEXT NOT NULL DEFAULT '[]';
ALTER TABLE certificates ADD COLUMN set_hash TEXT NOT NULL DEFAULT '';
-- Set by `cairn admin certs renew-early`: the ARI window moves into the past.
ALTER TABLE certificates ADD COLUMN renew_early_at INTEGER;
-- SHA-256 of the certified SubjectPublicKeyInfo: a keyCompromise
-- revocation revokes every certificate of the key.
ALTER TABLE certificates ADD COLUMN spki_sha256 BLOB;
CREATE INDEX certificates_spki ON certificates (spki_sha256);
CREATE INDEX certificates_set ON certificates (set_hash, issued_at);
CREATE INDEX certificates_issued ON certificates (issued_at);
-- The CRL lists revoked certificates until they expire.
CREATE INDEX certificates_revoked ON certificates (not_after) WHERE revoked_at IS NOT NULL;

-- One row per (name, certificate): `cairn admin certs list --name`.
CREATE TABLE certificate_names (
    name   TEXT NOT NULL,
    serial TEXT NOT NULL REFERENCES certificates (serial),
    PRIMARY KEY (name, serial)
) WITHOUT ROWID;

-- RFC 9773 §5: the certificate (serial) a new order replaces.
ALTER TABLE orders ADD COLUMN replaces TEXT;
CREATE INDEX orders_replaces ON orders (replaces) WHERE replaces IS NOT NULL;

-- Signed CRLs of the intermediate; the highest number is the current one.
-- The primary key makes instances that sign at the same moment agree.
CREATE TABLE crls (
    number      INTEGER PRIMARY KEY,
    this_update INTEGER NOT NULL,
    next_update INTEGER NOT NULL,
    der         BLOB NOT NULL
);

-- Keys revoked for keyCompromise: never certified again, never an account key.
CREATE TABLE blocked_keys (
    spki_sha256 BLOB PRIMARY KEY,
    blocked_at  INTEGER NOT NULL,
    serial      TEXT
) WITHOUT ROWID;
