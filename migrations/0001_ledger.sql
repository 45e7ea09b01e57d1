-- The TardBot ledger: every run, stage attempt, artifact, checkpoint, metric, eval and event.
-- Times are unix milliseconds; the views expose unix seconds as `time` for Grafana.

CREATE TABLE runs (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    config_toml   TEXT    NOT NULL,
    config_hash   TEXT    NOT NULL,
    -- directory the config's relative paths resolve against
    config_dir    TEXT    NOT NULL,
    -- the stages this run was asked to execute (JSON array), `run all` lists every enabled stage
    target_stages TEXT    NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('pending','running','succeeded','failed','interrupted')),
    created_ms    INTEGER NOT NULL,
    started_ms    INTEGER,
    ended_ms      INTEGER,
    host          TEXT,
    pid           INTEGER,
    heartbeat_ms  INTEGER
);

CREATE TABLE stage_attempts (
    id             INTEGER PRIMARY KEY,
    run_id         INTEGER NOT NULL REFERENCES runs(id),
    stage          TEXT    NOT NULL,
    attempt        INTEGER NOT NULL,
    fingerprint    TEXT    NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('running','succeeded','failed','cached','interrupted')),
    started_ms     INTEGER NOT NULL,
    ended_ms       INTEGER,
    heartbeat_ms   INTEGER,
    error          TEXT,
    -- checkpoint this attempt resumed from
    resumed_from   INTEGER REFERENCES checkpoints(id),
    -- for a cached attempt: the succeeded attempt whose artifacts it reuses
    cached_from    INTEGER REFERENCES stage_attempts(id),
    UNIQUE (run_id, stage, attempt)
);
CREATE INDEX stage_attempts_fingerprint ON stage_attempts(stage, fingerprint, status);

CREATE TABLE artifacts (
    id          INTEGER PRIMARY KEY,
    attempt_id  INTEGER NOT NULL REFERENCES stage_attempts(id),
    kind        TEXT    NOT NULL,
    path        TEXT    NOT NULL,
    hash        TEXT    NOT NULL,
    bytes       INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL
);
CREATE INDEX artifacts_attempt ON artifacts(attempt_id);

-- Lineage: which artifacts an attempt consumed.
CREATE TABLE artifact_inputs (
    attempt_id  INTEGER NOT NULL REFERENCES stage_attempts(id),
    artifact_id INTEGER NOT NULL REFERENCES artifacts(id),
    PRIMARY KEY (attempt_id, artifact_id)
);

CREATE TABLE checkpoints (
    id          INTEGER PRIMARY KEY,
    attempt_id  INTEGER NOT NULL REFERENCES stage_attempts(id),
    step        INTEGER NOT NULL,
    tokens      INTEGER NOT NULL,
    path        TEXT    NOT NULL,
    hash        TEXT    NOT NULL,
    bytes       INTEGER NOT NULL,
    complete    INTEGER NOT NULL DEFAULT 0,
    created_ms  INTEGER NOT NULL
);
CREATE INDEX checkpoints_attempt ON checkpoints(attempt_id, step);

-- Steps replayed after a resume overwrite (upsert), they never duplicate. NaN is stored as NULL.
CREATE TABLE metrics (
    attempt_id  INTEGER NOT NULL REFERENCES stage_attempts(id),
    key         TEXT    NOT NULL,
    step        INTEGER NOT NULL,
    value       REAL,
    time_ms     INTEGER NOT NULL,
    PRIMARY KEY (attempt_id, key, step)
) WITHOUT ROWID;

CREATE TABLE evals (
    id            INTEGER PRIMARY KEY,
    attempt_id    INTEGER NOT NULL REFERENCES stage_attempts(id),
    checkpoint_id INTEGER REFERENCES checkpoints(id),
    step          INTEGER NOT NULL,
    suite         TEXT    NOT NULL,
    metric        TEXT    NOT NULL,
    value         REAL,
    samples       INTEGER NOT NULL,
    time_ms       INTEGER NOT NULL
);
CREATE INDEX evals_attempt ON evals(attempt_id, suite, metric);

CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    time_ms     INTEGER NOT NULL,
    run_id      INTEGER REFERENCES runs(id),
    attempt_id  INTEGER REFERENCES stage_attempts(id),
    kind        TEXT    NOT NULL,
    payload     TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX events_run ON events(run_id, time_ms);

-- Views: unix seconds in `time`.

CREATE VIEW v_run_summary AS
SELECT r.id AS run_id, r.name, r.status,
       r.created_ms / 1000 AS time,
       (COALESCE(r.ended_ms, r.heartbeat_ms, r.started_ms, r.created_ms) - COALESCE(r.started_ms, r.created_ms)) / 1000.0 AS duration_s,
       (SELECT count(*) FROM stage_attempts a WHERE a.run_id = r.id) AS attempts,
       (SELECT count(*) FROM stage_attempts a WHERE a.run_id = r.id AND a.status = 'succeeded') AS stages_succeeded,
       (SELECT count(*) FROM stage_attempts a WHERE a.run_id = r.id AND a.status = 'cached') AS stages_cached,
       (SELECT count(*) FROM stage_attempts a WHERE a.run_id = r.id AND a.status = 'interrupted') AS attempts_interrupted,
       (SELECT count(*) FROM stage_attempts a WHERE a.run_id = r.id AND a.status = 'failed') AS attempts_failed,
       r.config_hash, r.host
FROM runs r;

CREATE VIEW v_stage_attempts AS
SELECT a.id AS attempt_id, r.id AS run_id, r.name AS run, a.stage, a.attempt, a.status,
       a.started_ms / 1000 AS time,
       (COALESCE(a.ended_ms, a.heartbeat_ms, a.started_ms) - a.started_ms) / 1000.0 AS duration_s,
       a.resumed_from IS NOT NULL AS resumed, a.cached_from, a.fingerprint, a.error
FROM stage_attempts a JOIN runs r ON r.id = a.run_id;

CREATE VIEW v_metrics AS
SELECT m.time_ms / 1000.0 AS time, r.id AS run_id, r.name AS run, a.stage, a.id AS attempt_id,
       m.key, m.step, m.value
FROM metrics m JOIN stage_attempts a ON a.id = m.attempt_id JOIN runs r ON r.id = a.run_id;

CREATE VIEW v_loss AS
SELECT time, run_id, run, stage, attempt_id, step, value AS loss FROM v_metrics WHERE key = 'loss';

CREATE VIEW v_evals AS
SELECT e.time_ms / 1000.0 AS time, r.id AS run_id, r.name AS run, a.stage, e.step, e.suite, e.metric,
       e.value, e.samples, e.checkpoint_id
FROM evals e JOIN stage_attempts a ON a.id = e.attempt_id JOIN runs r ON r.id = a.run_id;

CREATE VIEW v_events AS
SELECT e.time_ms / 1000.0 AS time, e.run_id, r.name AS run, a.stage, e.kind, e.payload
FROM events e LEFT JOIN runs r ON r.id = e.run_id LEFT JOIN stage_attempts a ON a.id = e.attempt_id;

CREATE VIEW v_artifact_lineage AS
SELECT ar.created_ms / 1000 AS time, consumer.run_id, consumer.stage AS consumer_stage,
       producer.stage AS producer_stage, ar.kind, ar.path, ar.hash, ar.bytes
FROM artifact_inputs ai
JOIN stage_attempts consumer ON consumer.id = ai.attempt_id
JOIN artifacts ar ON ar.id = ai.artifact_id
JOIN stage_attempts producer ON producer.id = ar.attempt_id;

CREATE VIEW v_checkpoints AS
SELECT c.created_ms / 1000 AS time, a.run_id, a.stage, a.attempt, c.id AS checkpoint_id, c.step, c.tokens,
       c.path, c.hash, c.bytes, c.complete
FROM checkpoints c JOIN stage_attempts a ON a.id = c.attempt_id;
