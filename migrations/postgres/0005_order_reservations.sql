-- Certificate rate-limit tokens (per registered domain, per exact set) an
-- order reserved at newOrder (JSON). The row goes when the order's
-- certificate is issued (the tokens are used) or when the tokens are given
-- back because the order failed or expired; deleting it is the claim, so
-- they are given back exactly once whichever instance does it.
CREATE TABLE order_reservations (
    order_id BIGINT PRIMARY KEY REFERENCES orders (id),
    tokens   TEXT NOT NULL
);
