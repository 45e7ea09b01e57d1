//! Python in a sandboxed child process (being written).
