//! TODO: outbound/capture
