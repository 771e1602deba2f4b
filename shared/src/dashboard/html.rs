//! The dashboard's pages: plain server-rendered HTML, one inline stylesheet, no scripts. Pages are
//! built with `maud`, whose splices escape every value (text and attributes alike); a value inside
//! a link also goes through [`url_part`] first.

use std::collections::BTreeMap;

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::domain::adoption::{Action, BackfillProgress, PlanItem, PlanSummary};
use crate::domain::clock::rfc3339;
use crate::domain::contract::{ObjectKind, RecordRef};
use crate::domain::inbound::{conflict_status, ConflictEntry, ConflictStatus};
use crate::domain::sync::{RecordFilter, RecordState, SyncStatus, Tally, TimelineEntry};
use crate::ports::{DeadLetterSummary, RedriveOutcome};
use crate::reconcile::RunReport;

use super::{FailureGroup, FailureGroups, LaneView, RecordView, FOLLOW_MS};
use crate::domain::failures::Cause;
use crate::domain::health::{span, DayBudget, HealthFacts, HourCount, Level};

/// Percent-encodes a value for a query string.
pub fn url_part(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A record as forms carry it: `{object}/{record id}`.
pub fn record_key(record: &RecordRef) -> String {
    format!("{}/{}", record.object, record.record_id)
}

/// The link to a record's page.
pub fn record_href(record: &RecordRef) -> String {
    format!(
        "/admin/record?object={}&id={}",
        record.object,
        url_part(&record.record_id)
    )
}

/// What every signed-in page needs.
pub struct Frame<'a> {
    pub csrf: &'a str,
    /// Who is signed in.
    pub operator: &'a str,
    pub now_ms: i64,
    /// A message about the action just taken.
    pub notice: Option<Notice>,
}

/// Messages shown after an action (the redirect carries a code and numbers, never free text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Resync {
        queued: u64,
        skipped: u64,
        reason: Option<String>,
        /// More records of the cause re-synced are left for another click.
        more: bool,
    },
    Dismissed,
    /// An operator let a record in an identity conflict share its CRM record.
    Shared,
    Redrive {
        lane: String,
        outcome: RedriveOutcome,
    },
    Error(String),
}

const STYLE: &str = "\
:root{--fg:#1d2430;--muted:#5b6575;--line:#dde2ea;--bg:#f6f8fb;--accent:#1f5fd1}\
*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:var(--fg);background:var(--bg)}\
header{display:flex;flex-wrap:wrap;gap:.5rem 1.5rem;align-items:center;padding:.6rem 1rem;background:#fff;border-bottom:1px solid var(--line)}\
header .brand{font-weight:700;color:var(--fg);text-decoration:none}nav{display:flex;gap:1rem;align-items:center;flex-wrap:wrap}\
nav form{margin:0}main{max-width:1200px;margin:0 auto;padding:1rem}a{color:var(--accent)}\
h1{font-size:1.35rem;margin:.4rem 0 1rem;word-break:break-all}h2{font-size:1.1rem;margin:1.6rem 0 .6rem}\
.tabs{display:flex;flex-wrap:wrap;gap:.5rem;margin-bottom:1rem}.tab{padding:.35rem .7rem;border:1px solid var(--line);border-radius:999px;background:#fff;text-decoration:none;color:var(--fg)}\
.tab.on{border-color:var(--accent);box-shadow:inset 0 0 0 1px var(--accent)}.count{font-weight:700;margin-left:.3rem}\
.scroll{overflow-x:auto;background:#fff;border:1px solid var(--line);border-radius:8px}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.45rem .6rem;border-bottom:1px solid var(--line);vertical-align:top}\
th{font-size:.8rem;text-transform:uppercase;letter-spacing:.03em;color:var(--muted);background:#fafbfd}tr:last-child td{border-bottom:0}\
.badge{display:inline-block;padding:.05rem .5rem;border-radius:999px;font-size:.8rem;font-weight:600;white-space:nowrap}\
.s-failed{background:#fde7e7;color:#a11}.s-pending{background:#fff4d6;color:#7a5200}.s-synced{background:#e2f6e9;color:#146c2e}\
.s-deleted{background:#eceef2;color:#4a5160}.s-conflict{background:#efe5fb;color:#5b2a9a}\
.err{color:#a11;max-width:32rem;word-break:break-word}pre{white-space:pre-wrap;word-break:break-all;background:#fff;border:1px solid var(--line);border-radius:6px;padding:.6rem;margin:0}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.35rem 1rem;background:#fff;border:1px solid var(--line);border-radius:8px;padding:.8rem 1rem;margin:0}\
dt{color:var(--muted)}dd{margin:0;word-break:break-word}\
button{font:inherit;padding:.4rem .9rem;border-radius:6px;border:1px solid var(--accent);background:var(--accent);color:#fff;cursor:pointer}\
button.quiet{background:#fff;color:var(--accent)}a.button{display:inline-block;padding:.5rem 1rem;border-radius:6px;background:var(--accent);color:#fff;text-decoration:none}\
.operator{color:var(--muted);margin-right:.6rem;word-break:break-all}.actions{display:flex;flex-wrap:wrap;gap:.5rem;margin:.7rem 0}\
input[type=search],input[type=password]{font:inherit;padding:.4rem .6rem;border:1px solid var(--line);border-radius:6px;min-width:0;width:100%;max-width:24rem}\
.search{display:flex;gap:.5rem;margin-bottom:1rem}.notice{padding:.6rem .9rem;border-radius:8px;background:#e8f0fe;border:1px solid #bcd0fb;margin-bottom:1rem}\
.notice.bad{background:#fde7e7;border-color:#f3b7b7}.muted{color:var(--muted)}.login{max-width:22rem;margin:12vh auto;background:#fff;border:1px solid var(--line);border-radius:10px;padding:1.4rem}\
.health{padding:.7rem 1rem;border-radius:8px;border:1px solid var(--line);background:#fff;margin-bottom:1rem}\
.health.ok{border-color:#9fd3b0;background:#f1fbf4}.health.warn{border-color:#f0d089;background:#fffaf0}.health.bad{border-color:#f3b7b7;background:#fff5f5}\
.health h2{margin:0 0 .3rem;font-size:1.05rem}.health ul{margin:.3rem 0;padding-left:1.2rem}.facts{display:flex;flex-wrap:wrap;gap:.3rem 1.4rem;margin:.4rem 0 0;padding:0;list-style:none}\
.chart{width:100%;height:auto;background:#fff;border:1px solid var(--line);border-radius:8px}\
.skip{position:absolute;left:-9999px;top:.4rem;background:#fff;padding:.4rem .8rem;border-radius:6px;z-index:10}.skip:focus{left:.6rem}\
a:focus-visible,button:focus-visible,input:focus-visible,summary:focus-visible,main:focus-visible{outline:3px solid #1f5fd1;outline-offset:2px}\
button:disabled{opacity:.55;cursor:not-allowed}\
.login label{display:block;margin-bottom:.4rem}.login input{max-width:none;margin-bottom:1rem}\
@media (max-width:640px){main{padding:.6rem}th,td{padding:.4rem}.hide-narrow{display:none}\
table.cards thead{display:none}table.cards,table.cards tbody,table.cards tr,table.cards td{display:block;width:auto}\
table.cards tr{background:#fff;border:1px solid var(--line);border-radius:8px;margin:.5rem 0;padding:.3rem .2rem}\
table.cards td{border:0;padding:.2rem .5rem}table.cards td[data-label]::before{content:attr(data-label) \": \";color:var(--muted)}\
table.cards .err{max-width:none}table.cards td.hide-narrow{display:none}}";

/// Shown for a dead letter the queue moved by itself, without crm-sync recording why.
const NO_REASON: &str =
    "no reason recorded: the queue moved it here after repeated deliveries failed (a crash or a timeout)";

fn document(title: &str, header: Markup, content: Markup) -> String {
    document_with(title, None, header, content)
}

/// The page a browser lands on back from the identity provider: it moves on to `next` by itself.
/// A redirect would not do: the session cookie is `SameSite=Strict`, and a browser does not send
/// it on a redirect chain that began at another site; this page's own navigation is same-site.
pub fn continue_page(next: &str) -> String {
    let content = html! {
        h1 { "Signed in" }
        p { a href=(next) { "Continue to the dashboard" } }
    };
    document_with("Signed in", Some((0, next)), Markup::default(), content)
}

/// The page after signing out, moving on to end the session at the identity provider too.
pub fn signed_out_page(provider_logout: &str) -> String {
    let content = html! {
        h1 { "Signed out" }
        p { a href=(provider_logout) { "Sign out at the identity provider too" } }
    };
    document_with(
        "Signed out",
        Some((0, provider_logout)),
        Markup::default(),
        content,
    )
}

/// The sign-in page where operators sign in through an identity provider.
pub fn provider_login_page(provider: &str, error: Option<&str>, start: &str) -> String {
    let content = html! {
        div.login {
            h1 { "crm-sync dashboard" }
            @if let Some(error) = error {
                div.notice.bad role="alert" { (error) }
            }
            // A link, not a form: the Content-Security-Policy's `form-action 'self'` would stop
            // a form's redirect to the provider.
            a.button href=(start) { "Sign in with " (provider) }
        }
    };
    document("Sign in", Markup::default(), content)
}

/// A page; `refresh` reloads it from that URL every [`FOLLOW_EVERY_S`] seconds (no script:
/// the Content-Security-Policy allows none).
fn document_with(title: &str, refresh: Option<(u32, &str)>, header: Markup, content: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some((seconds, url)) = refresh {
                    meta http-equiv="refresh" content={ (seconds) "; url=" (url) };
                }
                title { (title) " · crm-sync" }
                // Unescaped on purpose: a constant of this file, never data.
                style { (PreEscaped(STYLE)) }
            }
            body {
                // The first stop of the Tab key: past the navigation, to the page itself.
                a.skip href="#main" { "Skip to content" }
                (header)
                main #main tabindex="-1" { (content) }
            }
        }
    }
    .into_string()
}

/// Seconds between reloads of a record page that follows a re-sync.
pub const FOLLOW_EVERY_S: u32 = 2;

fn signed_in(title: &str, frame: &Frame<'_>, content: Markup) -> String {
    signed_in_with(title, None, frame, content)
}

fn signed_in_with(title: &str, refresh: Option<&str>, frame: &Frame<'_>, content: Markup) -> String {
    let header = html! {
        header {
            a.brand href="/admin" { "crm-sync" }
            nav {
                a href="/admin" { "Records" }
                a href="/admin/health" { "Health" }
                a href="/admin/queues" { "Queues" }
                form method="post" action="/admin/logout" {
                    (csrf_field(frame.csrf))
                    span.operator { (frame.operator) }
                    button.quiet type="submit" { "Sign out" }
                }
            }
        }
    };
    let page = html! {
        @if let Some(notice) = &frame.notice {
            (notice_html(notice))
        }
        (content)
    };
    document_with(title, refresh.map(|url| (FOLLOW_EVERY_S, url)), header, page)
}

fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

fn notice_html(notice: &Notice) -> Markup {
    let bad = match notice {
        Notice::Resync { queued, skipped, .. } => *skipped > 0 && *queued == 0,
        Notice::Dismissed | Notice::Shared => false,
        Notice::Redrive { outcome, .. } => outcome.failed > 0,
        Notice::Error(_) => true,
    };
    html! {
        div.notice.bad[bad] role="status" { (notice_text(notice)) }
    }
}

fn notice_text(notice: &Notice) -> Markup {
    html! {
        @match notice {
            Notice::Resync { queued, skipped, reason, more } => {
                "Queued " (queued) " record" (plural(*queued)) " for re-sync."
                @if *skipped > 0 {
                    " " (skipped) " not queued"
                    @if let Some(reason) = reason { ": " (reason) "." } @else { "." }
                }
                @if *more {
                    " More of this cause are waiting: re-sync them once these have left the failed list."
                }
            }
            Notice::Dismissed => "Conflicts dismissed.",
            Notice::Shared => "The record now shares its CRM record: re-sync it to send its held change.",
            Notice::Redrive { lane, outcome } => {
                "Moved " (outcome.moved) " message" (plural(outcome.moved)) " from the " (lane)
                " dead-letter queue back to its queue."
                @if outcome.failed > 0 {
                    " " (outcome.failed) " could not be moved and stay."
                }
                @if outcome.more {
                    " More are waiting: redrive again."
                }
            }
            Notice::Error(text) => (text),
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Quiet text standing in for a missing value.
fn muted(text: &str) -> Markup {
    html! { span.muted { (text) } }
}

/// A value, or `absent` (quietly) when there is none.
fn text_or(value: Option<&str>, absent: &str) -> Markup {
    html! {
        @match value {
            Some(value) => (value),
            None => (muted(absent)),
        }
    }
}

/// A moment, exactly and relative to now.
fn when(at_ms: Option<i64>, now_ms: i64) -> Markup {
    let Some(at_ms) = at_ms else {
        return muted("never");
    };
    let exact = rfc3339(at_ms);
    html! {
        time datetime=(exact) title=(exact) { (ago(now_ms - at_ms)) }
    }
}

/// "42 s ago", "5 min ago", "3 h ago", "2 d ago".
pub fn ago(elapsed_ms: i64) -> String {
    let secs = elapsed_ms.max(0) / 1000;
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3_599 => format!("{} min ago", secs / 60),
        3_600..=172_799 => format!("{} h ago", secs / 3_600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

fn status_badge(status: SyncStatus) -> Markup {
    html! { span.badge.{ "s-" (status.as_str()) } { (status.as_str()) } }
}

fn filter_label(filter: RecordFilter) -> &'static str {
    match filter {
        RecordFilter::Status(SyncStatus::Failed) => "Failed",
        RecordFilter::Status(SyncStatus::Pending) => "Pending",
        RecordFilter::Status(SyncStatus::Synced) => "Synced",
        RecordFilter::Status(SyncStatus::Deleted) => "Deleted",
        RecordFilter::OpenConflicts => "Conflicts",
    }
}

/// A count, with a `+` when counting stopped early.
fn tally(tally: &Tally) -> Markup {
    html! {
        (tally.count)
        @if !tally.complete { "+" }
    }
}

pub fn login_page(error: Option<&str>, next: &str) -> String {
    let content = html! {
        form.login method="post" action="/admin/login" {
            h1 { "crm-sync dashboard" }
            @if let Some(error) = error {
                div.notice.bad role="alert" { (error) }
            }
            label for="password" { "Password" }
            input id="password" name="password" type="password" autocomplete="current-password"
                required autofocus;
            input type="hidden" name="next" value=(next);
            button type="submit" { "Sign in" }
        }
    };
    document("Sign in", Markup::default(), content)
}

/// What the records page shows.
pub struct RecordsView<'a> {
    pub counts: &'a [(RecordFilter, Tally)],
    /// The listing (or `None` for search results).
    pub filter: Option<RecordFilter>,
    pub query: &'a str,
    pub records: &'a [RecordState],
    pub next_cursor: Option<&'a str>,
    /// This page's own URL, where actions come back to.
    pub here: &'a str,
    /// Each record's name for a person (its display fields), in the order of `records`.
    pub names: &'a [Option<String>],
    /// The one object type the listing shows, if it is narrowed to one.
    pub object: Option<ObjectKind>,
    /// The types it may be narrowed to.
    pub types: &'a [ObjectKind],
    /// Failures grouped by cause (on the first page of the failed listing).
    pub groups: Option<&'a FailureGroups>,
    /// The one cause the listing is narrowed to.
    pub cause: Option<&'a Cause>,
    /// Sync health at a glance (on the landing page).
    pub health: Option<&'a HealthFacts>,
}

impl<'a> RecordsView<'a> {
    /// Records that fit one page (search results, one cause's failures): no cursor, no
    /// narrowing by type.
    pub fn one_page(
        counts: &'a [(RecordFilter, Tally)],
        records: &'a [RecordState],
        names: &'a [Option<String>],
        here: &'a str,
    ) -> Self {
        Self {
            counts,
            filter: None,
            query: "",
            records,
            next_cursor: None,
            here,
            names,
            object: None,
            types: &[],
            groups: None,
            cause: None,
            health: None,
        }
    }
}

pub fn records_page(
    frame: &Frame<'_>,
    view: &RecordsView<'_>,
    crm_url: &dyn Fn(&RecordState) -> Option<String>,
) -> String {
    let content = html! {
        h1 { "Records" }
        @if let Some(health) = view.health {
            (health_summary(health))
        }
        (status_tabs(view))
        (search_form(view.query))
        @if let Some(groups) = view.groups {
            (failure_groups(frame, groups, view.here))
        }
        @match (view.filter, view.cause) {
            (_, Some(cause)) => {
                h2 { "Failed: " (cause_label(cause)) }
                p { (cause.hint()) " " a href="/admin?filter=failed" { "All failures" } }
                form.actions method="post" action="/admin/failures/resync" {
                    (csrf_field(frame.csrf))
                    input type="hidden" name="cause" value=(cause.key());
                    input type="hidden" name="back" value=(view.here);
                    button.quiet type="submit" { "Re-sync these " (view.records.len()) }
                }
            }
            (Some(filter), None) => {
                h2 { (filter_label(filter)) }
                (type_links(filter, view))
            }
            (None, None) => h2 { "Results for “" (view.query) "”" },
        }
        @if view.records.is_empty() {
            @if view.next_cursor.is_some() {
                p.muted { "None of this type among the records read so far." }
            } @else {
                p.muted { "No records." }
            }
        } @else {
            (records_form(frame, view, crm_url))
        }
        (next_page_link(view))
    };
    signed_in("Records", frame, content)
}

/// A cause as an operator reads it: the code, and the property it names.
fn cause_label(cause: &Cause) -> Markup {
    html! {
        code { (cause.code) }
        @if let Some(field) = &cause.field {
            " on " code { (field) }
        }
    }
}

/// The link to the failed records of one cause.
pub fn cause_href(cause: &Cause) -> String {
    format!("/admin?filter=failed&cause={}", url_part(&cause.key()))
}

/// Failures grouped by cause: how many, what fixes them, a few of them, and a re-sync of all.
fn failure_groups(frame: &Frame<'_>, groups: &FailureGroups, back: &str) -> Markup {
    html! {
        section aria-labelledby="causes" {
            h2 #causes { "Failures by cause" }
            @if groups.groups.is_empty() {
                p.muted { "No record is failing." }
            } @else {
                @if !groups.complete {
                    p.muted { "Grouped from the " (groups.read) " most recent failures." }
                }
                div.scroll {
                    table.cards {
                        thead {
                            tr {
                                th { "Cause" }
                                th { "Records" }
                                th { "What to do" }
                                th { "Action" }
                            }
                        }
                        tbody {
                            @for group in &groups.groups {
                                (failure_group_row(frame, group, groups.per_click, back))
                            }
                        }
                    }
                }
            }
        }
    }
}

fn failure_group_row(frame: &Frame<'_>, group: &FailureGroup, per_click: usize, back: &str) -> Markup {
    let helps = group.cause.fix_in().resync_helps();
    html! {
        tr data-cause=(group.cause.key()) {
            td { (cause_label(&group.cause)) }
            td data-label="Records" {
                a href=(cause_href(&group.cause)) {
                    (group.count) " " (if group.count == 1 { "record" } else { "records" })
                }
                @let objects: Vec<&str> = group.objects.iter().map(|o| o.as_str()).collect();
                " " span.muted { "(" (objects.join(", ")) ")" }
                br;
                span.muted {
                    "e.g. "
                    @for (index, (record, name)) in group.examples.iter().enumerate() {
                        @if index > 0 { ", " }
                        a href=(record_href(record)) { (name.clone().unwrap_or_else(|| record_key(record))) }
                    }
                }
                br;
                span.muted { "last failed " (when(group.newest_ms, frame.now_ms)) }
            }
            td data-label="What to do" {
                (group.cause.hint())
                @if !helps {
                    " " strong { "A re-sync alone cannot fix these." }
                }
            }
            td data-label="Action" {
                form method="post" action="/admin/failures/resync" {
                    (csrf_field(frame.csrf))
                    input type="hidden" name="cause" value=(group.cause.key());
                    input type="hidden" name="back" value=(back);
                    @let queued = group.count.min(per_click);
                    button.quiet[!helps] type="submit"
                        aria-label={ "Re-sync " (queued) " of the " (group.count) " records failing with " (group.cause.key()) } {
                        "Re-sync " (queued)
                        @if queued < group.count { " of " (group.count) }
                    }
                }
            }
        }
    }
}

fn level_class(level: Level) -> &'static str {
    match level {
        Level::Ok => "ok",
        Level::Warn => "warn",
        Level::Bad => "bad",
    }
}

/// A count with thousands separated (`12,345`).
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Is sync healthy, and if not, what to do: the verdict, what needs attention (each a link to
/// where it is acted on, worst first), and the facts it rests on.
pub fn health_summary(facts: &HealthFacts) -> Markup {
    let attention = facts.attention();
    let level = attention.first().map_or(Level::Ok, |line| line.level);
    let (_, failed, day) = facts.recent();
    let dead: u64 = facts.dead_letters.iter().map(|(_, depth)| depth).sum();
    html! {
        section.health.(level_class(level)) #health aria-labelledby="health-verdict" {
            h2 #health-verdict {
                @if attention.is_empty() { "Sync is healthy" } @else { "Sync needs attention" }
            }
            @if !attention.is_empty() {
                ul {
                    @for line in &attention {
                        li data-level=(level_class(line.level)) {
                            strong { @if line.level == Level::Bad { "Problem: " } @else { "Warning: " } }
                            a href=(line.href) { (line.text) }
                        }
                    }
                }
            }
            ul.facts {
                li { "Last successful sync: " (when(facts.last_synced_ms, facts.now_ms)) }
                li {
                    "Longest wait of a change: "
                    @match facts.oldest_pending_ms {
                        Some(at) => (span(facts.now_ms - at)),
                        None => (muted("none waiting")),
                    }
                }
                @if let Some(backlog) = facts.backlog {
                    li { "On the outbound queue: " (backlog) }
                }
                li { "Failed: " (failed) " in the last two hours, " (day) " in 24 h" }
                li { "Dead letters: " (dead) }
                @if let Some(budget) = &facts.budget {
                    li { "CRM budget today: " (percent(budget.used, budget.limit)) " of its " (budget.unit) " used" }
                }
                li { a href="/admin/health" { "Health details" } }
            }
        }
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0%".into();
    }
    format!("{:.0}%", part as f64 * 100.0 / whole as f64)
}

/// The health page: the verdict, outcomes per hour over seven days, the day's CRM budget, the
/// dead-letter queues and the last reconciliation.
pub fn health_page(
    frame: &Frame<'_>,
    facts: &HealthFacts,
    lanes: &[LaneView],
    report: Result<Option<&RunReport>, &str>,
) -> String {
    let content = html! {
        h1 { "Health" }
        (health_summary(facts))
        h2 #hours-title { "App changes synced to the CRM and failed, per hour, last 7 days (UTC)" }
        (hours_chart(&facts.hours))
        (hours_table(&facts.hours))
        h2 #budget-title { "CRM budget today" }
        @match &facts.budget {
            Some(budget) => (budget_chart(budget)),
            None => p.muted { "Not shown: this dashboard does not read the limiter." },
        }
        h2 { "Dead-letter queues" }
        div.scroll {
            table {
                thead { tr { th { "Queue" } th { "Waiting" } th { "Oldest" } th { "Its queue's backlog" } } }
                tbody {
                    @for lane in lanes {
                        tr data-lane=(lane.name) {
                            td { (lane.name) }
                            @match &lane.summary {
                                Ok(summary) => {
                                    td.depth { (summary.waiting) }
                                    td { (when(summary.oldest.as_ref().map(|oldest| oldest.sent_at_ms), frame.now_ms)) }
                                    td { (text_or(summary.source_waiting.map(|n| n.to_string()).as_deref(), "unknown")) }
                                }
                                Err(error) => td.err colspan="3" { (error) },
                            }
                        }
                    }
                }
            }
        }
        p { a href="/admin/queues" { "Redrive on the Queues page" } }
        h2 { "Last reconciliation" }
        (reconcile_report(report, frame.now_ms))
    };
    signed_in("Health", frame, content)
}

const CHART_W: i64 = 672;
const CHART_H: i64 = 120;

/// Bars per hour, synced below and failed stacked on top, drawn on the server (inline SVG: no
/// script, nothing fetched).
fn hours_chart(hours: &[HourCount]) -> Markup {
    let busiest = hours.iter().map(|h| h.synced + h.failed).max().unwrap_or(0);
    let top = busiest.max(1);
    let slot = CHART_W as f64 / hours.len().max(1) as f64;
    // A bar of one among thousands still shows (2 units at least).
    let height = |n: u64| match n {
        0 => 0.0,
        n => (n as f64 * (CHART_H - 16) as f64 / top as f64).max(2.0),
    };
    let (synced, failed): (u64, u64) = hours
        .iter()
        .fold((0, 0), |(s, f), h| (s + h.synced, f + h.failed));
    html! {
        svg.chart #hours-chart viewBox={ "0 0 " (CHART_W) " " (CHART_H + 14) } role="img"
            aria-labelledby="hours-title hours-desc" xmlns="http://www.w3.org/2000/svg" {
            desc #hours-desc {
                (synced) " changes synced and " (failed) " failed in the last " (hours.len()) " hours"
                @if busiest > 0 { "; the busiest hour had " (busiest) } "."
            }
            @for (index, hour) in hours.iter().enumerate() {
                @let x = index as f64 * slot;
                @let s = height(hour.synced);
                @let f = height(hour.failed);
                @if hour.synced > 0 {
                    rect x=(format!("{x:.1}")) y=(format!("{:.1}", CHART_H as f64 - s)) width=(format!("{:.1}", slot * 0.8))
                        height=(format!("{s:.1}")) fill="#2e8b57" {}
                }
                @if hour.failed > 0 {
                    rect.failed x=(format!("{x:.1}")) y=(format!("{:.1}", CHART_H as f64 - s - f)) width=(format!("{:.1}", slot * 0.8))
                        height=(format!("{f:.1}")) fill="#c62828" {}
                }
                // A day's label where it fits (not on the chart's last bars).
                @if hour.hour_ms.rem_euclid(86_400_000) == 0 && x < (CHART_W - 30) as f64 {
                    line x1=(format!("{x:.1}")) x2=(format!("{x:.1}")) y1="0" y2=(CHART_H) stroke="#dde2ea" {}
                    text x=(format!("{:.1}", x + 2.0)) y=(CHART_H + 12) font-size="10" fill="#5b6575" {
                        (rfc3339(hour.hour_ms).get(5..10).unwrap_or_default())
                    }
                }
            }
            @if busiest > 0 {
                text x="4" y="11" font-size="10" fill="#5b6575" { (busiest) " an hour at most" }
            }
        }
        p.muted {
            span style="color:#2e8b57" aria-hidden="true" { "■ " } "synced (below),  "
            span style="color:#c62828" aria-hidden="true" { "■ " } "failed, dead-lettered (stacked on top)"
        }
    }
}

/// The chart's numbers, a day a row, for reading without the picture.
fn hours_table(hours: &[HourCount]) -> Markup {
    let mut days: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for hour in hours {
        let day = days
            .entry(rfc3339(hour.hour_ms).get(..10).unwrap_or_default().to_string())
            .or_default();
        day.0 += hour.synced;
        day.1 += hour.failed;
    }
    html! {
        details {
            summary { "The numbers, per day (UTC)" }
            table #hours-table {
                thead { tr { th { "Day" } th { "Synced" } th { "Failed" } } }
                tbody {
                    @for (day, (synced, failed)) in days.iter().rev() {
                        tr { td { (day) } td { (synced) } td { (failed) } }
                    }
                }
            }
        }
    }
}

/// The day's budget as one bar: spent, where background work stops, where every call stops.
fn budget_chart(budget: &DayBudget) -> Markup {
    let scale = |n: u64| n.min(budget.limit) as f64 * CHART_W as f64 / budget.limit.max(1) as f64;
    let used = scale(budget.used);
    let background = scale(budget.background_stop());
    let live = scale(budget.live_stop());
    html! {
        svg.chart #budget-chart viewBox={ "0 0 " (CHART_W) " 40" } role="img" aria-labelledby="budget-title budget-desc"
            xmlns="http://www.w3.org/2000/svg" {
            desc #budget-desc {
                (thousands(budget.used)) " of " (thousands(budget.limit)) " " (budget.unit) " used; background work stops at "
                (thousands(budget.background_stop())) ", live changes at " (thousands(budget.live_stop())) "."
            }
            rect x="0" y="8" width=(CHART_W) height="24" fill="#eceef2" {}
            rect #budget-used x="0" y="8" width=(format!("{used:.1}")) height="24" fill="#1f5fd1" {}
            // The reserves over the spend, so that where it stops always shows.
            rect x=(format!("{background:.1}")) y="8" width=(format!("{:.1}", live - background)) height="24"
                fill="#f0c24b" fill-opacity="0.55" {}
            rect x=(format!("{live:.1}")) y="8" width=(format!("{:.1}", CHART_W as f64 - live)) height="24"
                fill="#c62828" fill-opacity="0.45" {}
        }
        p #budget-facts {
            (thousands(budget.used)) " of " (thousands(budget.limit)) " " (budget.unit) " used today ("
            (percent(budget.used, budget.limit)) "). Background work (reconciliation, backfills) stops at "
            (thousands(budget.background_stop())) " (the live reserve, yellow, is for live changes); every call stops at "
            (thousands(budget.live_stop())) " (the reserve, red, is left for the account's other users)."
            @if let Some(until) = budget.paused_until_ms {
                " The CRM refused the day's calls (429): none before " (rfc3339(until)) "."
            }
        }
    }
}

/// Every dead letter crm-sync journaled for a queue: when, what it is about (a link to its
/// record), why, and where it stands; paged and searchable.
pub fn letters_page(
    frame: &Frame<'_>,
    lane: &str,
    query: &str,
    page: &super::LetterPage,
    here_cursor: Option<&str>,
) -> String {
    let content = html! {
        h1 { "Dead letters: " (lane) }
        p.muted {
            "Every message crm-sync dead-lettered to this queue in the last 15 days, newest first. "
            "Fix the cause, then redrive from the " a href="/admin/queues" { "Queues page" } ". "
            "A message the queue moved there by itself (after repeated crashed deliveries) is not "
            "listed: the Queues page counts it and shows the oldest."
        }
        form.search method="get" action="/admin/queues/letters" role="search" {
            input type="hidden" name="lane" value=(lane);
            input type="search" name="q" value=(query) placeholder="Reason, record id or any text of the message"
                aria-label="Search the dead letters";
            button type="submit" { "Search" }
        }
        @if page.letters.is_empty() {
            p.muted {
                @if page.next.is_some() {
                    "None among the letters searched so far: the next page searches older ones."
                } @else if query.is_empty() {
                    "No dead letters."
                } @else {
                    "No dead letter matches."
                }
            }
        } @else {
            div.scroll {
                table.cards #letters {
                    thead {
                        tr { th { "When" } th { "About" } th { "Reason" } th { "Status" } th.hide-narrow { "Message" } }
                    }
                    tbody {
                        @for (letter, standing, name) in &page.letters {
                            tr data-letter=(letter.key) {
                                td data-label="When" { (when(Some(letter.at_ms), frame.now_ms)) }
                                td data-label="About" {
                                    @match (&letter.record, &letter.subject) {
                                        (Some(record), _) => {
                                            a href=(record_href(record)) {
                                                (name.clone().unwrap_or_else(|| record_key(record)))
                                            }
                                        }
                                        (None, Some(subject)) => (subject),
                                        (None, None) => (muted("no record: the message could not be read")),
                                    }
                                }
                                td.err data-label="Reason" { (short(&letter.reason, 300)) }
                                td data-label="Status" {
                                    @match standing {
                                        super::LetterStanding::Waiting => span.badge.s-failed { "waiting" },
                                        super::LetterStanding::Fixed { synced_at_ms } => {
                                            span.badge.s-synced { "fixed" } " synced " (when(Some(*synced_at_ms), frame.now_ms))
                                        }
                                        super::LetterStanding::Redriven { at_ms } => {
                                            span.badge.s-pending { "redriven" } " " (when(Some(*at_ms), frame.now_ms))
                                            @if let Some(by) = &letter.redriven_by {
                                                " by " (by)
                                            }
                                        }
                                    }
                                }
                                td.hide-narrow data-label="Message" {
                                    details { summary { "Show" } pre { (pretty(&letter.body)) } }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &page.next {
            p {
                a rel="next" href={
                    "/admin/queues/letters?lane=" (url_part(lane))
                    @if !query.is_empty() { "&q=" (url_part(query)) }
                    "&cursor=" (url_part(next))
                } { "Next page →" }
            }
        }
        @if here_cursor.is_some() {
            p {
                a href={
                    "/admin/queues/letters?lane=" (url_part(lane))
                    @if !query.is_empty() { "&q=" (url_part(query)) }
                } { "First page" }
            }
        }
    };
    signed_in("Dead letters", frame, content)
}

/// One tab per listing, with its count.
fn status_tabs(view: &RecordsView<'_>) -> Markup {
    html! {
        nav.tabs aria-label="Status" {
            @for (filter, count) in view.counts {
                @let on = view.filter == Some(*filter);
                a.tab.on[on] href={ "/admin?filter=" (filter.as_str()) }
                    aria-current=[on.then_some("page")] {
                    span.badge.{ "s-" (filter.as_str()) } { (filter_label(*filter)) }
                    span.count data-filter=(filter.as_str()) { (tally(count)) }
                }
            }
        }
    }
}

fn search_form(query: &str) -> Markup {
    html! {
        form.search method="get" action="/admin" role="search" {
            input type="search" name="q" value=(query) placeholder="App id, email or CRM id"
                aria-label="Search";
            button type="submit" { "Search" }
        }
    }
}

/// The listing as a form: re-sync the checked records, or every record on the page.
fn records_form(
    frame: &Frame<'_>,
    view: &RecordsView<'_>,
    crm_url: &dyn Fn(&RecordState) -> Option<String>,
) -> Markup {
    html! {
        form method="post" action="/admin/resync" {
            (csrf_field(frame.csrf))
            input type="hidden" name="back" value=(view.here);
            div.scroll {
                // On a phone each row is a card, its cells labelled, the error at full width.
                table.cards {
                    thead {
                        tr {
                            th { span.hide-narrow { "Select" } }
                            th { "Record" }
                            th { "Status" }
                            th { "CRM id" }
                            th { "Last synced" }
                            th.hide-narrow { "Attempts" }
                            th { "Last error" }
                        }
                    }
                    tbody {
                        @for (index, state) in view.records.iter().enumerate() {
                            (record_row(
                                state,
                                view.names.get(index).cloned().flatten(),
                                crm_url(state),
                                frame.now_ms,
                            ))
                        }
                    }
                }
            }
            @for state in view.records {
                input type="hidden" name="page_record" value=(record_key(&state.record));
            }
            div.actions {
                button type="submit" name="scope" value="selected" { "Re-sync selected" }
                // One cause's page lists more than a page: its own form above re-syncs them all.
                @if view.cause.is_none() {
                    button.quiet type="submit" name="scope" value="page" {
                        "Re-sync all " (view.records.len()) " on this page"
                    }
                }
            }
        }
    }
}

fn record_row(state: &RecordState, name: Option<String>, crm_url: Option<String>, now_ms: i64) -> Markup {
    let key = record_key(&state.record);
    html! {
        tr {
            td {
                input type="checkbox" name="record" value=(key)
                    aria-label={ "Select " (name.as_deref().unwrap_or(&key)) };
            }
            td {
                @if let Some(name) = &name {
                    a href=(record_href(&state.record)) { (name) }
                    br;
                    span.muted { (key) }
                } @else {
                    a href=(record_href(&state.record)) { (key) }
                }
            }
            td data-label="Status" {
                (status_badge(state.status))
                @if state.open_conflicts {
                    " " span.badge.s-conflict { "conflict" }
                }
            }
            td data-label="CRM id" { (crm_cell(state, crm_url)) }
            td data-label="Last synced" { (when(state.last_synced_at_ms, now_ms)) }
            td.hide-narrow data-label="Attempts" { (state.attempts) }
            @match state.last_error.as_deref() {
                Some(error) => td.err data-label="Last error" { (short(error, 160)) },
                None => td.err {},
            }
        }
    }
}

/// The listing narrowed to one object type, or all of them.
fn type_links(filter: RecordFilter, view: &RecordsView<'_>) -> Markup {
    html! {
        nav.types aria-label="Object type" {
            a.on[view.object.is_none()] href={ "/admin?filter=" (filter.as_str()) }
                aria-current=[view.object.is_none().then_some("page")] { "All types" }
            @for object in view.types {
                @let on = view.object == Some(*object);
                " · "
                a.on[on] href={ "/admin?filter=" (filter.as_str()) "&type=" (object.as_str()) }
                    aria-current=[on.then_some("page")] { (object.as_str()) }
            }
        }
    }
}

/// Only listings page (search results are one page).
fn next_page_link(view: &RecordsView<'_>) -> Markup {
    html! {
        @if let (Some(cursor), Some(filter)) = (view.next_cursor, view.filter) {
            p {
                a rel="next" href={
                    "/admin?filter=" (filter.as_str())
                    @if let Some(object) = view.object { "&type=" (object.as_str()) }
                    "&cursor=" (url_part(cursor))
                } {
                    "Next page →"
                }
            }
        }
    }
}

fn crm_cell(state: &RecordState, url: Option<String>) -> Markup {
    html! {
        @match (&state.crm_id, url) {
            (Some(id), Some(url)) => {
                a href=(url) rel="noreferrer" target="_blank" { (id) }
            }
            (Some(id), None) => (id),
            (None, _) => (muted("none yet")),
        }
    }
}

/// A message as indented JSON, or as it is when it is not JSON.
fn pretty(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|value| serde_json::to_string_pretty(&value).ok())
        .unwrap_or_else(|| body.to_string())
}

fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max).collect();
    cut.push('…');
    cut
}

/// A record's page. After a re-sync it follows the record, reloading itself until the
/// re-sync has an outcome (for [`FOLLOW_MS`] at most), unless `follow` is off.
pub fn record_page(frame: &Frame<'_>, view: &RecordView, crm_url: Option<String>, follow: bool) -> String {
    let state = &view.state;
    let key = record_key(&state.record);
    let href = record_href(&state.record);
    let queued_at = view.resync_queued_at(frame.now_ms);
    let following = follow && queued_at.is_some_and(|at| frame.now_ms - at < FOLLOW_MS);
    let content = html! {
        h1 {
            (key) " " (status_badge(state.status))
            @if queued_at.is_some() { " " span.badge.s-pending #live-status { "re-sync queued" } }
        }
        @if let Some(at) = queued_at {
            p.notice role="status" #following {
                "Re-sync queued " (when(Some(at), frame.now_ms)) "; no outcome yet."
                @if following {
                    " This page reloads every " (FOLLOW_EVERY_S) " s until the record settles. "
                    a href={ (href) "&follow=0" } { "Stop following" }
                } @else if follow {
                    " Still none after " (FOLLOW_MS / 60_000) " minutes: the re-sync queue may be backed up, \
                     its event source paused, or another change of the record being written. Reload to check."
                }
            }
        }
        (resync_form(frame.csrf, &key, &href))
        (record_facts(state, crm_url, frame.now_ms))
        (identity_section(frame, state, &key))
        (conflicts_section(frame, view, &key))
        (timeline_section(&view.timeline, frame.now_ms))
        (values_table("Written to the CRM", &state.written))
        (values_table("Received from the CRM", &state.received))
    };
    signed_in_with(&key, following.then_some(href.as_str()), frame, content)
}

fn resync_form(csrf: &str, key: &str, back: &str) -> Markup {
    html! {
        form.actions method="post" action="/admin/resync" {
            (csrf_field(csrf))
            input type="hidden" name="record" value=(key);
            input type="hidden" name="back" value=(back);
            button type="submit" name="scope" value="selected" { "Re-sync" }
        }
    }
}

/// The record's sync state at a glance.
fn record_facts(state: &RecordState, crm_url: Option<String>, now_ms: i64) -> Markup {
    html! {
        dl {
            dt { "Status" }
            dd { (status_badge(state.status)) }
            dt { "CRM id" }
            dd { (crm_cell(state, crm_url)) }
            dt { "Last synced" }
            dd { (when(state.last_synced_at_ms, now_ms)) }
            dt { "Last attempt" }
            dd { (when(state.last_attempt_at_ms, now_ms)) }
            dt { "Attempts" }
            dd { (state.attempts) }
            dt { "Last error" }
            dd.err #last-error { (text_or(state.last_error.as_deref(), "none")) }
            dt { "Applied change" }
            dd {
                @match (&state.applied_idempotency_id, state.applied_version_ms) {
                    (Some(id), Some(version)) => { (id) " (version " (rfc3339(version)) ")" }
                    _ => (muted("none")),
                }
            }
            dt { "Waiting change" }
            dd {
                @match &state.pending_change {
                    Some(body) => pre { (pretty(body)) },
                    None => (muted("none")),
                }
            }
            dt { "Conflicts" }
            dd {
                (state.conflicts)
                @if state.open_conflicts { " (open)" }
            }
        }
    }
}

/// Who the record is in the CRM, when a merge or a privacy deletion changed it.
fn identity_section(frame: &Frame<'_>, state: &RecordState, key: &str) -> Markup {
    html! {
        @if let Some(at) = state.erased_at_ms {
            h2 { "Identity" }
            p #identity { "Erased for privacy at " (rfc3339(at)) ": crm-sync keeps no value of it and refuses its changes." }
        } @else if let Some(reason) = &state.identity_conflict {
            h2 { "Identity" }
            p.err #identity { (reason) }
            form.actions method="post" action="/admin/identity/share" {
                (csrf_field(frame.csrf))
                input type="hidden" name="record" value=(key);
                button.quiet type="submit" { "Share the CRM record" }
            }
        } @else if state.follow_crm_id {
            h2 { "Identity" }
            p #identity {
                "Follows CRM record " (state.crm_id.as_deref().unwrap_or("")) ", into which the CRM merged its own; see the timeline."
            }
        }
    }
}

fn conflicts_section(frame: &Frame<'_>, view: &RecordView, key: &str) -> Markup {
    html! {
        h2 { "Conflicts" }
        @if view.conflicts.is_empty() {
            p.muted { "None: no app-owned field of this record was changed in the CRM." }
        } @else {
            @if view.state.open_conflicts {
                form.actions method="post" action="/admin/conflicts/dismiss" {
                    (csrf_field(frame.csrf))
                    input type="hidden" name="record" value=(key);
                    button.quiet type="submit" { "Dismiss conflicts" }
                }
            }
            div.scroll {
                table {
                    thead {
                        tr {
                            th { "When" }
                            th { "Field" }
                            th { "App value" }
                            th { "CRM value" }
                            th { "Outcome" }
                            th { "Status" }
                        }
                    }
                    tbody {
                        @for conflict in &view.conflicts {
                            (conflict_row(conflict, &view.state, frame.now_ms))
                        }
                    }
                }
            }
        }
    }
}

fn conflict_row(conflict: &ConflictEntry, state: &RecordState, now_ms: i64) -> Markup {
    let status = conflict_status(
        conflict,
        &state.conflict_marks,
        state.conflicts_dismissed_at_ms,
        state.open_conflicts,
    );
    html! {
        tr {
            td { (when(Some(conflict.at_ms), now_ms)) }
            td { (conflict.field) " " span.muted { "(" (conflict.crm_property) ")" } }
            td { (text_or(conflict.app_value.as_deref(), "unknown")) }
            td { (conflict.crm_value) }
            td { (conflict.resolution) }
            td.conflict-status {
                @match status {
                    ConflictStatus::Open => span.badge.s-conflict { "open" },
                    ConflictStatus::Resolved(at) => {
                        span.badge.s-synced { "resolved" }
                        " the app's value written to the CRM again " (when(Some(at), now_ms))
                    }
                    ConflictStatus::Dismissed(at) => {
                        span.badge.s-deleted { "dismissed" } " " (when(Some(at), now_ms))
                    }
                    ConflictStatus::Closed => span.badge.s-deleted { "closed" },
                }
            }
        }
    }
}

fn timeline_section(timeline: &[TimelineEntry], now_ms: i64) -> Markup {
    html! {
        h2 { "Timeline" }
        @if timeline.is_empty() {
            p.muted { "Nothing yet." }
        } @else {
            div.scroll {
                table #timeline {
                    thead {
                        tr {
                            th { "When" }
                            th { "What" }
                            th { "Detail" }
                            th.hide-narrow { "CRM call" }
                        }
                    }
                    tbody {
                        @for entry in timeline {
                            (timeline_row(entry, now_ms))
                        }
                    }
                }
            }
        }
    }
}

fn timeline_row(entry: &TimelineEntry, now_ms: i64) -> Markup {
    html! {
        tr {
            td { (when(Some(entry.at_ms), now_ms)) }
            td { (entry.kind.as_str()) }
            td {
                (entry.detail)
                @if let Some(id) = &entry.idempotency_id {
                    " " span.muted { "(" (id) ")" }
                }
            }
            td.hide-narrow { (entry.call.as_deref().unwrap_or("")) }
        }
    }
}

/// CRM property values, under a heading; nothing at all when there are none.
fn values_table(heading: &str, values: &BTreeMap<String, String>) -> Markup {
    html! {
        @if !values.is_empty() {
            h2 { (heading) }
            div.scroll {
                table {
                    thead {
                        tr {
                            th { "CRM property" }
                            th { "Value" }
                        }
                    }
                    tbody {
                        @for (name, value) in values {
                            tr {
                                td { (name) }
                                td { (value) }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn queues_page(
    frame: &Frame<'_>,
    lanes: &[LaneView],
    report: Result<Option<&RunReport>, &str>,
    backfills: Result<&[BackfillProgress], &str>,
    plans: Result<&[PlanSummary], &str>,
) -> String {
    let content = html! {
        h1 { "Queues" }
        p.muted {
            "Dead letters are changes and events that failed for good or kept failing. Fix the cause, \
             then redrive: the messages go back to their queue, and running it twice is safe."
        }
        div.scroll {
            table {
                thead {
                    tr {
                        th { "Dead-letter queue" }
                        th { "Waiting" }
                        th.hide-narrow { "In flight" }
                        th { "Oldest" }
                        th { "Action" }
                    }
                }
                tbody {
                    @for lane in lanes {
                        (lane_row(lane, frame))
                    }
                }
            }
        }
        h2 { "Latest reconciliation" }
        (reconcile_report(report, frame.now_ms))
        h2 { "Adoption plans" }
        (plan_table(plans, backfills.unwrap_or(&[])))
        h2 { "Adoption backfills" }
        (backfill_table(backfills, frame.now_ms))
    };
    signed_in("Queues", frame, content)
}

/// The link to a plan's page.
pub fn plan_href(plan_id: &str) -> String {
    format!("/admin/adoption?plan={}", url_part(plan_id))
}

/// The newest plans (made with `crm-sync-adopt plan`): what each would do and what it costs.
fn plan_table(plans: Result<&[PlanSummary], &str>, backfills: &[BackfillProgress]) -> Markup {
    html! {
        @match plans {
            Err(error) => p.err { "Could not read the plans: " (error) },
            Ok([]) => p.muted { "No plan has been made. Make one with crm-sync-adopt plan (docs/adoption.md)." },
            Ok(plans) => div.scroll {
                table #plans {
                    thead {
                        tr {
                            th { "Plan" }
                            th { "Records" }
                            th { "Create" }
                            th { "Update" }
                            th.hide-narrow { "Unchanged" }
                            th { "Link" }
                            th { "Conflicts" }
                            th.hide-narrow { "CRM calls" }
                            th { "Backfill" }
                        }
                    }
                    tbody {
                        @for plan in plans {
                            tr data-plan=(plan.plan_id) {
                                td {
                                    a href=(plan_href(&plan.plan_id)) { (plan.plan_id) }
                                    br;
                                    span.muted { (plan.crm) ", " (plan.planned_at) }
                                }
                                td { (plan.counts.records) }
                                td { (plan.counts.create) }
                                td { (plan.counts.update) }
                                td.hide-narrow { (plan.counts.unchanged) }
                                td { (plan.counts.link) }
                                td { (plan.counts.conflict) }
                                td.hide-narrow { (plan.cost.total_calls) }
                                td {
                                    @match backfills.iter().find(|b| b.plan_id == plan.plan_id) {
                                        Some(backfill) => (format!("{:?}", backfill.phase).to_lowercase()),
                                        None => (muted("not started")),
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One plan: its decisions, its cost, its backfill, and a few of its records of each kind.
pub fn plan_page(frame: &Frame<'_>, plan: &PlanSummary, backfill: Option<&BackfillProgress>) -> String {
    let c = &plan.counts;
    let examples = |name: &str| -> Vec<&PlanItem> {
        plan.examples
            .iter()
            .filter(|item| item.action.name() == name)
            .collect()
    };
    let content = html! {
        h1 { "Plan " (plan.plan_id) }
        p.muted {
            (c.records) " records of " (plan.input) " planned against " (plan.crm) " at " (plan.planned_at)
            ". The plan directory (plan.jsonl) holds every record; this page shows the counts and the first few of each kind."
        }
        div.scroll {
            table #decisions {
                thead { tr { th { "Decision" } th { "Records" } th { "What the backfill does" } } }
                tbody {
                    tr data-action="create" { td { "create" } td { (c.create) } td { "creates them: no CRM record carries their id or holds their email" } }
                    tr data-action="update" { td { "update" } td { (c.update) } td { "writes the app-owned fields that differ" } }
                    tr data-action="unchanged" { td { "unchanged" } td { (c.unchanged) } td { "writes them once, so that crm-sync knows them from the first day" } }
                    tr data-action="link" { td { "link" } td { (c.link) } td { "writes the app's id onto the CRM record that holds their email, then their fields" } }
                    tr data-action="conflict" { td { "identity conflict" } td { (c.conflict) } td { "nothing: a person decides which record is which" } }
                    tr { td { "CRM-owned values" } td { (c.crm_owned_records) } td { "the initial pull tells the app" } }
                    tr { td { "invalid lines" } td { (c.invalid) } td { "left out (invalid.jsonl says why)" } }
                }
            }
        }
        p #fields-to-write { (c.fields_to_write) " app-owned values differ in all, over the updates and links." }
        h2 { "Cost" }
        dl #cost {
            dt { "CRM calls" }
            dd {
                (plan.cost.total_calls) " (" (plan.cost.link_calls) " for links, " (plan.cost.write_calls)
                " writes, " (plan.cost.pull_calls) " pull reads); the plan itself made " (c.plan_calls)
            }
            dt { "Share of a day's budget" }
            dd {
                (format!("{:.1}%", plan.cost.share_of_daily_budget * 100.0)) " of "
                (plan.budget.daily_limit.saturating_sub(plan.budget.daily_reserve + plan.budget.live_reserve))
                " calls (the daily limit less the reserve and the live reserve)"
            }
            dt { "Days" }
            dd { (plan.cost.days) }
            dt { "At the rate ceiling" }
            dd { (format!("{:.0} s at {:.1} calls a second", plan.cost.seconds_at_ceiling, plan.budget.calls_per_second)) }
        }
        h2 { "Backfill" }
        @match backfill {
            Some(backfill) => (backfill_table(Ok(std::slice::from_ref(backfill)), frame.now_ms)),
            None => p.muted #not-started { "Not started. Run it with crm-sync-adopt backfill adoption/" (plan.plan_id) "." },
        }
        @let conflicts = examples("conflict");
        @if !conflicts.is_empty() {
            h2 { "Identity conflicts" }
            div.scroll {
                table #conflicts {
                    thead { tr { th { "Record" } th { "Why" } th { "CRM records" } } }
                    tbody {
                        @for item in &conflicts {
                            @if let Action::Conflict { reason, crm_ids } = &item.action {
                                tr {
                                    td { (item.object) " " (item.record_id) }
                                    td { (reason) }
                                    td { (crm_ids.join(", ")) }
                                }
                            }
                        }
                    }
                }
            }
        }
        @let changes: Vec<&PlanItem> = examples("update").into_iter().chain(examples("link")).collect();
        @if !changes.is_empty() {
            h2 { "Field by field" }
            div.scroll {
                table #changes {
                    thead { tr { th { "Record" } th { "Decision" } th { "Field" } th { "In the CRM" } th { "From the app" } } }
                    tbody {
                        @for item in &changes {
                            @match &item.action {
                                Action::Update { crm_id, fields } | Action::Link { crm_id, fields } => {
                                    @if fields.is_empty() {
                                        tr {
                                            td { (item.object) " " (item.record_id) }
                                            td { (item.action.name()) " CRM record " (crm_id) }
                                            td colspan="3" { (muted("every app value already there")) }
                                        }
                                    }
                                    @for change in fields {
                                        tr {
                                            td { (item.object) " " (item.record_id) }
                                            td { (item.action.name()) " CRM record " (crm_id) }
                                            td { (change.field) }
                                            td { (text_or(Some(change.in_crm.as_str()).filter(|v| !v.is_empty()), "empty")) }
                                            td { (change.app) }
                                        }
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
        @let owned: Vec<&PlanItem> = plan.examples.iter().filter(|item| !item.crm_owned.is_empty()).collect();
        @if !owned.is_empty() {
            h2 { "CRM-owned values the app will receive" }
            div.scroll {
                table #crm-owned {
                    thead { tr { th { "Record" } th { "Values" } } }
                    tbody {
                        @for item in &owned {
                            tr {
                                td { (item.object) " " (item.record_id) }
                                td {
                                    @for (field, value) in &item.crm_owned {
                                        (field) " = " (value) br;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    signed_in("Adoption plan", frame, content)
}

/// Each backfill's phase and progress (run and resumed with `crm-sync-adopt backfill`).
fn backfill_table(backfills: Result<&[BackfillProgress], &str>, now_ms: i64) -> Markup {
    html! {
        @match backfills {
            Err(error) => p.err { "Could not read the backfills: " (error) },
            Ok([]) => p.muted { "No backfill has run. Plan one with crm-sync-adopt (docs/adoption.md)." },
            Ok(backfills) => div.scroll {
                table #backfills {
                    thead {
                        tr {
                            th { "Plan" }
                            th { "Phase" }
                            th { "Sent" }
                            th.hide-narrow { "Linked" }
                            th.hide-narrow { "Pulled" }
                            th { "Waiting for a person" }
                            th.hide-narrow { "CRM calls" }
                            th.hide-narrow { "Runs" }
                            th { "Updated" }
                        }
                    }
                    tbody {
                        @for backfill in backfills {
                            tr data-plan=(backfill.plan_id) {
                                td { (backfill.plan_id) }
                                td {
                                    (format!("{:?}", backfill.phase).to_lowercase())
                                    @if let Some(stopped) = &backfill.stopped {
                                        div.err.reason { "stopped: " (stopped) }
                                    }
                                }
                                td { (backfill.sent) " of " (backfill.to_write) }
                                td.hide-narrow { (backfill.linked) }
                                td.hide-narrow {
                                    (backfill.pulled)
                                    @if backfill.pull_deferred > 0 {
                                        " (" (backfill.pull_deferred) " left to the reconciliation)"
                                    }
                                }
                                td {
                                    (backfill.conflicts) " conflicts, " (backfill.refused.len()) " links refused"
                                    @if backfill.waiting_on_contact > 0 {
                                        ", " (backfill.waiting_on_contact) " of their deals and activities"
                                    }
                                }
                                td.hide-narrow { (backfill.crm_calls) }
                                td.hide-narrow { (backfill.runs) }
                                td { (when(Some(backfill.updated_at_ms), now_ms)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn lane_row(lane: &LaneView, frame: &Frame<'_>) -> Markup {
    html! {
        tr data-lane=(lane.name) {
            td {
                strong { (lane.name) }
                br;
                span.muted { (lane.description) }
                // crm-sync journals what it dead-letters itself; the app-inbox queue's letters
                // are the app consumer's.
                @if lane.name != "app-inbox" {
                    br;
                    a href={ "/admin/queues/letters?lane=" (lane.name) } { "Every dead letter" }
                }
            }
            @match &lane.summary {
                Ok(summary) => (lane_cells(summary, frame.now_ms)),
                Err(error) => {
                    td.depth { "?" }
                    td.hide-narrow { "?" }
                    td { span.err { "could not read the queue: " (error) } }
                }
            }
            td {
                // Nothing waits: nothing to redrive (a queue that cannot be read may still hold some).
                @let empty = matches!(&lane.summary, Ok(summary) if summary.waiting == 0);
                form method="post" action="/admin/queues/redrive" {
                    (csrf_field(frame.csrf))
                    input type="hidden" name="lane" value=(lane.name);
                    button type="submit" disabled[empty]
                        title=[empty.then_some("The queue is empty")] { "Redrive" }
                }
            }
        }
    }
}

/// Waiting, in flight and the oldest letter: three cells of a lane's row.
fn lane_cells(summary: &DeadLetterSummary, now_ms: i64) -> Markup {
    html! {
        td.depth { (summary.waiting) }
        td.hide-narrow { (summary.in_flight) }
        td {
            @match &summary.oldest {
                None => (muted("empty")),
                Some(letter) => {
                    (when(Some(letter.sent_at_ms), now_ms))
                    div.err.reason { (letter.reason.as_deref().unwrap_or(NO_REASON)) }
                    details {
                        summary { "Message" }
                        pre { (short(&letter.body, 2000)) }
                    }
                }
            }
        }
    }
}

fn reconcile_report(report: Result<Option<&RunReport>, &str>, now_ms: i64) -> Markup {
    html! {
        @match report {
            Err(error) => p.err { "Could not read the reports: " (error) },
            Ok(None) => p.muted { "No reconciliation has run yet." },
            Ok(Some(report)) => (report_facts(report, now_ms)),
        }
    }
}

fn report_facts(report: &RunReport, now_ms: i64) -> Markup {
    html! {
        dl #reconcile-report {
            dt { "Run" }
            dd { (report.run_id) }
            dt { "Started" }
            dd { (when(Some(report.started_at_ms), now_ms)) }
            dt { "Finished" }
            dd { (when(report.finished_at_ms, now_ms)) }
            dt { "Records checked" }
            dd { (report.checked) }
            dt { "Re-enqueued" }
            dd { (report.requeued) }
            dt { "Drift healed" }
            dd { (report.healed) }
            dt { "Drift flagged" }
            dd { (report.flagged) }
            dt { "CRM-owned drift" }
            dd { (report.crm_drift) }
            dt { "Errors" }
            dd { (report.errors) }
            dt { "CRM calls" }
            dd { (report.api_calls) }
            dt { "Segments" }
            dd { (report.segments_checked) " of " (report.segments) " (tonight's: " (report.segment) ")" }
            dt { "Stopped early" }
            dd { (report.stopped.as_deref().unwrap_or("no")) }
        }
    }
}

pub fn message_page(title: &str, message: &str) -> String {
    let header = html! {
        header { a.brand href="/admin" { "crm-sync" } }
    };
    let content = html! {
        h1 { (title) }
        p { (message) }
    };
    document(title, header, content)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::contract::ObjectKind;
    use crate::domain::sync::TimelineKind;

    #[test]
    fn escaping_neutralises_markup_in_text_and_attributes() {
        let hostile = "<script>alert(\"x\")</script> & 'y'";
        let escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; 'y'";
        let login = login_page(Some(hostile), hostile);
        assert!(!login.contains("<script>"), "{login}");
        assert!(
            login.contains("role=\"alert\">&lt;script&gt;alert(&quot;x&quot;)"),
            "{login}"
        );
        assert!(
            login.contains("name=\"next\" value=\"&lt;script&gt;alert(&quot;x&quot;)"),
            "{login}"
        );
        let message = message_page(hostile, hostile);
        assert!(!message.contains("<script>"), "{message}");
        assert_eq!(
            message.matches(escaped).count(),
            3,
            "title, heading and text: {message}"
        );
    }

    #[test]
    fn a_hostile_record_id_and_error_never_reach_the_page_as_markup() {
        let mut state = RecordState::new(RecordRef {
            object: ObjectKind::Contact,
            record_id: "<img src=x onerror=alert(1)>".into(),
        });
        state.status = SyncStatus::Failed;
        state.last_error = Some("\"><script>alert(2)</script>".into());
        let frame = Frame {
            csrf: "t\"oken",
            operator: "ada@example.com",
            now_ms: 0,
            notice: None,
        };
        let groups = FailureGroups {
            groups: vec![FailureGroup {
                cause: crate::domain::failures::cause_of(state.last_error.as_deref().unwrap_or_default()),
                count: 1,
                objects: [ObjectKind::Contact].into(),
                examples: vec![(state.record.clone(), Some("<script>alert(3)</script>".into()))],
                newest_ms: None,
            }],
            per_click: 500,
            read: 1,
            complete: true,
        };
        let page = records_page(
            &frame,
            &RecordsView {
                counts: &[],
                filter: Some(RecordFilter::Status(SyncStatus::Failed)),
                query: "</form>",
                records: &[state],
                next_cursor: Some("a&b"),
                here: "/admin?filter=failed",
                names: &[],
                object: None,
                types: &[],
                groups: Some(&groups),
                cause: None,
                health: None,
            },
            &|_| None,
        );
        assert!(
            page.contains("&lt;script&gt;alert(3)"),
            "a name in a cause's examples is text"
        );
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains("t\"oken"));
        assert!(page.contains("id=%3Cimg+src%3Dx+onerror%3Dalert%281%29%3E"));
        assert!(
            page.contains("&quot;&gt;&lt;script&gt;alert(2)&lt;/script&gt;"),
            "{page}"
        );
        assert!(page.contains("cursor=a%26b"), "{page}");
    }

    #[test]
    fn hostile_values_on_a_record_page_are_shown_as_text() {
        let hostile = |what: &str| ["\"'><script>alert('", what, "')</script>"].concat();
        let record = RecordRef {
            object: ObjectKind::Contact,
            record_id: hostile("id"),
        };
        let mut state = RecordState::new(record.clone());
        state.status = SyncStatus::Failed;
        state.crm_id = Some(hostile("crm"));
        state.last_error = Some(hostile("error"));
        state.pending_change = Some(hostile("pending"));
        state.open_conflicts = true;
        state.written.insert(hostile("property"), hostile("written"));
        state.received.insert("email".into(), hostile("received"));
        let view = RecordView {
            state,
            timeline: vec![TimelineEntry {
                record: record.clone(),
                at_ms: 0,
                kind: TimelineKind::Failed,
                idempotency_id: Some(hostile("idempotency")),
                detail: hostile("detail"),
                call: Some(hostile("call")),
            }],
            conflicts: vec![ConflictEntry {
                record,
                at_ms: 0,
                field: hostile("field"),
                crm_property: hostile("crm_property"),
                app_value: Some(hostile("app")),
                crm_value: hostile("crm-value"),
                source: "webhook".into(),
                event_key: "e-1".into(),
                resolution: hostile("resolution"),
                noted_at_ms: 0,
            }],
        };
        let frame = Frame {
            csrf: "csrf",
            operator: "ada@example.com",
            now_ms: 0,
            notice: Some(Notice::Error(hostile("notice"))),
        };
        let page = record_page(&frame, &view, Some(hostile("url")), true);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("\"'>"), "{page}");
        let shown = "id crm error pending property written received idempotency detail call field \
                     crm_property app crm-value resolution notice url";
        for what in shown.split_whitespace() {
            let escaped = ["&quot;'&gt;&lt;script&gt;alert('", what, "')&lt;/script&gt;"].concat();
            assert!(page.contains(&escaped), "{what} is shown escaped: {page}");
        }
    }

    #[test]
    fn elapsed_time_reads_in_the_largest_whole_unit() {
        assert_eq!(ago(59_000), "59 s ago");
        assert_eq!(ago(61_000), "1 min ago");
        assert_eq!(ago(3 * 3_600_000), "3 h ago");
        assert_eq!(ago(3 * 86_400_000), "3 d ago");
        assert_eq!(ago(-5), "0 s ago");
    }
}
