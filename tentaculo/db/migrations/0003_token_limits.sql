-- Tokens that expire and tokens with a request budget; when each was last used (written at most
-- once a minute per token, in batches, never on the request path).

ALTER TABLE api_tokens
    ADD COLUMN expires_at          timestamptz,
    ADD COLUMN last_used_at        timestamptz,
    ADD COLUMN requests_per_minute integer CHECK (requests_per_minute > 0);
