//! TODO: spool/mod
