//! placeholder: owned by the tokenize work; see its issue.
