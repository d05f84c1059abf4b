//! Driving the real binaries from a test: everything of [`storesync_tools::proc`] (the benchmarks use it too), plus
//! what only tests need: a test CA and hub certificate, and the rule for tests whose outside tool is missing.

use std::path::Path;

pub use storesync_tools::proc::*;

/// Makes a test CA and a server certificate for 127.0.0.1 and localhost, written into `dir`.
///
/// # Panics
/// When rcgen or the file system fails.
pub fn make_tls(dir: &Path) -> TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "storesync test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let files = TlsFiles { ca: dir.join("ca.pem"), cert: dir.join("hub-cert.pem"), key: dir.join("hub-key.pem") };
    std::fs::write(&files.ca, ca_cert.pem()).unwrap();
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

/// Whether a test may use an outside tool it needs (`found`). Without it the test is skipped, and says so on
/// stderr, unless `STORESYNC_REQUIRE_ALL=1` (CI), where a missing tool fails the test.
pub fn require_tool(what: &str, found: bool) -> bool {
    if found {
        return true;
    }
    if std::env::var("STORESYNC_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("{what} is required (STORESYNC_REQUIRE_ALL=1) but missing; .ci/run installs it");
    }
    eprintln!("SKIPPED: {what} is missing (set STORESYNC_REQUIRE_ALL=1 to make this a failure)");
    false
}
