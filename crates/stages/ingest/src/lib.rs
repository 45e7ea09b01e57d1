//! placeholder: owned by the ingest work; see its issue.
