-- Core ACME state. Times are Unix seconds (UTC). JSON columns hold small
-- documents (contacts, identifiers, problems, validation records).

CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

CREATE TABLE used_nonces (
    nonce   BLOB PRIMARY KEY,
    expires INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX used_nonces_expires ON used_nonces (expires);

CREATE TABLE accounts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    thumbprint  TEXT NOT NULL UNIQUE,
    jwk         TEXT NOT NULL,
    contact     TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('valid', 'deactivated', 'revoked')),
    created_at  INTEGER NOT NULL
);

CREATE TABLE orders (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id  INTEGER NOT NULL REFERENCES accounts (id),
    status      TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'valid', 'invalid')),
    expires     INTEGER NOT NULL,
    identifiers TEXT NOT NULL,
    error       TEXT,
    cert_serial TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX orders_account ON orders (account_id, id);

CREATE TABLE authzs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id  INTEGER NOT NULL REFERENCES accounts (id),
    identifier  TEXT NOT NULL,
    wildcard    INTEGER NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'valid', 'invalid', 'deactivated', 'revoked')),
    expires     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
-- Reuse of valid authorizations by later orders of the same account.
CREATE INDEX authzs_reuse ON authzs (account_id, identifier, wildcard, status, expires);

CREATE TABLE order_authzs (
    order_id INTEGER NOT NULL REFERENCES orders (id),
    authz_id INTEGER NOT NULL REFERENCES authzs (id),
    PRIMARY KEY (order_id, authz_id)
) WITHOUT ROWID;

CREATE TABLE challenges (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    authz_id    INTEGER NOT NULL REFERENCES authzs (id),
    type        TEXT NOT NULL,
    token       TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'valid', 'invalid')),
    validated   INTEGER,
    error       TEXT,
    records     TEXT,
    started_at  INTEGER,
    UNIQUE (authz_id, type)
);
CREATE INDEX challenges_processing ON challenges (status) WHERE status = 'processing';

CREATE TABLE certificates (
    serial      TEXT PRIMARY KEY,
    account_id  INTEGER NOT NULL REFERENCES accounts (id),
    -- One certificate per order: a second finalize cannot issue twice.
    order_id    INTEGER NOT NULL UNIQUE REFERENCES orders (id),
    der         BLOB NOT NULL,
    chain_pem   TEXT NOT NULL,
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    issued_at   INTEGER NOT NULL
);
CREATE INDEX certificates_account ON certificates (account_id);
