//! `status` and `runs`: plain-text tables over the ledger.

use crate::lock::RunLock;
use crate::workspace::Workspace;
use std::fmt::Write;
use tardbot_ledger::{AttemptStatus, Ledger, LedgerError, Run, RunStatus, StageAttempt, now_ms};

/// The status to show: a `running` run whose lock no live process holds was killed.
pub fn effective_status(run: &Run, workspace: &Workspace) -> String {
    if run.status == RunStatus::Running && !RunLock::is_held(&workspace.run_dir(&run.name)) {
        return "interrupted (process gone)".into();
    }
    run.status.to_string()
}

fn duration(start: i64, end: Option<i64>) -> String {
    let ms = end.unwrap_or_else(now_ms).saturating_sub(start).max(0);
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

fn attempt_note(a: &StageAttempt, ledger_attempt_run: &dyn Fn(i64) -> Option<String>) -> String {
    match a.status {
        AttemptStatus::Cached => match a.cached_from.and_then(ledger_attempt_run) {
            Some(run) => format!("cached from {run}"),
            None => "cached".into(),
        },
        AttemptStatus::Failed | AttemptStatus::Interrupted => {
            let mut e = a.error.clone().unwrap_or_default();
            if e.len() > 90 {
                e.truncate(87);
                e.push_str("...");
            }
            e
        }
        _ if a.resumed_from.is_some() => "resumed from a checkpoint".into(),
        _ => String::new(),
    }
}

/// `status [RUN]`: the run, then one line per stage attempt.
pub async fn status(
    ledger: &Ledger,
    workspace: &Workspace,
    run: &Run,
) -> Result<String, LedgerError> {
    let attempts = ledger.attempts(run.id).await?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}  {}  started {}  {}",
        run.name,
        effective_status(run, workspace),
        run.started_ms
            .map_or("-".into(), |t| format!("{}s ago", (now_ms() - t) / 1000)),
        run.started_ms.map_or(String::new(), |s| format!(
            "duration {}",
            duration(s, run.ended_ms.or(run.heartbeat_ms))
        )),
    );
    // As wide as the longest stage name (search_index), at least the header's.
    let w = attempts
        .iter()
        .map(|a| a.stage.len())
        .max()
        .unwrap_or(0)
        .max(10);
    let _ = writeln!(
        out,
        "{:<w$} {:>7}  {:<12} {:>9}  note",
        "stage", "attempt", "state", "duration"
    );
    let mut origin = std::collections::HashMap::new();
    for a in &attempts {
        if let Some(src) = a.cached_from
            && !origin.contains_key(&src)
        {
            let run_name = match ledger.attempt(src).await {
                Ok(att) => ledger
                    .run(&att.run_id.to_string())
                    .await
                    .ok()
                    .map(|r| r.name),
                Err(_) => None,
            };
            origin.insert(src, run_name);
        }
    }
    let lookup = |id: i64| origin.get(&id).cloned().flatten();
    for a in &attempts {
        let _ = writeln!(
            out,
            "{:<w$} {:>7}  {:<12} {:>9}  {}",
            a.stage,
            a.attempt,
            a.status.as_str(),
            duration(a.started_ms, a.ended_ms.or(a.heartbeat_ms)),
            attempt_note(a, &lookup)
        );
    }
    if attempts.is_empty() {
        let _ = writeln!(out, "(no stage has started)");
    }
    Ok(out)
}

/// `runs`: one line per run, newest first.
pub async fn runs(ledger: &Ledger, workspace: &Workspace) -> Result<String, LedgerError> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<28} {:>9}  {:<20} targets",
        "run", "status", "duration", "created (unix s)"
    );
    for r in ledger.runs().await? {
        let _ = writeln!(
            out,
            "{:<8} {:<28} {:>9}  {:<20} {}",
            r.name,
            effective_status(&r, workspace),
            r.started_ms
                .map_or("-".into(), |s| duration(s, r.ended_ms.or(r.heartbeat_ms))),
            r.created_ms / 1000,
            r.target_stages.join(",")
        );
    }
    Ok(out)
}
