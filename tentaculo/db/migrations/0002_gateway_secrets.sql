-- Secrets every gateway instance must share, generated once by whichever instance needs one
-- first (e.g. the key that signs event tickets when TENTACULO_EVENT_TICKET_SECRET is unset).

CREATE TABLE gateway_secrets (
    name       text PRIMARY KEY,
    value      bytea NOT NULL CHECK (length(value) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
