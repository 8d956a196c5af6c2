-- External account binding (RFC 8555 §7.3.4): the MAC keys an operator
-- hands out (`cairn admin eab create`), and on each account the key that
-- bound it. A key binds once unless reusable: the account's insert and the
-- key's `bound_count` update commit together, and the update's condition
-- (`reusable OR bound_count = 0`) is what makes the key single-use.
CREATE TABLE eab_keys (
    kid           TEXT PRIMARY KEY,
    hmac_key      BLOB NOT NULL,
    -- JSON list of name patterns (exact names, `*.domain`); empty: any name.
    names         TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires       INTEGER,
    reusable      INTEGER NOT NULL,
    revoked_at    INTEGER,
    bound_count   INTEGER NOT NULL DEFAULT 0,
    first_account INTEGER REFERENCES accounts (id)
);

ALTER TABLE accounts ADD COLUMN eab_kid TEXT REFERENCES eab_keys (kid);
