-- Core ACME state, the PostgreSQL twin of migrations/sqlite/0001_core.sql:
-- same tables, columns, constraints and indexes. Times are Unix seconds
-- (UTC) in BIGINT, as in SQLite, so both stores share one model. JSON
-- columns hold small documents (contacts, identifiers, problems, validation
-- records) as TEXT: the store never queries inside them.

CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE used_nonces (
    nonce   BYTEA PRIMARY KEY,
    expires BIGINT NOT NULL
);
CREATE INDEX used_nonces_expires ON used_nonces (expires);

CREATE TABLE accounts (
    id          BIGSERIAL PRIMARY KEY,
    thumbprint  TEXT NOT NULL UNIQUE,
    jwk         TEXT NOT NULL,
    contact     TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('valid', 'deactivated', 'revoked')),
    created_at  BIGINT NOT NULL
);

CREATE TABLE orders (
    id          BIGSERIAL PRIMARY KEY,
    account_id  BIGINT NOT NULL REFERENCES accounts (id),
    status      TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'valid', 'invalid')),
    expires     BIGINT NOT NULL,
    identifiers TEXT NOT NULL,
    error       TEXT,
    cert_serial TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX orders_account ON orders (account_id, id);

CREATE TABLE authzs (
    id          BIGSERIAL PRIMARY KEY,
    account_id  BIGINT NOT NULL REFERENCES accounts (id),
    identifier  TEXT NOT NULL,
    wildcard    BOOLEAN NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'valid', 'invalid', 'deactivated', 'revoked')),
    expires     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
-- Reuse of valid authorizations by later orders of the same account.
CREATE INDEX authzs_reuse ON authzs (account_id, identifier, wildcard, status, expires);

CREATE TABLE order_authzs (
    order_id BIGINT NOT NULL REFERENCES orders (id),
    authz_id BIGINT NOT NULL REFERENCES authzs (id),
    PRIMARY KEY (order_id, authz_id)
);

CREATE TABLE challenges (
    id          BIGSERIAL PRIMARY KEY,
    authz_id    BIGINT NOT NULL REFERENCES authzs (id),
    type        TEXT NOT NULL,
    token       TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'valid', 'invalid')),
    validated   BIGINT,
    error       TEXT,
    records     TEXT,
    started_at  BIGINT,
    UNIQUE (authz_id, type)
);
CREATE INDEX challenges_processing ON challenges (status) WHERE status = 'processing';

CREATE TABLE certificates (
    serial      TEXT PRIMARY KEY,
    account_id  BIGINT NOT NULL REFERENCES accounts (id),
    -- One certificate per order: a second finalize cannot issue twice.
    order_id    BIGINT NOT NULL UNIQUE REFERENCES orders (id),
    der         BYTEA NOT NULL,
    chain_pem   TEXT NOT NULL,
    not_before  BIGINT NOT NULL,
    not_after   BIGINT NOT NULL,
    issued_at   BIGINT NOT NULL
);
CREATE INDEX certificates_account ON certificates (account_id);
