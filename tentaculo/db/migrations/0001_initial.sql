-- Base schema: the seed's tables, tokens, topology edges.

CREATE TABLE audit_logs (
    id              bigserial PRIMARY KEY,
    ts              timestamptz NOT NULL,
    correlation_id  text NOT NULL,
    token_name      text,
    method          text NOT NULL,
    route           text,
    path            text NOT NULL,
    status          integer NOT NULL,
    duration_ms     double precision NOT NULL,
    client          text,
    instance        text NOT NULL,
    service         text
);
CREATE INDEX audit_logs_correlation_id_idx ON audit_logs (correlation_id);
CREATE INDEX audit_logs_ts_idx ON audit_logs (ts);

CREATE TABLE copilot_actions_log (
    id                bigserial PRIMARY KEY,
    ts                timestamptz NOT NULL DEFAULT now(),
    correlation_id    text NOT NULL,
    message_id        uuid NOT NULL,
    session_id        text,
    token_name        text,
    provider          text,
    model             text,
    status            text NOT NULL,
    finish_reason     text,
    prompt_tokens     integer,
    completion_tokens integer,
    latency_ms        double precision,
    degraded          boolean NOT NULL DEFAULT false,
    streamed          boolean NOT NULL DEFAULT false,
    attempts          jsonb NOT NULL DEFAULT '[]'::jsonb,
    error             text,
    instance          text NOT NULL
);
CREATE INDEX copilot_actions_log_correlation_id_idx ON copilot_actions_log (correlation_id);
CREATE INDEX copilot_actions_log_ts_idx ON copilot_actions_log (ts);

CREATE TABLE feature_flags (
    name        text PRIMARY KEY,
    status      text NOT NULL CHECK (status IN ('on', 'off', 'degraded')),
    reason      text,
    description text NOT NULL DEFAULT '',
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text
);
INSERT INTO feature_flags (name, status, description) VALUES
    ('chat', 'on', 'operator chat through the provider registry'),
    ('events', 'on', 'live events over Server-Sent Events'),
    ('metrics', 'on', 'request and provider metrics'),
    ('file_explorer', 'on', 'sandboxed file explorer'),
    ('proxy', 'on', 'reverse proxy to the VX11 modules');

CREATE TABLE service_configs (
    name         text PRIMARY KEY,
    display_name text NOT NULL,
    role         text NOT NULL,
    base_url     text,
    health_path  text NOT NULL DEFAULT '/health',
    enabled      boolean NOT NULL DEFAULT true,
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO service_configs (name, display_name, role, description) VALUES
    ('tentaculo_link', 'Tentaculo', 'gateway', 'single entrypoint: every call enters here'),
    ('madre', 'Madre', 'orchestrator', 'orchestrates tasks across the modules'),
    ('switch', 'Switch', 'model-router', 'routes model calls to providers'),
    ('hermes', 'Hermes', 'messaging', 'message delivery for the router'),
    ('hormiguero', 'Hormiguero', 'workers', 'worker colony run by madre'),
    ('mcp', 'MCP', 'tools', 'tool protocol server used by madre'),
    ('spawner', 'Spawner', 'process-manager', 'starts and stops processes for madre'),
    ('redis', 'Redis', 'event-bus', 'pub/sub and cache shared by the modules'),
    ('operator-backend', 'Operator backend', 'operator-api', 'operator back end behind the gateway'),
    ('operator-frontend', 'Operator frontend', 'operator-ui', 'the operator''s web frontend');

CREATE TABLE topology_edges (
    source  text NOT NULL REFERENCES service_configs (name) ON DELETE CASCADE,
    target  text NOT NULL REFERENCES service_configs (name) ON DELETE CASCADE,
    kind    text NOT NULL DEFAULT 'http',
    PRIMARY KEY (source, target)
);
INSERT INTO topology_edges (source, target, kind) VALUES
    ('operator-frontend', 'tentaculo_link', 'http'),
    ('tentaculo_link', 'operator-backend', 'http'),
    ('tentaculo_link', 'madre', 'http'),
    ('tentaculo_link', 'switch', 'http'),
    ('tentaculo_link', 'redis', 'pubsub'),
    ('madre', 'spawner', 'http'),
    ('madre', 'hormiguero', 'http'),
    ('madre', 'mcp', 'http'),
    ('switch', 'hermes', 'http');

-- Metric rollups: each instance writes one row per (bucket, route, method, status class, provider)
-- so every instance's figures can be summed; the histogram has fixed bucket bounds in code.
CREATE TABLE performance_logs (
    id             bigserial PRIMARY KEY,
    bucket_start   timestamptz NOT NULL,
    bucket_seconds integer NOT NULL,
    instance       text NOT NULL,
    route          text NOT NULL,
    method         text NOT NULL,
    status_class   text NOT NULL,
    provider       text,
    count          bigint NOT NULL,
    error_count    bigint NOT NULL,
    latency_sum_ms double precision NOT NULL,
    latency_max_ms double precision NOT NULL,
    histogram      bigint[] NOT NULL
);
CREATE INDEX performance_logs_bucket_idx ON performance_logs (bucket_start);

CREATE TABLE api_tokens (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL,
    token_hash   bytea NOT NULL UNIQUE,
    scopes       text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    created_by   text
);
CREATE UNIQUE INDEX api_tokens_active_name_idx ON api_tokens (name) WHERE revoked_at IS NULL;
