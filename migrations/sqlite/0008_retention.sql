-- Retention (src/retention.rs): the purge finds expired orders and
-- authorizations by their expiry, and an authorization's order links by
-- the authorization (order_authzs' primary key leads with the order).
CREATE INDEX orders_expires ON orders (expires);
CREATE INDEX authzs_expires ON authzs (expires);
CREATE INDEX order_authzs_authz ON order_authzs (authz_id);
