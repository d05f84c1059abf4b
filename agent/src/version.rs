//! What this build is: its version and target triple. A leaf: every module that names the running build (the
//! self-update, the enrolment request, the status) reads it here.

/// The version this binary reports and compares. `STORESYNC_VERSION_OVERRIDE` at build time replaces the crate
/// version (release pipelines and the update tests build real binaries of other versions this way).
pub const VERSION: &str = match option_env!("STORESYNC_VERSION_OVERRIDE") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// The target triple this binary was built for (from build.rs).
pub const TARGET: &str = env!("STORESYNC_TARGET");
