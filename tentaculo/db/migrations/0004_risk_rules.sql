-- Risk rules: how dangerous a call through the gateway is. A call's risk is the highest of the
-- rules that match it (module or '*', method or '*', path pattern); a high call waits for a
-- confirmation token (tentaculo/auth/confirm.py). Rows created by 'default' are the shipped
-- classification; locked rows (stopping or deleting madre) cannot be removed through the API or
-- the CLI, so those calls stay high whatever else changes.

CREATE TABLE risk_rules (
    id         bigserial PRIMARY KEY,
    module     text NOT NULL CHECK (module ~ '^(\*|[a-z0-9][a-z0-9_-]{0,63})$'),
    method     text NOT NULL CHECK (method ~ '^(\*|[A-Z][A-Z-]{0,31})$'),
    pattern    text NOT NULL CHECK (pattern ~ '^/' AND length(pattern) <= 256),
    risk       text NOT NULL CHECK (risk IN ('low', 'medium', 'high')),
    reason     text NOT NULL DEFAULT '' CHECK (length(reason) <= 500),
    locked     boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL,
    UNIQUE (module, method, pattern)
);

INSERT INTO risk_rules (module, method, pattern, risk, reason, locked, created_by) VALUES
    ('*', 'GET', '/**', 'low', 'reads', false, 'default'),
    ('*', 'HEAD', '/**', 'low', 'reads', false, 'default'),
    ('*', 'PATCH', '/**', 'medium', 'patches a resource', false, 'default'),
    ('*', '*', '/**/restart/**', 'medium', 'restarts', false, 'default'),
    ('*', '*', '/**/suspend/**', 'medium', 'suspends', false, 'default'),
    ('*', '*', '/**/patch/**', 'medium', 'patches', false, 'default'),
    ('*', '*', '/**/update/**', 'medium', 'updates', false, 'default'),
    ('*', 'DELETE', '/**', 'high', 'deletes', false, 'default'),
    ('*', '*', '/**/delete/**', 'high', 'deletes', false, 'default'),
    ('*', '*', '/**/drop/**', 'high', 'drops data', false, 'default'),
    ('*', '*', '/**/destroy/**', 'high', 'destroys', false, 'default'),
    ('*', '*', '/**/reset/**', 'high', 'resets state', false, 'default'),
    ('*', '*', '/**/migrate/**', 'high', 'migrates data', false, 'default'),
    ('*', '*', '/**/restore/**', 'high', 'restores from a backup', false, 'default'),
    ('*', '*', '/**/stop/**', 'high', 'stops', false, 'default'),
    ('*', '*', '/**/kill/**', 'high', 'kills', false, 'default'),
    ('*', '*', '/**/terminate/**', 'high', 'terminates', false, 'default'),
    ('madre', 'DELETE', '/**', 'high', 'deleting in madre, the orchestrator, is always high', true, 'default'),
    ('madre', '*', '/**/delete/**', 'high', 'deleting in madre, the orchestrator, is always high', true, 'default'),
    ('madre', '*', '/**/stop/**', 'high', 'stopping madre, the orchestrator, is always high', true, 'default');
