//! The CRM call budget, shared by every sync instance through one DynamoDB item per CRM account.
//!
//! Burst: a generic cell rate algorithm. The item's `tat` ("theoretical arrival time", ms) is the
//! earliest time the next call may start; each grant moves it on by one interval
//! (window / (limit x headroom - live_burst)), so no rolling window ever holds more than the
//! limit allows.
//! A grant when `tat` is in the past is "now"; otherwise it is the reserved slot at `tat`, at
//! most `max_ahead_ms` ahead, and the caller waits for it. Either is one conditional write.
//!
//! Priority: background work (the reconciliation, a backfill) reserves at most one slot ahead,
//! and live work may start up to `live_burst` slots before its reserved one. So a live change
//! never waits behind background work. The pace leaves room for that lead: the interval is
//! window / (limit x headroom - live_burst), and any window still holds at most
//! limit x headroom + 1 calls. A hold the CRM asked for (a burst 429, too few calls left) is
//! set that lead further out, so that live calls too start only once it is over.
//!
//! Daily: `day_left` counts down with each grant (by its cost: calls, or Pipedrive's tokens) and
//! is reset from the CRM's own daily-remaining header; below the reserve, or after a DAILY 429 (`paused_until`), every
//! instance is refused until the CRM's day turns.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;

use super::{condition_failed, n, s, unavailable, written_or_not};
use crate::domain::crm::{RateInfo, ThrottlePolicy};
use crate::ports::{Permit, RateLimiter, StoreUnavailable};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// The budget one CRM account allows.
#[derive(Debug, Clone)]
pub struct LimiterSettings {
    /// Calls allowed in any rolling window (HubSpot Pro: 190 per 10 s).
    pub burst_limit: u32,
    pub burst_window_ms: u64,
    /// Share of the burst limit to use (0..1]; the rest absorbs clock and network jitter.
    pub headroom: f64,
    /// Calls allowed per CRM day, and how many of them to leave unused.
    pub daily_limit: u64,
    pub daily_reserve: u64,
    /// Calls of the day above the reserve that only live changes may spend: background work (the
    /// reconciliation, an adoption backfill) stops this far above the reserve, so that live
    /// changes are never left without budget by it.
    pub live_reserve: u64,
    /// The CRM day starts at midnight in this offset from UTC.
    pub day_offset_minutes: i32,
    /// How far ahead a slot may be reserved.
    pub max_ahead_ms: i64,
    /// CRM requests one granted call may make: 1 for a bulk API; 2 for Pipedrive, whose upsert
    /// is a search and then a write.
    pub requests_per_call: u32,
    /// Slots a live call may start ahead of its turn, so that it does not wait behind
    /// background work; the pace is slowed by as many calls a window to make room.
    pub live_burst: u32,
    /// What one granted call takes from the daily budget: 1 where the budget counts calls;
    /// Pipedrive's counts tokens, and an upsert (a search and a create) costs 25. The CRM's own
    /// remaining count, read from each answer, corrects the estimate.
    pub daily_cost_per_call: u32,
}

impl Default for LimiterSettings {
    fn default() -> Self {
        Self {
            burst_limit: 190,
            burst_window_ms: 10_000,
            headroom: 0.98,
            daily_limit: 625_000,
            daily_reserve: 25_000,
            // The configuration sets a tenth of the day (see `config`); none unless told.
            live_reserve: 0,
            day_offset_minutes: 0,
            max_ahead_ms: 2_000,
            requests_per_call: 1,
            daily_cost_per_call: 1,
            // Two of HubSpot's 190 calls a window (1%): a live change goes at once.
            live_burst: 2,
        }
    }
}

impl LimiterSettings {
    /// Milliseconds between two calls.
    pub fn interval_ms(&self) -> f64 {
        let calls = f64::from(self.burst_limit.max(1)) / f64::from(self.requests_per_call.max(1));
        let paced = calls * self.headroom.clamp(0.05, 1.0);
        // The live lead comes out of the pace, but never more than half of it.
        let paced = (paced - f64::from(self.live_burst)).max(paced / 2.0);
        self.burst_window_ms as f64 / paced
    }

    /// How far before its reserved slot a live call may start.
    fn live_lead_ms(&self) -> f64 {
        let calls = f64::from(self.burst_limit.max(1)) / f64::from(self.requests_per_call.max(1));
        let paced = calls * self.headroom.clamp(0.05, 1.0);
        f64::from(self.live_burst).min(paced / 2.0) * self.interval_ms()
    }

    pub fn day_of(&self, now_ms: i64) -> i64 {
        (now_ms + i64::from(self.day_offset_minutes) * 60_000).div_euclid(DAY_MS)
    }

    /// How long to hold back after the CRM reported `remaining` of `max` calls left in its window.
    ///
    /// Our own pace leaves `max - (max x headroom) - 1` calls free in any window; fewer than that
    /// means someone else (another app on the account) is spending the window too. Each missing
    /// call costs one interval, so a blip of jitter costs a few milliseconds, not a second, while
    /// a steady second spender keeps pushing us back. None left: the next call would be refused.
    pub fn burst_pause(&self, remaining: u32, max: u32) -> Option<Duration> {
        let ours = (f64::from(max) * self.headroom.clamp(0.05, 1.0)).ceil() as u32 + 1;
        let slack = max.saturating_sub(ours);
        if remaining == 0 {
            return Some(Duration::from_millis(self.burst_window_ms / 10));
        }
        let missing = slack.checked_sub(remaining).filter(|m| *m > 0)?;
        Some(Duration::from_secs_f64(
            self.interval_ms() * f64::from(missing + 1) / 1000.0,
        ))
    }

    /// When the CRM's day after `now_ms` begins.
    pub fn next_day_start_ms(&self, now_ms: i64) -> i64 {
        (self.day_of(now_ms) + 1) * DAY_MS - i64::from(self.day_offset_minutes) * 60_000
    }
}

/// [`RateLimiter`] over a DynamoDB table keyed by `pk`.
pub struct DynamoDbRateLimiter {
    client: Client,
    table: String,
    key: String,
    settings: LimiterSettings,
    /// The last `tat` seen, to pick the likelier of the two grant writes first.
    last_tat: AtomicI64,
    observed: AtomicU64,
}

fn number(item: &std::collections::HashMap<String, AttributeValue>, name: &str) -> Option<f64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

enum Attempt {
    Granted(i64),
    Refused(Option<std::collections::HashMap<String, AttributeValue>>),
}

impl DynamoDbRateLimiter {
    /// The least `day_left` a grant may start from: the reserve (and, for background work, the
    /// live reserve above it) and the grant's own cost.
    fn daily_floor(&self, background: bool) -> u64 {
        let live = if background { self.settings.live_reserve } else { 0 };
        self.settings.daily_reserve + live + u64::from(self.settings.daily_cost_per_call.max(1))
    }

    /// `key` names the CRM account (`hubspot`).
    pub fn new(
        client: Client,
        table: impl Into<String>,
        key: impl Into<String>,
        settings: LimiterSettings,
    ) -> Self {
        Self {
            client,
            table: table.into(),
            key: key.into(),
            settings,
            last_tat: AtomicI64::new(0),
            observed: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> &LimiterSettings {
        &self.settings
    }

    /// One grant attempt: "now" when idle (`busy` false), else the slot at `tat` if it is at
    /// most `ahead_ms` away, started up to `lead_ms` before it.
    async fn try_grant(
        &self,
        now_ms: i64,
        busy: bool,
        floor: u64,
        ahead_ms: i64,
        lead_ms: f64,
    ) -> Result<Attempt, StoreUnavailable> {
        let interval = self.settings.interval_ms();
        let day = self.settings.day_of(now_ms);
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&self.key))
            .expression_attribute_names("#day", "day")
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":today", n(day))
            // A grant must leave the reserve whole: `day_left - cost >= reserve`.
            .expression_attribute_values(":floor", n(floor))
            .expression_attribute_values(":cost", n(-i64::from(self.settings.daily_cost_per_call.max(1))))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let common = "#day = :today AND day_left >= :floor AND (attribute_not_exists(paused_until) OR paused_until <= :now)";
        let request = if busy {
            request
                .update_expression("SET tat = tat + :interval ADD day_left :cost")
                .condition_expression(format!("tat > :now AND tat <= :max_ahead AND {common}"))
                .expression_attribute_values(":interval", n(format!("{interval:.3}")))
                .expression_attribute_values(":max_ahead", n(now_ms + ahead_ms))
        } else {
            request
                .update_expression("SET tat = :next ADD day_left :cost")
                .condition_expression(format!("(attribute_not_exists(tat) OR tat <= :now) AND {common}"))
                .expression_attribute_values(":next", n(format!("{:.3}", now_ms as f64 + interval)))
        };
        match request.send().await {
            Ok(output) => {
                let tat = output
                    .attributes()
                    .and_then(|item| number(item, "tat"))
                    .unwrap_or(now_ms as f64);
                self.last_tat.store(tat.ceil() as i64, Ordering::Relaxed);
                let at = if busy {
                    ((tat - interval - lead_ms).ceil() as i64).max(now_ms)
                } else {
                    now_ms
                };
                Ok(Attempt::Granted(at))
            }
            Err(error) if condition_failed(&error) => {
                let old = match error.as_service_error() {
                    Some(UpdateItemError::ConditionalCheckFailedException(check)) => check.item().cloned(),
                    _ => None,
                };
                Ok(Attempt::Refused(old))
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    /// Grants the next slot: live work (`live`) reserves up to `max_ahead_ms` ahead and starts
    /// up to its lead early; background work reserves at most one slot ahead, so it never holds
    /// a live call back. Or says until when there is none.
    async fn acquire_slot(&self, now_ms: i64, live: bool) -> Result<Permit, StoreUnavailable> {
        let day = self.settings.day_of(now_ms);
        // Background work keeps the live reserve too.
        let floor = self.daily_floor(!live);
        let interval = self.settings.interval_ms();
        let (ahead_ms, lead_ms) = if live {
            (self.settings.max_ahead_ms, self.settings.live_lead_ms())
        } else {
            (interval.floor() as i64, 0.0)
        };
        let mut busy = self.last_tat.load(Ordering::Relaxed) > now_ms;
        for _ in 0..6 {
            let old = match self.try_grant(now_ms, busy, floor, ahead_ms, lead_ms).await? {
                Attempt::Granted(at_ms) => return Ok(Permit::Granted { at_ms }),
                Attempt::Refused(old) => old.unwrap_or_default(),
            };
            if number(&old, "day").map(|d| d as i64) != Some(day) {
                self.start_day(day, self.settings.daily_limit).await?;
                continue;
            }
            if let Some(paused) = number(&old, "paused_until")
                .map(|p| p as i64)
                .filter(|p| *p > now_ms)
            {
                return Ok(Permit::Denied {
                    until_ms: paused,
                    policy: ThrottlePolicy::Daily,
                });
            }
            if number(&old, "day_left").is_some_and(|left| left < floor as f64) {
                return Ok(Permit::Denied {
                    until_ms: self.settings.next_day_start_ms(now_ms),
                    policy: ThrottlePolicy::Daily,
                });
            }
            // `tat` is fractional: compared as DynamoDB compares it, so that a caller told to
            // wait until a time finds its slot there.
            let tat = number(&old, "tat").unwrap_or(0.0);
            self.last_tat.store(tat.ceil() as i64, Ordering::Relaxed);
            if tat > (now_ms + ahead_ms) as f64 {
                return Ok(Permit::Denied {
                    until_ms: (tat - ahead_ms as f64).ceil() as i64,
                    policy: ThrottlePolicy::Burst,
                });
            }
            busy = tat > now_ms as f64;
        }
        // Heavy contention: report the slot as a short wait rather than spin.
        Ok(Permit::Denied {
            until_ms: now_ms + self.settings.interval_ms().ceil() as i64,
            policy: ThrottlePolicy::Burst,
        })
    }

    async fn start_day(&self, day: i64, left: u64) -> Result<(), StoreUnavailable> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&self.key))
            .update_expression("SET #day = :today, day_left = :left")
            .condition_expression("attribute_not_exists(#day) OR #day <> :today")
            .expression_attribute_names("#day", "day")
            .expression_attribute_values(":today", n(day))
            .expression_attribute_values(":left", n(left))
            .send()
            .await;
        // Another instance started the day first: as good.
        written_or_not(result).map(|_| ())
    }
}

#[async_trait]
impl RateLimiter for DynamoDbRateLimiter {
    async fn acquire(&self, now_ms: i64) -> Result<Permit, StoreUnavailable> {
        self.acquire_slot(now_ms, true).await
    }

    async fn acquire_idle(&self, now_ms: i64) -> Result<Permit, StoreUnavailable> {
        self.acquire_slot(now_ms, false).await
    }

    async fn observe(&self, rate: &RateInfo, now_ms: i64) -> Result<(), StoreUnavailable> {
        let count = self.observed.fetch_add(1, Ordering::Relaxed);
        if let Some(remaining) = rate.daily_remaining {
            // The CRM's count is the truth; adopting it now and then (or near the reserve) keeps
            // ours honest without a write per call.
            if count % 20 == 0 || remaining <= self.settings.daily_reserve.saturating_mul(2) {
                let request = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .key("pk", s(&self.key))
                    .expression_attribute_names("#day", "day")
                    .expression_attribute_values(":today", n(self.settings.day_of(now_ms)))
                    .expression_attribute_values(":left", n(remaining));
                // The CRM's own daily maximum too, for the health page.
                let request = match rate.daily_max {
                    Some(max) => request
                        .update_expression("SET #day = :today, day_left = :left, day_max = :max")
                        .expression_attribute_values(":max", n(max)),
                    None => request.update_expression("SET #day = :today, day_left = :left"),
                };
                request.send().await.map_err(unavailable)?;
            }
        }
        if let (Some(remaining), Some(max)) = (rate.burst_remaining, rate.burst_max) {
            if let Some(pause) = self.settings.burst_pause(remaining, max) {
                self.throttled(ThrottlePolicy::Burst, pause, now_ms).await?;
            }
        }
        Ok(())
    }

    async fn throttled(
        &self,
        policy: ThrottlePolicy,
        wait: Duration,
        now_ms: i64,
    ) -> Result<(), StoreUnavailable> {
        let mut until = now_ms + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
        if policy == ThrottlePolicy::Burst {
            // A live call may start its lead before `tat`: not before the hold is over.
            until = until.saturating_add(self.settings.live_lead_ms().ceil() as i64);
        }
        let (expression, condition, attribute) = match policy {
            ThrottlePolicy::Burst => (
                "SET tat = :until",
                "attribute_not_exists(tat) OR tat < :until",
                "tat",
            ),
            ThrottlePolicy::Daily => (
                "SET paused_until = :until",
                "attribute_not_exists(paused_until) OR paused_until < :until",
                "paused_until",
            ),
        };
        if policy == ThrottlePolicy::Burst {
            self.last_tat.store(until, Ordering::Relaxed);
        }
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&self.key))
            .update_expression(expression)
            .condition_expression(condition)
            .expression_attribute_values(":until", n(until))
            .send()
            .await;
        if !written_or_not(result)? {
            tracing::debug!(attribute, "a longer hold is in place already");
        }
        Ok(())
    }
}

#[async_trait]
impl crate::ports::BudgetReader for DynamoDbRateLimiter {
    async fn today(&self, now_ms: i64) -> Result<crate::domain::health::DayBudget, StoreUnavailable> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(&self.key))
            .send()
            .await
            .map_err(unavailable)?
            .item
            .unwrap_or_default();
        // A day not started yet has spent nothing.
        let today = number(&item, "day").map(|day| day as i64) == Some(self.settings.day_of(now_ms));
        let left = number(&item, "day_left")
            .filter(|_| today)
            .map(|left| left.max(0.0) as u64);
        // The CRM's own maximum where it reported one: an account's real budget may exceed the
        // configured one (Pipedrive's grows with seats), which the count left then shows.
        let limit = number(&item, "day_max")
            .filter(|_| today)
            .map(|max| max.max(0.0) as u64)
            .unwrap_or(self.settings.daily_limit)
            .max(left.unwrap_or(0));
        let cost = u64::from(self.settings.daily_cost_per_call.max(1));
        Ok(crate::domain::health::DayBudget {
            limit,
            used: left.map_or(0, |left| limit - left),
            reserve: self.settings.daily_reserve,
            live_reserve: self.settings.live_reserve,
            cost_per_call: cost,
            unit: if cost > 1 { "tokens" } else { "calls" },
            paused_until_ms: number(&item, "paused_until")
                .map(|until| until as i64)
                .filter(|until| *until > now_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_spreads_the_burst_limit_over_its_window_with_headroom() {
        let settings = LimiterSettings::default();
        let interval = settings.interval_ms();
        // 186.2 calls a window, less the two a live call may lead by.
        assert!((interval - 10_000.0 / (190.0 * 0.98 - 2.0)).abs() < 1e-9);
        // Calls spaced by the interval never put more than the limit in one window.
        assert!((10_000.0 / interval).floor() + 1.0 <= 190.0);
    }

    #[test]
    fn a_live_calls_lead_still_leaves_every_window_within_the_limit() {
        for settings in [
            LimiterSettings::default(),
            LimiterSettings {
                burst_limit: 10,
                burst_window_ms: 1_000,
                headroom: 1.0,
                ..LimiterSettings::default()
            },
            LimiterSettings {
                live_burst: 50,
                ..LimiterSettings::default()
            },
        ] {
            // Slots are an interval apart and a call starts at most the lead before its slot:
            // a rolling window [t, t + window) holds the slots of the window and of the lead
            // after it.
            let (window, interval) = (settings.burst_window_ms as f64, settings.interval_ms());
            let most = ((window + settings.live_lead_ms()) / interval - 1e-9).ceil();
            assert!(most <= f64::from(settings.burst_limit), "{settings:?}: {most}");
            assert!(settings.live_lead_ms() > 0.0);
        }
    }

    #[test]
    fn two_requests_a_call_halve_the_calls_a_window_holds() {
        let settings = LimiterSettings {
            burst_limit: 20,
            burst_window_ms: 2_000,
            requests_per_call: 2,
            live_burst: 0,
            ..LimiterSettings::default()
        };
        // 10 calls (20 requests) per 2 s at 0.98 headroom.
        assert!((settings.interval_ms() - 2_000.0 / (10.0 * 0.98)).abs() < 1e-9);
    }

    #[test]
    fn our_own_pace_with_headroom_does_not_trigger_a_pause() {
        let settings = LimiterSettings::default();
        // 190 x 0.98 rounds up to 187 calls in a window, plus one at its edge: 2 stay free.
        assert_eq!(settings.burst_pause(2, 190), None);
        assert_eq!(settings.burst_pause(40, 190), None);
    }

    #[test]
    fn a_second_spender_on_the_account_costs_an_interval_per_missing_call() {
        let settings = LimiterSettings::default();
        let interval = settings.interval_ms();
        let one = settings.burst_pause(1, 190).expect("one call short of our slack");
        assert!(
            (one.as_secs_f64() * 1000.0 - 2.0 * interval).abs() < 1.0,
            "{one:?}"
        );
        // An empty window means the next call would be refused: wait a tenth of the window.
        assert_eq!(settings.burst_pause(0, 190), Some(Duration::from_millis(1_000)));
    }

    #[test]
    fn without_headroom_only_an_empty_window_pauses() {
        let settings = LimiterSettings {
            headroom: 1.0,
            ..LimiterSettings::default()
        };
        assert_eq!(settings.burst_pause(1, 190), None);
        assert!(settings.burst_pause(0, 190).is_some());
    }

    #[test]
    fn the_crm_day_turns_at_midnight_in_its_offset() {
        let settings = LimiterSettings {
            day_offset_minutes: -300,
            ..LimiterSettings::default()
        };
        // 2026-01-01T04:00Z is 23:00 the day before at UTC-5; the day turns at 05:00Z.
        let now = 1_767_240_000_000;
        assert_eq!(settings.next_day_start_ms(now), 1_767_243_600_000);
    }
}
