//! TODO: inbound/data
