-- Killing, terminating or destroying madre, the orchestrator, stops or deletes it as surely as
-- /stop and /delete do: lock those rules too, so no admin can remove or lower them. An existing
-- rule on the same module, method and pattern (one an admin added) becomes the locked default.
-- tentaculo/auth/risk.py holds the same rules (DEFAULT_RULES) for when the table cannot be read.

INSERT INTO risk_rules (module, method, pattern, risk, reason, locked, created_by) VALUES
    ('madre', '*', '/**/kill/**', 'high', 'killing madre, the orchestrator, is always high', true, 'default'),
    ('madre', '*', '/**/terminate/**', 'high', 'terminating madre, the orchestrator, is always high', true, 'default'),
    ('madre', '*', '/**/destroy/**', 'high', 'destroying in madre, the orchestrator, is always high', true, 'default')
ON CONFLICT (module, method, pattern) DO UPDATE
    SET risk = EXCLUDED.risk, reason = EXCLUDED.reason, locked = true, created_by = EXCLUDED.created_by,
        created_at = now();
