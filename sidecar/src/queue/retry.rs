//! TODO: queue/retry
