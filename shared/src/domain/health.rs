//! Sync health at a glance: what the dashboard's health page reads (outcomes per hour, the CRM
//! day's budget, the oldest waiting change, the dead letters, the last reconciliation), and the
//! rules that turn those facts into "healthy" or a short list of what needs attention.

pub const HOUR_MS: i64 = 60 * 60 * 1000;
/// The hours the health page charts: seven days.
pub const WEEK_HOURS: usize = 7 * 24;

/// A change waiting longer than this needs a look; longer than [`PENDING_BAD_MS`], it is stuck
/// (a link may wait a day by design, so an hour is not yet a problem).
pub const PENDING_WARN_MS: i64 = 15 * 60 * 1000;
pub const PENDING_BAD_MS: i64 = 6 * HOUR_MS;
/// Changes waiting on the outbound queue while nothing synced for this long: the sync is not
/// running.
pub const STALLED_MS: i64 = 15 * 60 * 1000;
/// A reconciliation runs nightly: none for longer than this means the schedule is not running.
pub const RECONCILE_LATE_MS: i64 = 36 * HOUR_MS;

/// Outbound outcomes of one hour: live changes (the app's, and re-syncs); the reconciliation's
/// and backfills' are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HourCount {
    /// The hour's start (ms since the epoch, UTC).
    pub hour_ms: i64,
    /// Changes written to the CRM (or found written already).
    pub synced: u64,
    /// Changes that failed for good: dead-lettered with their reason.
    pub failed: u64,
}

/// The start of the hour `at_ms` falls in.
pub fn hour_of(at_ms: i64) -> i64 {
    at_ms - at_ms.rem_euclid(HOUR_MS)
}

/// The last `hours` hours up to and including the current one, oldest first: each counted hour
/// where one was counted, zero elsewhere.
pub fn last_hours(counts: &[HourCount], now_ms: i64, hours: usize) -> Vec<HourCount> {
    let current = hour_of(now_ms);
    (0..hours)
        .rev()
        .map(|back| {
            let hour_ms = current - HOUR_MS * back as i64;
            counts.iter().filter(|count| count.hour_ms == hour_ms).fold(
                HourCount {
                    hour_ms,
                    ..HourCount::default()
                },
                |sum, count| HourCount {
                    hour_ms,
                    synced: sum.synced + count.synced,
                    failed: sum.failed + count.failed,
                },
            )
        })
        .collect()
}

/// The CRM day's budget as the shared limiter holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayBudget {
    /// The day's budget: the CRM's own daily maximum where it reports one, else the configured.
    pub limit: u64,
    /// Spent today (by crm-sync's count, corrected by the CRM's own remaining count).
    pub used: u64,
    /// Left unused for whatever else uses the CRM account.
    pub reserve: u64,
    /// Above the reserve, kept for live changes: background work stops here.
    pub live_reserve: u64,
    /// What one call takes from the budget (Pipedrive counts tokens, 40 a call).
    pub cost_per_call: u64,
    /// What the budget counts: `calls`, or Pipedrive's `tokens`.
    pub unit: &'static str,
    /// After a DAILY 429, no call until then.
    pub paused_until_ms: Option<i64>,
}

impl DayBudget {
    /// Where background work (the reconciliation, a backfill) stops: its next call would dip
    /// into the live reserve.
    pub fn background_stop(&self) -> u64 {
        self.limit
            .saturating_sub(self.reserve + self.live_reserve + self.cost_per_call)
    }

    /// Where every call stops: the next would dip into the reserve.
    pub fn live_stop(&self) -> u64 {
        self.limit.saturating_sub(self.reserve + self.cost_per_call)
    }
}

/// What the health page knows; each part is `None` when it could not be read or does not apply.
#[derive(Debug, Clone, Default)]
pub struct HealthFacts {
    pub now_ms: i64,
    pub last_synced_ms: Option<i64>,
    /// Since when the longest-waiting change has waited (taken in, not yet applied or given up).
    pub oldest_pending_ms: Option<i64>,
    /// Changes waiting on the outbound queue, not yet taken in.
    pub backlog: Option<u64>,
    pub hours: Vec<HourCount>,
    pub budget: Option<DayBudget>,
    /// Messages in each dead-letter queue: (queue, depth).
    pub dead_letters: Vec<(String, u64)>,
    /// When the last reconciliation started, and the errors it met.
    pub last_reconcile: Option<(i64, u64)>,
    /// What could not be read, for the page to say so.
    pub unreadable: Vec<String>,
}

/// A duration for a person: `25 min`, `3 h`, `2 d`.
pub fn span(ms: i64) -> String {
    let minutes = ms.max(0) / 60_000;
    match minutes {
        0..=119 => format!("{minutes} min"),
        120..=2_879 => format!("{} h", minutes / 60),
        _ => format!("{} d", minutes / 1_440),
    }
}

/// How much something needs attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Bad,
}

/// One line of what needs attention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attention {
    pub level: Level,
    pub text: String,
    /// Where on the dashboard the operator acts on it.
    pub href: &'static str,
}

impl HealthFacts {
    /// Synced and failed changes in the current hour and the one before (so that a failure
    /// does not drop out at the turn of the hour), and failed ones in the last 24 hours.
    pub fn recent(&self) -> (u64, u64, u64) {
        let since = |hours: i64| {
            let from = hour_of(self.now_ms) - HOUR_MS * (hours - 1);
            self.hours.iter().filter(move |count| count.hour_ms >= from)
        };
        (
            since(2).map(|count| count.synced).sum(),
            since(2).map(|count| count.failed).sum(),
            since(24).map(|count| count.failed).sum(),
        )
    }

    /// What needs attention, worst first; empty when sync is healthy.
    pub fn attention(&self) -> Vec<Attention> {
        let mut lines = Vec::new();
        let mut say =
            |level: Level, text: String, href: &'static str| lines.push(Attention { level, text, href });
        let (synced, failed, day) = self.recent();
        let stalled_since = self.last_synced_ms.map_or(STALLED_MS, |at| self.now_ms - at);
        if let Some(backlog) = self.backlog.filter(|backlog| *backlog > 0) {
            if stalled_since >= STALLED_MS {
                say(
                    Level::Bad,
                    format!(
                        "{backlog} change(s) wait on the outbound queue and none has synced for {}: is the \
                         sync function running (its event source enabled, its concurrency above 0)?",
                        span(stalled_since)
                    ),
                    "/admin/health",
                );
            }
        }
        if failed > 0 {
            // Mostly failing is a problem; a few records the CRM refuses are a warning.
            say(
                if failed > synced { Level::Bad } else { Level::Warn },
                format!("{failed} change(s) failed in the last two hours ({day} in 24 h), {synced} synced: see the causes"),
                "/admin?filter=failed",
            );
        } else if day > 0 {
            say(
                Level::Warn,
                format!("{day} change(s) failed in the last 24 hours: see the causes"),
                "/admin?filter=failed",
            );
        }
        if let Some(at) = self.oldest_pending_ms {
            let waited = self.now_ms - at;
            if waited >= PENDING_WARN_MS {
                say(
                    if waited >= PENDING_BAD_MS { Level::Bad } else { Level::Warn },
                    format!(
                        "a change has waited {} (the CRM failing, its budget spent, or a linked record not synced yet)",
                        span(waited)
                    ),
                    "/admin?filter=pending",
                );
            }
        }
        let dead: u64 = self.dead_letters.iter().map(|(_, depth)| depth).sum();
        if dead > 0 {
            say(
                Level::Warn,
                format!("{dead} message(s) in dead-letter queues: fix the cause, then redrive"),
                "/admin/queues",
            );
        }
        if let Some(budget) = &self.budget {
            if budget.paused_until_ms.is_some_and(|until| until > self.now_ms)
                || budget.used >= budget.live_stop()
            {
                say(
                    Level::Bad,
                    "the CRM's daily budget is spent down to the reserve: changes wait for the CRM's next day".into(),
                    "/admin/health",
                );
            } else if budget.used >= budget.background_stop() {
                say(
                    Level::Warn,
                    "the daily budget is into the live reserve: the reconciliation and backfills wait for the CRM's next day"
                        .into(),
                    "/admin/health",
                );
            }
        }
        match self.last_reconcile {
            None => say(
                Level::Warn,
                "no reconciliation has run yet".into(),
                "/admin/queues",
            ),
            Some((at, _)) if self.now_ms - at > RECONCILE_LATE_MS => say(
                Level::Warn,
                format!(
                    "the last reconciliation ran {} h ago: is its schedule enabled?",
                    (self.now_ms - at) / HOUR_MS
                ),
                "/admin/queues",
            ),
            Some((_, errors)) if errors > 0 => say(
                Level::Warn,
                format!("the last reconciliation met {errors} error(s)"),
                "/admin/queues",
            ),
            Some(_) => {}
        }
        for what in &self.unreadable {
            say(Level::Warn, format!("could not read {what}"), "/admin/health");
        }
        lines.sort_by_key(|line| std::cmp::Reverse(line.level));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn healthy() -> HealthFacts {
        HealthFacts {
            now_ms: NOW,
            last_synced_ms: Some(NOW - 60_000),
            oldest_pending_ms: None,
            backlog: Some(0),
            hours: vec![HourCount {
                hour_ms: hour_of(NOW),
                synced: 40,
                failed: 0,
            }],
            budget: Some(DayBudget {
                limit: 1_000,
                used: 100,
                reserve: 50,
                live_reserve: 100,
                cost_per_call: 1,
                unit: "calls",
                paused_until_ms: None,
            }),
            dead_letters: vec![("outbound".into(), 0)],
            last_reconcile: Some((NOW - 2 * HOUR_MS, 0)),
            unreadable: Vec::new(),
        }
    }

    #[test]
    fn the_last_hours_are_every_hour_oldest_first_with_zeros_where_nothing_was_counted() {
        let counts = [
            HourCount {
                hour_ms: hour_of(NOW),
                synced: 3,
                failed: 1,
            },
            HourCount {
                hour_ms: hour_of(NOW) - 2 * HOUR_MS,
                synced: 5,
                failed: 0,
            },
            // Older than the window: left out.
            HourCount {
                hour_ms: hour_of(NOW) - 10 * HOUR_MS,
                synced: 9,
                failed: 9,
            },
        ];
        let hours = last_hours(&counts, NOW, 4);
        let synced: Vec<u64> = hours.iter().map(|h| h.synced).collect();
        assert_eq!(synced, [0, 5, 0, 3]);
        assert_eq!(hours[3].failed, 1);
        assert_eq!(hours[0].hour_ms, hour_of(NOW) - 3 * HOUR_MS);
    }

    #[test]
    fn a_healthy_sync_needs_no_attention() {
        assert_eq!(healthy().attention(), Vec::new());
    }

    #[test]
    fn failures_are_a_warning_and_a_problem_when_they_outnumber_the_syncs() {
        let mut facts = healthy();
        facts.dead_letters = vec![("outbound".into(), 2)];
        // The hour before the current one still counts: a failure does not vanish at :00.
        facts.hours.push(HourCount {
            hour_ms: hour_of(NOW) - HOUR_MS,
            synced: 0,
            failed: 2,
        });
        facts.hours.push(HourCount {
            hour_ms: hour_of(NOW) - 5 * HOUR_MS,
            synced: 0,
            failed: 1,
        });
        let lines = facts.attention();
        assert_eq!(lines[0].level, Level::Warn, "{lines:?}");
        assert!(
            lines[0]
                .text
                .starts_with("2 change(s) failed in the last two hours (3 in 24 h), 40 synced"),
            "{lines:?}"
        );
        assert_eq!(lines[0].href, "/admin?filter=failed");
        assert!(lines[1].text.contains("2 message(s) in dead-letter queues"));
        facts.hours[0].synced = 1;
        assert_eq!(facts.attention()[0].level, Level::Bad, "mostly failing");
    }

    #[test]
    fn a_change_waiting_long_is_a_warning_then_a_problem() {
        let mut facts = healthy();
        facts.oldest_pending_ms = Some(NOW - PENDING_WARN_MS + 1);
        assert!(facts.attention().is_empty(), "within the bound");
        facts.oldest_pending_ms = Some(NOW - PENDING_WARN_MS);
        assert_eq!(facts.attention()[0].level, Level::Warn);
        assert!(facts.attention()[0]
            .text
            .starts_with("a change has waited 15 min"));
        facts.oldest_pending_ms = Some(NOW - PENDING_BAD_MS);
        assert_eq!(facts.attention()[0].level, Level::Bad);
        assert!(facts.attention()[0].text.starts_with("a change has waited 6 h"));
    }

    #[test]
    fn a_backlog_with_nothing_synced_for_a_while_says_the_sync_is_not_running() {
        let mut facts = healthy();
        facts.backlog = Some(12);
        assert!(facts.attention().is_empty(), "a backlog being worked on");
        facts.last_synced_ms = Some(NOW - STALLED_MS);
        let lines = facts.attention();
        assert_eq!(lines[0].level, Level::Bad);
        assert!(
            lines[0].text.contains("is the sync function running"),
            "{lines:?}"
        );
        facts.last_synced_ms = None;
        assert_eq!(facts.attention()[0].level, Level::Bad, "never synced at all");
        facts.backlog = Some(0);
        assert!(facts.attention().is_empty(), "an idle app is healthy");
    }

    #[test]
    fn the_budget_warns_where_background_work_stops_and_is_a_problem_where_every_call_stops() {
        let mut facts = healthy();
        let budget = facts.budget.as_mut().unwrap();
        budget.cost_per_call = 40;
        // 1,000 - 50 - 100 - 40: a background call here would dip into the live reserve.
        assert_eq!(budget.background_stop(), 810);
        assert_eq!(budget.live_stop(), 910);
        budget.used = 809;
        assert!(facts.attention().is_empty());
        facts.budget.as_mut().unwrap().used = 810;
        assert_eq!(facts.attention()[0].level, Level::Warn);
        facts.budget.as_mut().unwrap().used = 910;
        assert_eq!(facts.attention()[0].level, Level::Bad);
        let budget = facts.budget.as_mut().unwrap();
        budget.used = 0;
        budget.paused_until_ms = Some(NOW + 1);
        assert_eq!(facts.attention()[0].level, Level::Bad);
    }

    #[test]
    fn a_missing_or_late_reconciliation_is_a_warning() {
        let mut facts = healthy();
        facts.last_reconcile = None;
        assert!(facts.attention()[0].text.contains("no reconciliation"));
        facts.last_reconcile = Some((NOW - RECONCILE_LATE_MS - 1, 0));
        assert!(facts.attention()[0].text.contains("is its schedule enabled"));
        facts.last_reconcile = Some((NOW - HOUR_MS, 2));
        assert!(facts.attention()[0].text.contains("2 error(s)"));
    }

    #[test]
    fn spans_read_as_minutes_hours_then_days() {
        assert_eq!(span(119 * 60_000), "119 min");
        assert_eq!(span(120 * 60_000), "2 h");
        assert_eq!(span(3 * 24 * HOUR_MS), "3 d");
    }
}
