//! TODO: dkim
