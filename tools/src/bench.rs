//! Small helpers the benchmark binaries share: statistics over samples, and facts about the machine they ran on.

use std::path::Path;
use std::time::Duration;

/// Nearest-rank percentile `p` (0–100) of sorted samples; NaN when there are none.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of the samples that are numbers; NaN when none is.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The samples, sorted.
pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// `df -P -T` of `dir`: its device and file system type.
pub fn device_of(dir: &Path) -> (String, String) {
    let out = std::process::Command::new("df").arg("-P").arg("-T").arg(dir).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let line = text.lines().nth(1).unwrap_or("");
    let mut cols = line.split_whitespace();
    (cols.next().unwrap_or("?").to_owned(), cols.next().unwrap_or("?").to_owned())
}

/// `s` without its ANSI colour sequences (`ESC [ ... m`), for reading a coloured log.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_medians_and_colours() {
        let v = sorted(vec![5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((pct(&v, 50.0), pct(&v, 99.0), pct(&v, 0.0)), (3.0, 5.0, 1.0));
        assert!(pct(&[], 50.0).is_nan());
        assert_eq!(median(vec![4.0, f64::NAN, 1.0, 2.0]), 2.0);
        assert!(median(vec![f64::NAN]).is_nan());
        assert_eq!(strip_ansi("\u{1b}[2mhub\u{1b}[0m ok"), "hub ok");
    }
}
