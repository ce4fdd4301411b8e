//! TODO: outbound/deliver
