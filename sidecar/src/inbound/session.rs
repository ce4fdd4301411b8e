//! TODO: inbound/session
