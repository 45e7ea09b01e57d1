-- Views for people and dashboards over training runs (see dashboards/ and docs/querying.md).
-- Every view has a unix-seconds `time` column (REAL where the source has milliseconds), as Grafana's
-- SQLite plugin expects; the tables keep unix milliseconds.
--
-- Metric keys written by the training stages: `loss`, `aux_loss`, `z_loss`, `grad_norm`, `lr`,
-- `tokens_per_s`, `mfu`, and per MoE layer `expert_load/L{layer}/E{expert}` (tokens routed),
-- `router_entropy/L{layer}`, `dead_experts/L{layer}`.
--
-- Cost: `metrics` grows to millions of rows. The views join runs → stage_attempts → metrics with CROSS JOIN,
-- which SQLite takes as the join order, so metrics are reached through their primary key (attempt_id, key,
-- step) and never scanned whole; and every GROUP BY / window PARTITION BY includes run_id and run, so a
-- `WHERE run = '…'` or `WHERE run_id = …` on a view is pushed down into it (one run is read, not all).

-- One row per training step of an attempt, the scalar training metrics side by side.
CREATE VIEW v_train_steps AS
SELECT max(m.time_ms) / 1000.0 AS time, r.id AS run_id, r.name AS run, a.stage, a.id AS attempt_id,
       a.attempt, m.step,
       max(CASE WHEN m.key = 'loss' THEN m.value END) AS loss,
       max(CASE WHEN m.key = 'aux_loss' THEN m.value END) AS aux_loss,
       max(CASE WHEN m.key = 'z_loss' THEN m.value END) AS z_loss,
       max(CASE WHEN m.key = 'grad_norm' THEN m.value END) AS grad_norm,
       max(CASE WHEN m.key = 'lr' THEN m.value END) AS lr,
       max(CASE WHEN m.key = 'tokens_per_s' THEN m.value END) AS tokens_per_s,
       max(CASE WHEN m.key = 'mfu' THEN m.value END) AS mfu
FROM runs r
CROSS JOIN stage_attempts a ON a.run_id = r.id
CROSS JOIN metrics m ON m.attempt_id = a.id
WHERE m.key IN ('loss', 'aux_loss', 'z_loss', 'grad_norm', 'lr', 'tokens_per_s', 'mfu')
GROUP BY r.id, r.name, a.id, m.step;

-- The loss curve of each stage of a run as it counts: where a resumed attempt replayed steps of an
-- interrupted one, the newest attempt's value wins, so every step appears once per stage.
CREATE VIEW v_stage_loss AS
SELECT time, run_id, run, stage, attempt_id, attempt, step, loss
FROM (
    SELECT m.time_ms / 1000.0 AS time, r.id AS run_id, r.name AS run, a.stage, a.id AS attempt_id,
           a.attempt, m.step, m.value AS loss,
           row_number() OVER (PARTITION BY r.id, r.name, a.stage, m.step ORDER BY a.attempt DESC) AS newest
    FROM runs r
    CROSS JOIN stage_attempts a ON a.run_id = r.id
    CROSS JOIN metrics m ON m.attempt_id = a.id AND m.key = 'loss'
)
WHERE newest = 1;

-- Throughput: tokens per second, model-FLOPs utilisation, and the wall time of each step (seconds since
-- the previous logged step of the same attempt; NULL for an attempt's first step).
CREATE VIEW v_throughput AS
SELECT time, run_id, run, stage, attempt_id, step, tokens_per_s, mfu,
       time - lag(time) OVER (PARTITION BY run_id, run, attempt_id ORDER BY step) AS step_s
FROM v_train_steps
WHERE tokens_per_s IS NOT NULL OR mfu IS NOT NULL;

-- Tokens routed to each expert of each MoE layer per step, and the expert's share of its layer
-- (1/n_experts is perfect balance).
CREATE VIEW v_expert_load AS
SELECT time, run_id, run, stage, attempt_id, step, layer, expert, tokens,
       tokens / nullif(sum(tokens) OVER (PARTITION BY run_id, run, attempt_id, step, layer), 0) AS share
FROM (
    SELECT m.time_ms / 1000.0 AS time, r.id AS run_id, r.name AS run, a.stage, a.id AS attempt_id,
           m.step,
           CAST(substr(m.key, 14, instr(substr(m.key, 14), '/E') - 1) AS INTEGER) AS layer,
           CAST(substr(m.key, 14 + instr(substr(m.key, 14), '/E') + 1) AS INTEGER) AS expert,
           m.value AS tokens
    FROM runs r
    CROSS JOIN stage_attempts a ON a.run_id = r.id
    CROSS JOIN metrics m ON m.attempt_id = a.id AND m.key >= 'expert_load/L' AND m.key < 'expert_load/M'
);

-- Router health per MoE layer and step: entropy of the routing distribution and dead experts.
CREATE VIEW v_router AS
SELECT max(m.time_ms) / 1000.0 AS time, r.id AS run_id, r.name AS run, a.stage, a.id AS attempt_id,
       m.step, CAST(substr(m.key, instr(m.key, '/L') + 2) AS INTEGER) AS layer,
       max(CASE WHEN substr(m.key, 1, 15) = 'router_entropy/' THEN m.value END) AS router_entropy,
       max(CASE WHEN substr(m.key, 1, 13) = 'dead_experts/' THEN m.value END) AS dead_experts
FROM runs r
CROSS JOIN stage_attempts a ON a.run_id = r.id
CROSS JOIN metrics m ON m.attempt_id = a.id
     AND ((m.key >= 'router_entropy/L' AND m.key < 'router_entropy/M')
          OR (m.key >= 'dead_experts/L' AND m.key < 'dead_experts/M'))
GROUP BY r.id, r.name, a.id, m.step, layer;

-- Evals of each stage: the first and the last measurement of every (suite, metric), i.e. the model
-- before and after the stage trained (when the stage evaluates at its start and end).
CREATE VIEW v_stage_evals AS
SELECT max(time) AS time, run_id, run, stage, suite, metric,
       max(CASE WHEN first_row = 1 THEN step END) AS first_step,
       max(CASE WHEN first_row = 1 THEN value END) AS before,
       max(CASE WHEN last_row = 1 THEN step END) AS last_step,
       max(CASE WHEN last_row = 1 THEN value END) AS after,
       max(CASE WHEN last_row = 1 THEN value END) - max(CASE WHEN first_row = 1 THEN value END) AS delta,
       max(CASE WHEN last_row = 1 THEN samples END) AS samples,
       count(*) AS evals
FROM (
    SELECT e.time_ms / 1000.0 AS time, r.id AS run_id, r.name AS run, a.stage, e.suite, e.metric,
           e.step, e.value, e.samples,
           row_number() OVER (PARTITION BY r.id, r.name, a.stage, e.suite, e.metric ORDER BY a.attempt, e.step, e.id) AS first_row,
           row_number() OVER (PARTITION BY r.id, r.name, a.stage, e.suite, e.metric ORDER BY a.attempt DESC, e.step DESC, e.id DESC) AS last_row
    FROM runs r
    CROSS JOIN stage_attempts a ON a.run_id = r.id
    CROSS JOIN evals e ON e.attempt_id = a.id
)
GROUP BY run_id, run, stage, suite, metric;

-- Checkpoints with their place in the chain of a stage: the previous checkpoint of the same run and
-- stage (across attempts), the attempts that resumed from it, and how many evals were run on it.
CREATE VIEW v_checkpoint_lineage AS
SELECT c.created_ms / 1000.0 AS time, r.id AS run_id, r.name AS run, a.stage, a.id AS attempt_id,
       a.attempt, c.id AS checkpoint_id, c.step, c.tokens, c.path, c.hash, c.bytes, c.complete,
       lag(c.id) OVER (PARTITION BY r.id, r.name, a.stage ORDER BY c.step, c.id) AS previous_checkpoint_id,
       (SELECT group_concat(ra.attempt) FROM stage_attempts ra WHERE ra.resumed_from = c.id) AS resumed_by_attempts,
       (SELECT count(*) FROM evals e WHERE e.checkpoint_id = c.id) AS evals
FROM runs r
CROSS JOIN stage_attempts a ON a.run_id = r.id
CROSS JOIN checkpoints c ON c.attempt_id = a.id;

-- Every artifact a run used, one row per (run, artifact): produced by one of its attempts, or reused
-- by a cached attempt from an earlier run (`origin_run` then names that run), with its consumers.
CREATE VIEW v_run_artifacts AS
SELECT ar.created_ms / 1000.0 AS time, a.run_id, r.name AS run, a.stage, a.attempt, a.status AS attempt_status,
       ar.id AS artifact_id, ar.kind, ar.path, ar.hash, ar.bytes,
       origin.run_id AS origin_run_id, origin_run.name AS origin_run,
       (SELECT group_concat(DISTINCT ca.stage) FROM artifact_inputs ai
          JOIN stage_attempts ca ON ca.id = ai.attempt_id
         WHERE ai.artifact_id = ar.id AND ca.run_id = a.run_id) AS consumed_by
FROM stage_attempts a
JOIN runs r ON r.id = a.run_id
JOIN artifacts ar ON ar.attempt_id = COALESCE(a.cached_from, a.id)
JOIN stage_attempts origin ON origin.id = ar.attempt_id
JOIN runs origin_run ON origin_run.id = origin.run_id
WHERE a.status IN ('succeeded', 'cached');

-- Where each run stands now: its newest attempt, the newest training step of it and that step's loss
-- and throughput, the heartbeat's age. `time` is the run's last sign of life.
CREATE VIEW v_run_progress AS
SELECT COALESCE(r.heartbeat_ms, r.ended_ms, r.started_ms, r.created_ms) / 1000.0 AS time,
       r.id AS run_id, r.name AS run, r.status, cur.stage, cur.attempt, cur.status AS attempt_status,
       (SELECT max(m.step) FROM metrics m WHERE m.attempt_id = cur.id AND m.key = 'loss') AS step,
       (SELECT m.value FROM metrics m WHERE m.attempt_id = cur.id AND m.key = 'loss' ORDER BY m.step DESC LIMIT 1) AS loss,
       (SELECT m.value FROM metrics m WHERE m.attempt_id = cur.id AND m.key = 'tokens_per_s' ORDER BY m.step DESC LIMIT 1) AS tokens_per_s,
       (SELECT count(*) FROM stage_attempts d WHERE d.run_id = r.id AND d.status IN ('succeeded', 'cached')) AS stages_done,
       json_array_length(r.target_stages) AS stages_targeted,
       (julianday('now') - 2440587.5) * 86400.0 - COALESCE(r.heartbeat_ms, r.created_ms) / 1000.0 AS heartbeat_age_s
FROM runs r
LEFT JOIN stage_attempts cur ON cur.id = (SELECT max(x.id) FROM stage_attempts x WHERE x.run_id = r.id);
