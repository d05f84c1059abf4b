//! The drop folder's settings: the `inbox_*` keys of `agent.toml`, their defaults and their ranges.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;

use super::money;

/// The default [`InboxConfig::settle`].
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
/// The default [`InboxConfig::rescan`].
pub const DEFAULT_RESCAN: Duration = Duration::from_secs(10);
/// The default [`InboxConfig::incomplete_after`].
pub const DEFAULT_INCOMPLETE_AFTER: Duration = Duration::from_secs(60);
/// The default [`InboxConfig::keep_processed`]: 30 days.
pub const DEFAULT_KEEP_PROCESSED_DAYS: u64 = 30;
const DAY: Duration = Duration::from_secs(86_400);

/// The drop folder's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxConfig {
    /// Whether the watcher runs at all (`inbox_enabled`, default on).
    pub enabled: bool,
    /// The folder (`inbox_dir`, `--inbox-dir`, `STORESYNC_INBOX_DIR`; default `<data-dir>/inbox`; a relative
    /// path is taken relative to the data dir).
    pub dir: PathBuf,
    /// How long a file's size and modification time must stay unchanged before it is read (`inbox_settle_ms`).
    pub settle: Duration,
    /// How often the folder is listed even when no change notification came (`inbox_rescan_s`): the safety net
    /// for notifications a platform or a network share does not deliver.
    pub rescan: Duration,
    /// How long an incomplete-looking file (no final newline, no closing root tag) is waited for before it is
    /// read anyway (`inbox_incomplete_after_s`).
    pub incomplete_after: Duration,
    /// The currency of CSV and POSLog files that do not name one (`inbox_currency`).
    pub currency: Option<String>,
    /// How long a file stays in `processed/` after it was processed (`inbox_keep_processed_days`; `None`, from 0,
    /// keeps them forever). Its records are in the journal, which is the record; the file is only a courtesy to
    /// whoever wants to look at what the POS dropped. Rejected files are never deleted.
    pub keep_processed: Option<Duration>,
}

impl InboxConfig {
    /// The defaults, with the folder in `data_dir`.
    pub fn default_in(data_dir: &Path) -> InboxConfig {
        InboxConfig {
            enabled: true,
            dir: data_dir.join("inbox"),
            settle: DEFAULT_SETTLE,
            rescan: DEFAULT_RESCAN,
            incomplete_after: DEFAULT_INCOMPLETE_AFTER,
            currency: None,
            keep_processed: Some(DAY * DEFAULT_KEEP_PROCESSED_DAYS as u32),
        }
    }

    /// Resolves the `inbox_*` keys of `agent.toml` (and the `--inbox-dir` override), checking their ranges.
    pub fn resolve(data_dir: &Path, keys: Keys) -> anyhow::Result<InboxConfig> {
        let mut cfg = InboxConfig::default_in(data_dir);
        if let Some(enabled) = keys.enabled {
            cfg.enabled = enabled;
        }
        if let Some(dir) = keys.dir {
            if dir.as_os_str().is_empty() {
                bail!("inbox_dir must not be empty");
            }
            cfg.dir = data_dir.join(dir);
        }
        if let Some(ms) = keys.settle_ms {
            if !(100..=600_000).contains(&ms) {
                bail!("inbox_settle_ms must be between 100 and 600000");
            }
            cfg.settle = Duration::from_millis(ms);
        }
        if let Some(s) = keys.rescan_s {
            if !(1..=3600).contains(&s) {
                bail!("inbox_rescan_s must be between 1 and 3600");
            }
            cfg.rescan = Duration::from_secs(s);
        }
        if let Some(s) = keys.incomplete_after_s {
            if !(1..=86_400).contains(&s) {
                bail!("inbox_incomplete_after_s must be between 1 and 86400");
            }
            cfg.incomplete_after = Duration::from_secs(s);
        }
        if cfg.incomplete_after < cfg.settle {
            bail!("inbox_incomplete_after_s must not be shorter than inbox_settle_ms");
        }
        if let Some(days) = keys.keep_processed_days {
            if days > 3650 {
                bail!("inbox_keep_processed_days must be between 0 (keep forever) and 3650");
            }
            cfg.keep_processed = (days > 0).then(|| DAY * days as u32);
        }
        if let Some(c) = keys.currency {
            money::exponent(&c).map_err(|e| anyhow::anyhow!("inbox_currency: {}", e.detail))?;
            cfg.currency = Some(c);
        }
        Ok(cfg)
    }
}

/// The `inbox_*` settings as given (each optional).
#[derive(Debug, Clone, Default)]
pub struct Keys {
    pub enabled: Option<bool>,
    pub dir: Option<PathBuf>,
    pub settle_ms: Option<u64>,
    pub rescan_s: Option<u64>,
    pub incomplete_after_s: Option<u64>,
    pub currency: Option<String>,
    pub keep_processed_days: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_ranges_are_checked() {
        let dir = Path::new("/data");
        let ok = InboxConfig::resolve(dir, Keys::default()).unwrap();
        assert_eq!(ok, InboxConfig::default_in(dir));
        assert_eq!(ok.dir, Path::new("/data/inbox"));
        let rel = InboxConfig::resolve(dir, Keys { dir: Some("drop".into()), ..Keys::default() }).unwrap();
        assert_eq!(rel.dir, Path::new("/data/drop"));
        let abs = InboxConfig::resolve(dir, Keys { dir: Some("/pos/out".into()), ..Keys::default() }).unwrap();
        assert_eq!(abs.dir, Path::new("/pos/out"));
        let bad = [
            Keys { settle_ms: Some(50), ..Keys::default() },
            Keys { rescan_s: Some(0), ..Keys::default() },
            Keys { incomplete_after_s: Some(0), ..Keys::default() },
            Keys { settle_ms: Some(5000), incomplete_after_s: Some(2), ..Keys::default() },
            Keys { currency: Some("EURO".into()), ..Keys::default() },
            Keys { dir: Some(PathBuf::new()), ..Keys::default() },
            Keys { keep_processed_days: Some(3651), ..Keys::default() },
        ];
        for keys in bad {
            assert!(InboxConfig::resolve(dir, keys.clone()).is_err(), "{keys:?}");
        }
        let eur = InboxConfig::resolve(dir, Keys { currency: Some("EUR".into()), ..Keys::default() }).unwrap();
        assert_eq!(eur.currency.as_deref(), Some("EUR"));
        assert_eq!(ok.keep_processed, Some(Duration::from_secs(30 * 86_400)));
        let forever = InboxConfig::resolve(dir, Keys { keep_processed_days: Some(0), ..Keys::default() }).unwrap();
        assert_eq!(forever.keep_processed, None);
        let week = InboxConfig::resolve(dir, Keys { keep_processed_days: Some(7), ..Keys::default() }).unwrap();
        assert_eq!(week.keep_processed, Some(Duration::from_secs(7 * 86_400)));
    }
}
