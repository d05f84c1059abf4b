//! The fleet view head office watches (issue #7): which stores are online, stale or offline, what each till has
//! waiting and since when, when that backlog will be drained, and what needs someone's attention.
//!
//! - Link state is read from the hub's own clock and each till's `last_seen` (the hub time of its last upload,
//!   update check or report), against [`FleetThresholds`]. A store is as online as its most recently seen till;
//!   a revoked till counts for nothing.
//! - A till's backlog is `reported_seq - hub_seq` as of its last upload: the events it said it had journaled that
//!   the hub does not hold. (The `backlog` an upload carries is counted before that upload's own batch.)
//! - The drain forecast uses the till's progress samples ([`crate::storage::ProgressSample`], one per
//!   [`crate::storage::SAMPLE_SPACING_S`] of uploads) over the last `forecast_window_s` before its last upload:
//!   the backlog's net fall per second (uploaded minus newly sold) gives the time left; a till that is not online
//!   waits for its link, whatever its rate was. Everything is computed from the samples' own times, so the same
//!   stored state always gives the same forecast.
//! - Everything here is pure: [`fleet`] takes what storage holds and the time, and answers the view the
//!   dashboard draws and `GET /v1/admin/fleet` serves.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::storage::{ProgressSample, Rollout, StoreView, TillSamples, TillView};
use crate::time_fmt::rfc3339;

/// When a store counts as stale or offline, and when an offline store raises an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FleetThresholds {
    /// No contact for this long: stale (the agent heartbeats every 15 s and backs off to 60 s).
    pub stale_after_s: u64,
    /// No contact for this long: offline.
    pub offline_after_s: u64,
    /// Offline for this long: an `offline` alert.
    pub alert_offline_after_s: u64,
    /// How far back the drain forecast looks.
    pub forecast_window_s: u64,
}

impl Default for FleetThresholds {
    fn default() -> FleetThresholds {
        FleetThresholds {
            stale_after_s: 120,
            offline_after_s: 600,
            alert_offline_after_s: 1800,
            forecast_window_s: 300,
        }
    }
}

impl FleetThresholds {
    /// Checks that the thresholds are in order: `0 < stale ≤ offline ≤ alert`, and a window of at least
    /// twice the sample spacing.
    ///
    /// # Errors
    /// What is out of order, for the operator.
    pub fn check(&self) -> Result<(), String> {
        if self.stale_after_s == 0 || self.stale_after_s > self.offline_after_s {
            return Err(format!(
                "stale_after_s ({}) must be above 0 and at most offline_after_s ({})",
                self.stale_after_s, self.offline_after_s
            ));
        }
        if self.offline_after_s > self.alert_offline_after_s {
            return Err(format!(
                "offline_after_s ({}) must be at most alert_offline_after_s ({})",
                self.offline_after_s, self.alert_offline_after_s
            ));
        }
        let min_window = 2 * crate::storage::SAMPLE_SPACING_S.unsigned_abs();
        if self.forecast_window_s < min_window {
            return Err(format!("forecast_window_s ({}) must be at least {min_window}", self.forecast_window_s));
        }
        Ok(())
    }
}

/// How recently a till (or store) was heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Online,
    Stale,
    Offline,
    /// Enrolment code issued or redeemed, never uploaded.
    NeverSeen,
}

/// The link state of something last seen at `last_seen`, at `now`.
pub fn link_state(last_seen: Option<i64>, now: i64, t: &FleetThresholds) -> LinkState {
    let Some(seen) = last_seen else { return LinkState::NeverSeen };
    let age = now.saturating_sub(seen).max(0).unsigned_abs();
    if age >= t.offline_after_s {
        LinkState::Offline
    } else if age >= t.stale_after_s {
        LinkState::Stale
    } else {
        LinkState::Online
    }
}

/// What the forecast says about a till's backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForecastStatus {
    /// Draining, at `eta_s`. (Listed first: in a store's forecast, a worse status wins.)
    Draining,
    /// Nothing waiting.
    Drained,
    /// Not enough history in the window yet to tell.
    Measuring,
    /// Online, but the backlog did not fall over the window.
    Stalled,
    /// Online, and the backlog grew over the window: the till sells faster than it uploads.
    Growing,
    /// Not online: nothing drains until the link is back.
    WaitingForLink,
}

/// A till's (or store's) drain forecast.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Forecast {
    pub status: ForecastStatus,
    /// Seconds from `from` until the backlog is drained, at the window's net rate (`draining` only).
    pub eta_s: Option<u64>,
    /// When that is (RFC 3339, hub clock).
    pub drain_at: Option<String>,
    /// The moment the forecast counts from: the till's last upload.
    pub from: Option<String>,
    /// Events per second the hub stored from the till over the window.
    pub upload_rate_eps: Option<f64>,
    /// Events per second the till journaled over the window.
    pub incoming_rate_eps: Option<f64>,
    /// The window the rates cover, in seconds.
    pub window_s: Option<u64>,
}

impl Forecast {
    fn bare(status: ForecastStatus) -> Forecast {
        Forecast {
            status,
            eta_s: None,
            drain_at: None,
            from: None,
            upload_rate_eps: None,
            incoming_rate_eps: None,
            window_s: None,
        }
    }
}

fn backlog_of(p: &ProgressSample) -> u64 {
    p.reported_seq.saturating_sub(p.hub_seq)
}

/// Rounds a rate to two decimals for display.
fn rate(events: f64, seconds: f64) -> f64 {
    (events / seconds * 100.0).round() / 100.0
}

/// The drain forecast of a till whose last upload left it at `current`, from its `samples` (oldest first, any
/// age), in `link` state.
pub fn forecast(samples: &[ProgressSample], current: ProgressSample, link: LinkState, window_s: u64) -> Forecast {
    let left = backlog_of(&current);
    if left == 0 {
        return Forecast::bare(ForecastStatus::Drained);
    }
    if link != LinkState::Online {
        return Forecast { from: Some(rfc3339(current.at)), ..Forecast::bare(ForecastStatus::WaitingForLink) };
    }
    let start = current.at.saturating_sub(i64::try_from(window_s).unwrap_or(i64::MAX));
    let first = samples.iter().find(|p| p.at >= start && p.at < current.at);
    let Some(first) = first.filter(|p| current.at - p.at >= crate::storage::SAMPLE_SPACING_S) else {
        return Forecast { from: Some(rfc3339(current.at)), ..Forecast::bare(ForecastStatus::Measuring) };
    };
    let span = (current.at - first.at) as f64;
    let uploaded = current.hub_seq.saturating_sub(first.hub_seq) as f64;
    let incoming = current.reported_seq.saturating_sub(first.reported_seq) as f64;
    let before = backlog_of(first);
    let mut out = Forecast {
        status: ForecastStatus::Stalled,
        eta_s: None,
        drain_at: None,
        from: Some(rfc3339(current.at)),
        upload_rate_eps: Some(rate(uploaded, span)),
        incoming_rate_eps: Some(rate(incoming, span)),
        window_s: Some((current.at - first.at).unsigned_abs()),
    };
    if left > before {
        out.status = ForecastStatus::Growing;
    } else if left < before {
        // Whole seconds, rounded up: `left / ((before - left) / span)`.
        let fell = u128::from(before - left);
        let span_s = u128::from((current.at - first.at).unsigned_abs());
        let eta = (u128::from(left) * span_s).div_ceil(fell);
        let eta = u64::try_from(eta).unwrap_or(u64::MAX);
        out.status = ForecastStatus::Draining;
        out.eta_s = Some(eta);
        out.drain_at = Some(rfc3339(current.at.saturating_add(i64::try_from(eta).unwrap_or(i64::MAX))));
    }
    out
}

/// One till in the fleet view.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TillRow {
    pub till: String,
    pub state: LinkState,
    pub last_seen: Option<String>,
    /// Events the till had journaled at its last upload that the hub does not hold.
    pub backlog: u64,
    /// When the oldest of them was journaled, as the till reported its age (null when nothing waits).
    pub oldest_unsynced_at: Option<String>,
    pub last_seq: u64,
    pub hub_seq: u64,
    pub version: String,
    pub chain_ok: bool,
    pub last_error: Option<String>,
    pub quarantined: u64,
    pub enrolled: bool,
    pub revoked: bool,
    pub forecast: Forecast,
}

/// One store in the fleet view.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StoreRow {
    pub store: String,
    /// The state of its most recently seen till.
    pub state: LinkState,
    pub last_seen: Option<String>,
    /// The sum of its tills' backlogs.
    pub backlog: u64,
    /// The oldest of its tills' `oldest_unsynced_at`.
    pub oldest_unsynced_at: Option<String>,
    /// Every till's chain verifies.
    pub chain_ok: bool,
    /// The last error of a till, the most recently seen first.
    pub last_error: Option<String>,
    /// Agent versions its tills run, sorted.
    pub versions: Vec<String>,
    /// `canary` or `general` for the newest rollout's canary ring; null with no rollout.
    pub ring: Option<&'static str>,
    /// Bytes its CRDT document takes at the hub.
    pub doc_bytes: u64,
    /// The worst of its tills' forecasts (the latest drain when all drain).
    pub forecast: Forecast,
    /// How many alerts it raises.
    pub alerts: usize,
    pub tills: Vec<TillRow>,
}

/// Something head office should look at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Alert {
    /// `chain_broken`, `offline`, `backlog_growing`, `quarantined` (a till's events the hub cannot process) or
    /// `dead_letters` (events a subscription gave up delivering).
    pub kind: &'static str,
    /// `critical` or `warning`.
    pub severity: &'static str,
    /// The store, for the alerts about one (all but `dead_letters`).
    pub store: Option<String>,
    pub till: Option<String>,
    /// The subscription, for `dead_letters`.
    pub subscription: Option<String>,
    pub detail: String,
}

/// Counts over the fleet; `online + stale + offline + never_seen = stores`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub stores: usize,
    pub online: usize,
    pub stale: usize,
    pub offline: usize,
    pub never_seen: usize,
    pub tills: usize,
    /// Events waiting at all tills.
    pub backlog: u64,
    /// Tills with a backlog.
    pub tills_with_backlog: usize,
    pub alerts: usize,
}

/// `GET /v1/admin/fleet`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FleetView {
    pub generated_at: String,
    pub thresholds: FleetThresholds,
    pub summary: Summary,
    pub stores: Vec<StoreRow>,
    pub alerts: Vec<Alert>,
}

/// What storage holds that the fleet view is made of.
#[derive(Debug, Clone, Default)]
pub struct FleetInput {
    pub stores: Vec<StoreView>,
    /// Progress samples of the last `forecast_window_s` (at least), by store then till.
    pub samples: Vec<TillSamples>,
    pub doc_sizes: BTreeMap<String, u64>,
    pub rollouts: Vec<Rollout>,
    /// Subscriptions with their dead-letter counts ([`crate::storage::OutboxStore::list_subscriptions`]).
    pub subscriptions: Vec<crate::storage::Subscription>,
}

/// The fleet as it stands at `now`.
pub fn fleet(input: &FleetInput, now: i64, t: &FleetThresholds) -> FleetView {
    let samples: BTreeMap<(&str, &str), &[ProgressSample]> =
        input.samples.iter().map(|s| ((s.store.as_str(), s.till.as_str()), s.samples.as_slice())).collect();
    let newest_rollout = input.rollouts.iter().max_by_key(|r| (r.started_at, r.target.as_str()));
    let mut alerts = Vec::new();
    let mut summary = Summary::default();
    let mut stores = Vec::with_capacity(input.stores.len());
    for s in &input.stores {
        let tills: Vec<TillRow> = s
            .tills
            .iter()
            .map(|v| till_row(v, samples.get(&(s.store.as_str(), v.till.as_str())).copied().unwrap_or(&[]), now, t))
            .collect();
        let before = alerts.len();
        let row = store_row(s, tills, input, newest_rollout, now, t, &mut alerts);
        let row = StoreRow { alerts: alerts.len() - before, ..row };
        summary.stores += 1;
        match row.state {
            LinkState::Online => summary.online += 1,
            LinkState::Stale => summary.stale += 1,
            LinkState::Offline => summary.offline += 1,
            LinkState::NeverSeen => summary.never_seen += 1,
        }
        let live = row.tills.iter().filter(|r| !r.revoked);
        for r in live {
            summary.tills += 1;
            summary.backlog += r.backlog;
            summary.tills_with_backlog += usize::from(r.backlog > 0);
        }
        stores.push(row);
    }
    for sub in input.subscriptions.iter().filter(|s| s.dead_letters > 0) {
        alerts.push(Alert {
            kind: "dead_letters",
            severity: "warning",
            store: None,
            till: None,
            subscription: Some(sub.spec.id.clone()),
            detail: format!(
                "{} events given up delivering to {} (replay them once it is fixed)",
                sub.dead_letters, sub.spec.url
            ),
        });
    }
    alerts.sort_by_key(|a| (a.severity != "critical", a.kind, a.store.clone(), a.till.clone(), a.subscription.clone()));
    summary.alerts = alerts.len();
    FleetView { generated_at: rfc3339(now), thresholds: *t, summary, stores, alerts }
}

fn till_row(v: &TillView, samples: &[ProgressSample], now: i64, t: &FleetThresholds) -> TillRow {
    let state = link_state(v.last_seen, now, t);
    let current = ProgressSample { at: v.last_seen.unwrap_or(0), reported_seq: v.last_seq, hub_seq: v.hub_seq };
    let backlog = backlog_of(&current);
    let oldest = v
        .last_seen
        .filter(|_| backlog > 0)
        .map(|seen| rfc3339(seen.saturating_sub(i64::try_from(v.oldest_unsynced_age_s).unwrap_or(i64::MAX))));
    TillRow {
        till: v.till.clone(),
        state,
        last_seen: v.last_seen.map(rfc3339),
        backlog,
        oldest_unsynced_at: oldest,
        last_seq: v.last_seq,
        hub_seq: v.hub_seq,
        version: v.version.clone(),
        chain_ok: v.chain_ok,
        last_error: v.last_error.clone(),
        quarantined: v.quarantined,
        enrolled: v.enrolled,
        revoked: v.revoked,
        forecast: forecast(samples, current, state, t.forecast_window_s),
    }
}

fn store_row(
    s: &StoreView,
    tills: Vec<TillRow>,
    input: &FleetInput,
    rollout: Option<&Rollout>,
    now: i64,
    t: &FleetThresholds,
    alerts: &mut Vec<Alert>,
) -> StoreRow {
    let live: Vec<(&TillView, &TillRow)> = s.tills.iter().zip(&tills).filter(|(v, _)| !v.revoked).collect();
    let last_seen = live.iter().filter_map(|(v, _)| v.last_seen).max();
    let state = link_state(last_seen, now, t);
    let mut by_recency = live.clone();
    by_recency.sort_by_key(|(v, _)| std::cmp::Reverse(v.last_seen));
    let last_error = by_recency.iter().find_map(|(v, _)| v.last_error.clone());
    let mut versions: Vec<String> = live.iter().map(|(v, _)| v.version.clone()).filter(|v| !v.is_empty()).collect();
    versions.sort();
    versions.dedup();
    let oldest = live.iter().filter_map(|(_, r)| r.oldest_unsynced_at.clone()).min();
    let forecast = store_forecast(live.iter().map(|(_, r)| &r.forecast));
    let store = s.store.clone();
    if state == LinkState::Offline
        && let Some(seen) = last_seen
        && now.saturating_sub(seen).unsigned_abs() >= t.alert_offline_after_s
    {
        alerts.push(Alert {
            kind: "offline",
            severity: "warning",
            store: Some(store.clone()),
            till: None,
            subscription: None,
            detail: format!("no contact for {}", human_duration(now.saturating_sub(seen).unsigned_abs())),
        });
    }
    for (_, r) in &live {
        let mut raise = |kind, severity, detail: String| {
            alerts.push(Alert {
                kind,
                severity,
                store: Some(store.clone()),
                till: Some(r.till.clone()),
                subscription: None,
                detail,
            });
        };
        if !r.chain_ok {
            let why = r.last_error.clone().unwrap_or_else(|| "the chain does not verify".into());
            raise("chain_broken", "critical", format!("uploads refused: {why}"));
        }
        if r.forecast.status == ForecastStatus::Growing {
            raise("backlog_growing", "warning", format!("{} events waiting and rising", r.backlog));
        }
        if r.quarantined > 0 {
            raise("quarantined", "warning", format!("{} events held in quarantine", r.quarantined));
        }
    }
    StoreRow {
        store: s.store.clone(),
        state,
        last_seen: last_seen.map(rfc3339),
        backlog: live.iter().map(|(_, r)| r.backlog).sum(),
        oldest_unsynced_at: oldest,
        chain_ok: live.iter().all(|(v, _)| v.chain_ok),
        last_error,
        versions,
        ring: rollout.map(|r| if crate::rollout::in_canary(&s.store, r.canary_percent) { "canary" } else { "general" }),
        doc_bytes: input.doc_sizes.get(&s.store).copied().unwrap_or(0),
        forecast,
        alerts: 0,
        tills,
    }
}

/// A store's forecast: the worst status among its tills; when all that wait are draining, the latest drain.
fn store_forecast<'a>(tills: impl Iterator<Item = &'a Forecast>) -> Forecast {
    let mut worst: Option<&Forecast> = None;
    for f in tills.filter(|f| f.status != ForecastStatus::Drained) {
        worst = match worst {
            Some(w) if (w.status, w.eta_s) >= (f.status, f.eta_s) => Some(w),
            _ => Some(f),
        };
    }
    worst.cloned().unwrap_or_else(|| Forecast::bare(ForecastStatus::Drained))
}

/// `2 h 10 min`, `7 min`, `45 s`.
pub fn human_duration(s: u64) -> String {
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: FleetThresholds = FleetThresholds {
        stale_after_s: 120,
        offline_after_s: 600,
        alert_offline_after_s: 1800,
        forecast_window_s: 300,
    };

    fn p(at: i64, reported_seq: u64, hub_seq: u64) -> ProgressSample {
        ProgressSample { at, reported_seq, hub_seq }
    }

    #[test]
    fn link_states_follow_the_thresholds() {
        let check = |seen: Option<i64>, want| assert_eq!(link_state(seen, 10_000, &T), want, "{seen:?}");
        check(None, LinkState::NeverSeen);
        check(Some(10_000), LinkState::Online);
        check(Some(10_000 + 30), LinkState::Online); // a clock step back is not an outage
        check(Some(10_000 - 119), LinkState::Online);
        check(Some(10_000 - 120), LinkState::Stale);
        check(Some(10_000 - 599), LinkState::Stale);
        check(Some(10_000 - 600), LinkState::Offline);
    }

    #[test]
    fn thresholds_must_be_in_order() {
        assert!(T.check().is_ok());
        let bad = [
            FleetThresholds { stale_after_s: 0, ..T },
            FleetThresholds { stale_after_s: 601, ..T },
            FleetThresholds { offline_after_s: 1801, ..T },
            FleetThresholds { forecast_window_s: 19, ..T },
        ];
        for b in bad {
            assert!(b.check().is_err(), "{b:?}");
        }
    }

    #[test]
    fn forecasts() {
        let check = |samples: &[ProgressSample], current, link, want: (ForecastStatus, Option<u64>)| {
            let f = forecast(samples, current, link, 300);
            assert_eq!((f.status, f.eta_s), want, "{samples:?} -> {current:?}: {f:?}");
        };
        use ForecastStatus::*;
        let now = 1_000_000;
        // 800 waiting 240 s ago, 220 now, 20 more sold meanwhile: net fall 580 / 240 s, 220 left: 91.03 s -> 92.
        let draining = [p(now - 240, 1000, 200), p(now - 120, 1010, 500)];
        check(&draining, p(now, 1020, 800), LinkState::Online, (Draining, Some(92)));
        let f = forecast(&draining, p(now, 1020, 800), LinkState::Online, 300);
        assert_eq!((f.upload_rate_eps, f.incoming_rate_eps, f.window_s), (Some(2.5), Some(0.08), Some(240)));
        assert_eq!(f.drain_at.as_deref(), Some(rfc3339(now + 92).as_str()));
        // Samples outside the window do not count; the oldest inside it does.
        let old = [p(now - 900, 5000, 0), p(now - 200, 1000, 400)];
        check(&old, p(now, 1000, 900), LinkState::Online, (Draining, Some(40)));
        check(&draining, p(now, 1020, 1020), LinkState::Online, (Drained, None));
        check(&draining, p(now, 1020, 800), LinkState::Stale, (WaitingForLink, None));
        check(&draining, p(now, 1020, 800), LinkState::Offline, (WaitingForLink, None));
        check(&[p(now - 240, 1000, 200)], p(now, 1400, 500), LinkState::Online, (Growing, None));
        check(&[p(now - 240, 1000, 200)], p(now, 1300, 500), LinkState::Online, (Stalled, None));
        check(&[], p(now, 1300, 500), LinkState::Online, (Measuring, None));
        check(&[p(now - 5, 1000, 200)], p(now, 1300, 500), LinkState::Online, (Measuring, None));
        // A sample at the current upload's own time is the current point, not history.
        check(&[p(now, 1300, 500)], p(now, 1300, 500), LinkState::Online, (Measuring, None));
    }

    fn till(name: &str, seen: Option<i64>, last_seq: u64, hub_seq: u64) -> TillView {
        TillView {
            till: name.into(),
            last_seen: seen,
            last_seq,
            hub_seq,
            backlog: 0,
            oldest_unsynced_age_s: 60,
            version: "0.1.0".into(),
            chain_ok: true,
            last_error: None,
            enrolled: seen.is_some(),
            revoked: false,
            quarantined: 0,
        }
    }

    fn subscription(id: &str, dead_letters: u64) -> crate::storage::Subscription {
        crate::storage::Subscription {
            spec: crate::storage::NewSubscription {
                id: id.into(),
                kind: "webhook".into(),
                url: "https://erp.example/hook".into(),
                secret: "0123456789abcdef".into(),
                kinds: vec![],
                stores: vec![],
                batch_size: 100,
                max_attempts: 25,
                stream: String::new(),
                subject_prefix: String::new(),
            },
            cursor: 0,
            created_at: 0,
            last_error: None,
            last_delivery_at: None,
            lag: 0,
            dead_letters,
        }
    }

    #[test]
    fn the_fleet_view_sums_states_backlogs_and_alerts() {
        let now = 2_000_000;
        let mut broken = till("T1", Some(now - 5), 10, 4);
        broken.chain_ok = false;
        broken.last_error = Some("chain_broken: seq 5".into());
        let mut quarantined = till("T2", Some(now - 5), 10, 10);
        quarantined.quarantined = 3;
        let mut revoked = till("T9", Some(now), 100, 0);
        revoked.revoked = true;
        let input = FleetInput {
            stores: vec![
                StoreView { store: "A".into(), tills: vec![till("T1", Some(now - 10), 50, 20), revoked] },
                StoreView { store: "B".into(), tills: vec![till("T1", Some(now - 200), 5, 5)] },
                StoreView { store: "C".into(), tills: vec![till("T1", Some(now - 7200), 30, 0)] },
                StoreView { store: "D".into(), tills: vec![till("T1", None, 0, 0)] },
                StoreView { store: "E".into(), tills: vec![broken, quarantined] },
                StoreView {
                    store: "F".into(),
                    tills: vec![till("T1", Some(now - 700), 1, 1), till("T2", Some(now - 1), 1, 1)],
                },
            ],
            samples: vec![TillSamples { store: "A".into(), till: "T1".into(), samples: vec![p(now - 110, 50, 0)] }],
            doc_sizes: BTreeMap::from([("A".to_owned(), 1234)]),
            rollouts: vec![],
            subscriptions: vec![subscription("sub_erp", 2), subscription("sub_crm", 0)],
        };
        let v = fleet(&input, now, &T);
        let s = v.summary;
        assert_eq!((s.stores, s.online, s.stale, s.offline, s.never_seen), (6, 3, 1, 1, 1));
        assert_eq!((s.tills, s.backlog, s.tills_with_backlog), (8, 30 + 30 + 6, 3));
        let a = &v.stores[0];
        assert_eq!((a.backlog, a.doc_bytes, a.ring, a.tills.len()), (30, 1234, None, 2));
        // 50 waiting 100 s before its last upload, 30 at it: 20 per 100 s, 150 s left.
        assert_eq!((a.forecast.status, a.forecast.eta_s), (ForecastStatus::Draining, Some(150)));
        assert_eq!(a.oldest_unsynced_at.as_deref(), Some(rfc3339(now - 10 - 60).as_str()));
        assert_eq!(v.stores[1].oldest_unsynced_at, None);
        assert_eq!(v.stores[2].forecast.status, ForecastStatus::WaitingForLink);
        assert_eq!(v.stores[3].state, LinkState::NeverSeen);
        assert_eq!(v.stores[5].state, LinkState::Online, "a store is as online as its freshest till");
        let kinds: Vec<(&str, &str, Option<&str>)> =
            v.alerts.iter().map(|a| (a.kind, a.store.as_deref().unwrap_or(""), a.till.as_deref())).collect();
        assert_eq!(
            kinds,
            vec![
                ("chain_broken", "E", Some("T1")),
                ("dead_letters", "", None),
                ("offline", "C", None),
                ("quarantined", "E", Some("T2"))
            ]
        );
        assert_eq!(v.alerts[1].subscription.as_deref(), Some("sub_erp"));
        assert!(v.alerts[1].detail.starts_with("2 events given up"), "{}", v.alerts[1].detail);
        assert_eq!(v.alerts[2].detail, "no contact for 2 h 0 min");
        assert_eq!((v.stores[2].alerts, v.stores[4].alerts, s.alerts), (1, 2, 4));
        assert!(!v.stores[4].chain_ok);
        assert_eq!(v.stores[4].last_error.as_deref(), Some("chain_broken: seq 5"));
    }

    #[test]
    fn rings_come_from_the_newest_rollout() {
        let stores: Vec<StoreView> = (0..200).map(|i| StoreView { store: format!("S{i}"), tills: vec![] }).collect();
        let rollout = |percent, started_at| Rollout {
            target: "x86_64-unknown-linux-gnu".into(),
            version: "0.2.0".into(),
            stage: crate::rollout::Stage::initial(percent),
            canary_percent: percent,
            max_failures: 3,
            failures: 0,
            installed: 0,
            refused: 0,
            halted_reason: None,
            started_at,
            updated_at: started_at,
        };
        let input = FleetInput { stores, rollouts: vec![rollout(100, 1), rollout(10, 2)], ..FleetInput::default() };
        let v = fleet(&input, 10, &T);
        for s in &v.stores {
            let want = if crate::rollout::in_canary(&s.store, 10) { "canary" } else { "general" };
            assert_eq!(s.ring, Some(want), "{}", s.store);
        }
        assert!(
            v.stores.iter().any(|s| s.ring == Some("canary")) && v.stores.iter().any(|s| s.ring == Some("general"))
        );
    }

    #[test]
    fn durations_read_like_people_say_them() {
        let check = |s, want: &str| assert_eq!(human_duration(s), want);
        check(45, "45 s");
        check(7 * 60 + 5, "7 min");
        check(2 * 3600 + 10 * 60, "2 h 10 min");
        check(3 * 86_400 + 5 * 3600, "3 d 5 h");
    }
}
