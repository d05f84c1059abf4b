//! Records the target triple the agent is built for, so a self-update can refuse a release built for another.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo:rustc-env=STORESYNC_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
