//! Release builds for Linux place the functions the sidecar runs together, before the rest of its
//! code (`layout/hot.ld`, an `INSERT BEFORE .text` linker script written by
//! `layout/generate.py`). Every page of code that ran stays resident, and the kernel maps code 64
//! KiB at a time, so code that runs spread over the binary costs memory in every pod. Measured in
//! docs/benchmarks.md ("Memory after a burst"). Both GNU ld and lld read the script.

fn main() {
    println!("cargo:rerun-if-changed=layout/hot.ld");
    println!("cargo:rerun-if-env-changed=MAILROOM_LAYOUT");
    // `make layout` profiles a binary in the default layout: valgrind reads function symbols
    // from `.text` only.
    let default_layout = std::env::var("MAILROOM_LAYOUT").is_ok_and(|v| v == "default");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release") && !default_layout;
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if release && linux {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("layout/hot.ld");
        if script.is_file() {
            println!(
                "cargo:rustc-link-arg-bin=mailroom-sidecar=-Wl,-T,{}",
                script.display()
            );
        } else {
            println!("cargo:warning=layout/hot.ld is missing (make layout): default code layout");
        }
    }
}
