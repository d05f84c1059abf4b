//! Secrets and identifiers: enrolment codes, till credentials, the admin token, store/till id rules.
//!
//! Design note: every secret is 128+ bits from the thread-local CSPRNG (`rand::rng()`, ChaCha seeded from the OS)
//! and is stored only as its SHA-256 digest, so a copy of the database lets nobody upload or administer.
//! Comparisons of presented secrets run in constant time over digests. Enrolment codes are 16 characters of
//! Crockford base32 (80 bits), shown grouped `XXXX-XXXX-XXXX-XXXX`; dashes, spaces and case are ignored when
//! they are typed back, and the letters I, L and O are read as 1, 1 and 0.

use std::io::Write;
use std::path::Path;

use rand::Rng;
use sha2::{Digest, Sha256};

/// The prefix of every till credential.
pub const CREDENTIAL_PREFIX: &str = "sst_";
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const CODE_CHARS: usize = 16;

/// The lowercase hex SHA-256 of a secret: what the database keeps.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (da, db) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    da.iter().zip(db.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new enrolment code, grouped for reading aloud.
pub fn new_enrollment_code() -> String {
    let mut rng = rand::rng();
    let chars: Vec<u8> = (0..CODE_CHARS).map(|_| CROCKFORD[rng.random_range(0..32)]).collect();
    chars.chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("-")
}

/// The canonical form of a typed-in code (what is hashed), or `None` when it cannot be a code.
pub fn normalize_code(code: &str) -> Option<String> {
    let mut out = String::with_capacity(CODE_CHARS);
    for c in code.chars() {
        let c = match c.to_ascii_uppercase() {
            '-' | ' ' => continue,
            'I' | 'L' => '1',
            'O' => '0',
            c => c,
        };
        if !c.is_ascii() || !CROCKFORD.contains(&(c as u8)) || out.len() >= CODE_CHARS {
            return None;
        }
        out.push(c);
    }
    (out.len() == CODE_CHARS).then_some(out)
}

/// A new till credential: `sst_` and 32 random bytes as hex.
pub fn new_credential() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("{CREDENTIAL_PREFIX}{}", hex::encode(bytes))
}

/// A new admin token: `ssa_` and 32 random bytes as hex.
pub fn new_admin_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("ssa_{}", hex::encode(bytes))
}

/// Whether `id` is a valid store or till id: 1 to 64 characters of `[A-Za-z0-9._-]`.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses a duration like `90s`, `30m`, `24h` or `7d` (a bare number is seconds) into seconds.
pub fn parse_ttl(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: i64 = num.parse().ok()?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mult).filter(|v| *v > 0)
}

/// Reads the admin token from `path`, or makes one there (mode 0600) when the file does not exist.
pub fn load_or_create_admin_token(path: &Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => anyhow::bail!("admin token file {} is empty", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = new_admin_token();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut file = opts.open(path).with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{token}").with_context(|| format!("writing {}", path.display()))?;
    file.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_normalization() {
        let code = new_enrollment_code();
        assert_eq!(code.len(), 19);
        let norm = normalize_code(&code).unwrap();
        assert_eq!(normalize_code(&norm.to_lowercase()), Some(norm.clone()));
        assert_eq!(normalize_code(&format!(" {} ", code.replace('-', " "))), Some(norm));
        assert_eq!(normalize_code("OIL0-0000-0000-0000"), Some("0110000000000000".into()));
        for bad in ["", "ABC", "UUUU-0000-0000-0000", "0000-0000-0000-00000", "0000-0000-0000-000é"] {
            assert_eq!(normalize_code(bad), None, "{bad}");
        }
    }

    #[test]
    fn ids_and_ttls() {
        fn check(input: &str, id_ok: bool, ttl: Option<i64>) {
            assert_eq!(valid_id(input), id_ok, "id {input:?}");
            assert_eq!(parse_ttl(input), ttl, "ttl {input:?}");
        }
        check("24h", true, Some(86_400));
        check("30m", true, Some(1_800));
        check("90s", true, Some(90));
        check("7d", true, Some(604_800));
        check("15", true, Some(15));
        check("0s", true, None);
        check("S-01.a_b", true, None);
        check("", false, None);
        check("a/b", false, None);
        check("ä", false, None);
        check(&"x".repeat(65), false, None);
        check("99999999999999999999d", true, None);
    }

    #[test]
    fn secrets_are_distinct_and_compared_exactly() {
        let (a, b) = (new_credential(), new_credential());
        assert!(a.starts_with(CREDENTIAL_PREFIX) && a.len() == 68);
        assert_ne!(a, b);
        assert!(constant_time_eq(&a, &a.clone()));
        assert!(!constant_time_eq(&a, &b));
        assert_eq!(digest(&a).len(), 64);
    }

    #[cfg(unix)]
    #[test]
    fn admin_token_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let t1 = load_or_create_admin_token(&path).unwrap();
        let t2 = load_or_create_admin_token(&path).unwrap();
        assert_eq!(t1, t2);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
