//! Benchmarks of the lb workspace.
