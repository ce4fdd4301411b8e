//! TODO: dsn
