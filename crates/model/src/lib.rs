//! placeholder: owned by the model work; see its issue.
