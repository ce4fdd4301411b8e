//! `mailroom-sidecar`: wiring only (settings, config, app, signals).

fn main() {}
