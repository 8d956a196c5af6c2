-- Revocation (RFC 8555 §7.6): when and why; NULL while the certificate is good.
ALTER TABLE certificates ADD COLUMN revoked_at INTEGER;
ALTER TABLE certificates ADD COLUMN revoked_reason INTEGER;
-- Finding validations whose instance died (their lease ran out).
CREATE INDEX challenges_started ON challenges (started_at) WHERE status = 'processing';
