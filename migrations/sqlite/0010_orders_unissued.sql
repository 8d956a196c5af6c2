-- Retention finds the orders that never issued by their expiry. Valid
-- orders are kept for good (their certificates refer to them) and stay out
-- of this index, so a purge reads what it may delete, not every order ever
-- issued: with orders_expires it read them all, each run.
DROP INDEX orders_expires;
CREATE INDEX orders_unissued ON orders (expires) WHERE status <> 'valid';
