//! TODO: inbound/reply
