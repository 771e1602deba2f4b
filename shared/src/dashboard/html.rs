//! The dashboard's pages: plain server-rendered HTML, one inline stylesheet, no scripts. Every
//! value that did not come from this file goes through [`esc`] (text and attributes alike) or
//! [`url_part`] (inside a link).

use std::fmt::Write as _;

use crate::domain::clock::rfc3339;
use crate::domain::contract::RecordRef;
use crate::domain::sync::{RecordFilter, RecordState, SyncStatus, Tally};
use crate::ports::{DeadLetterSummary, RedriveOutcome};
use crate::reconcile::RunReport;

use super::{LaneView, RecordView};

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

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
    },
    Dismissed,
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
button.quiet{background:#fff;color:var(--accent)}.actions{display:flex;flex-wrap:wrap;gap:.5rem;margin:.7rem 0}\
input[type=search],input[type=password]{font:inherit;padding:.4rem .6rem;border:1px solid var(--line);border-radius:6px;min-width:0;width:100%;max-width:24rem}\
.search{display:flex;gap:.5rem;margin-bottom:1rem}.notice{padding:.6rem .9rem;border-radius:8px;background:#e8f0fe;border:1px solid #bcd0fb;margin-bottom:1rem}\
.notice.bad{background:#fde7e7;border-color:#f3b7b7}.muted{color:var(--muted)}.login{max-width:22rem;margin:12vh auto;background:#fff;border:1px solid var(--line);border-radius:10px;padding:1.4rem}\
.login label{display:block;margin-bottom:.4rem}.login input{max-width:none;margin-bottom:1rem}\
@media (max-width:640px){main{padding:.6rem}th,td{padding:.4rem}.hide-narrow{display:none}}";

fn document(title: &str, header: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · crm-sync</title><style>{STYLE}</style></head><body>{header}<main>{body}</main></body></html>",
        esc(title)
    )
}

fn signed_in(title: &str, frame: &Frame<'_>, body: &str) -> String {
    let header = format!(
        "<header><a class=\"brand\" href=\"/admin\">crm-sync</a><nav><a href=\"/admin\">Records</a>\
         <a href=\"/admin/queues\">Queues</a><form method=\"post\" action=\"/admin/logout\">{}\
         <button class=\"quiet\" type=\"submit\">Sign out</button></form></nav></header>",
        csrf_field(frame.csrf)
    );
    let notice = frame.notice.as_ref().map(notice_html).unwrap_or_default();
    document(title, &header, &format!("{notice}{body}"))
}

fn csrf_field(token: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(token))
}

fn notice_html(notice: &Notice) -> String {
    let (bad, text) = match notice {
        Notice::Resync {
            queued,
            skipped,
            reason,
        } => {
            let mut text = format!("Queued {queued} record{} for re-sync.", plural(*queued));
            if *skipped > 0 {
                let _ = write!(text, " {skipped} not queued");
                match reason {
                    Some(reason) => {
                        let _ = write!(text, ": {reason}.");
                    }
                    None => text.push('.'),
                }
            }
            (*skipped > 0 && *queued == 0, text)
        }
        Notice::Dismissed => (false, "Conflicts dismissed.".to_string()),
        Notice::Redrive { lane, outcome } => {
            let mut text = format!(
                "Moved {} message{} from the {lane} dead-letter queue back to its queue.",
                outcome.moved,
                plural(outcome.moved)
            );
            if outcome.failed > 0 {
                let _ = write!(text, " {} could not be moved and stay.", outcome.failed);
            }
            if outcome.more {
                text.push_str(" More are waiting: redrive again.");
            }
            (outcome.failed > 0, text)
        }
        Notice::Error(text) => (true, text.clone()),
    };
    format!(
        "<div class=\"notice{}\" role=\"status\">{}</div>",
        if bad { " bad" } else { "" },
        esc(&text)
    )
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// A moment, exactly and relative to now.
fn when(at_ms: Option<i64>, now_ms: i64) -> String {
    let Some(at_ms) = at_ms else {
        return "<span class=\"muted\">never</span>".into();
    };
    let exact = rfc3339(at_ms);
    format!(
        "<time datetime=\"{exact}\" title=\"{exact}\">{}</time>",
        esc(&ago(now_ms - at_ms))
    )
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

fn status_badge(status: SyncStatus) -> String {
    format!("<span class=\"badge s-{0}\">{0}</span>", status.as_str())
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

fn tally(tally: &Tally) -> String {
    if tally.complete {
        tally.count.to_string()
    } else {
        format!("{}+", tally.count)
    }
}

pub fn login_page(error: Option<&str>, next: &str) -> String {
    let error = error
        .map(|error| format!("<div class=\"notice bad\" role=\"alert\">{}</div>", esc(error)))
        .unwrap_or_default();
    let body = format!(
        "<form class=\"login\" method=\"post\" action=\"/admin/login\"><h1>crm-sync dashboard</h1>{error}\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
         <input type=\"hidden\" name=\"next\" value=\"{}\"><button type=\"submit\">Sign in</button></form>",
        esc(next)
    );
    document("Sign in", "", &body)
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
}

/// Long on purpose: the list page's HTML in document order.
pub fn records_page(
    frame: &Frame<'_>,
    view: &RecordsView<'_>,
    crm_url: &dyn Fn(&RecordState) -> Option<String>,
) -> String {
    let mut body = String::new();
    body.push_str("<h1>Records</h1><nav class=\"tabs\" aria-label=\"Status\">");
    for (filter, count) in view.counts {
        let on = view.filter == Some(*filter);
        let _ = write!(
            body,
            "<a class=\"tab{}\" href=\"/admin?filter={}\"{}><span class=\"badge s-{}\">{}</span><span class=\"count\" data-filter=\"{}\">{}</span></a>",
            if on { " on" } else { "" },
            filter.as_str(),
            if on { " aria-current=\"page\"" } else { "" },
            filter.as_str(),
            filter_label(*filter),
            filter.as_str(),
            tally(count)
        );
    }
    body.push_str("</nav>");
    let _ = write!(
        body,
        "<form class=\"search\" method=\"get\" action=\"/admin\" role=\"search\">\
         <input type=\"search\" name=\"q\" value=\"{}\" placeholder=\"App id, email or CRM id\" aria-label=\"Search\">\
         <button type=\"submit\">Search</button></form>",
        esc(view.query)
    );
    match view.filter {
        Some(filter) => {
            let _ = write!(body, "<h2>{}</h2>", filter_label(filter));
        }
        None => {
            let _ = write!(body, "<h2>Results for “{}”</h2>", esc(view.query));
        }
    }
    if view.records.is_empty() {
        body.push_str("<p class=\"muted\">No records.</p>");
        return signed_in("Records", frame, &body);
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/admin/resync\">{}<input type=\"hidden\" name=\"back\" value=\"{}\">",
        csrf_field(frame.csrf),
        esc(view.here)
    );
    body.push_str(
        "<div class=\"scroll\"><table><thead><tr><th><span class=\"hide-narrow\">Select</span></th><th>Record</th>\
         <th>Status</th><th>CRM id</th><th>Last synced</th><th class=\"hide-narrow\">Attempts</th><th>Last error</th></tr></thead><tbody>",
    );
    for state in view.records {
        let key = record_key(&state.record);
        let crm = crm_cell(state, crm_url(state));
        let conflict = if state.open_conflicts {
            " <span class=\"badge s-conflict\">conflict</span>"
        } else {
            ""
        };
        let _ = write!(
            body,
            "<tr><td><input type=\"checkbox\" name=\"record\" value=\"{}\" aria-label=\"Select {}\"></td>\
             <td><a href=\"{}\">{}</a></td><td>{}{conflict}</td><td>{crm}</td><td>{}</td><td class=\"hide-narrow\">{}</td>\
             <td class=\"err\">{}</td></tr>",
            esc(&key),
            esc(&key),
            esc(&record_href(&state.record)),
            esc(&key),
            status_badge(state.status),
            when(state.last_synced_at_ms, frame.now_ms),
            state.attempts,
            esc(&short(state.last_error.as_deref().unwrap_or(""), 160))
        );
    }
    body.push_str("</tbody></table></div>");
    for state in view.records {
        let _ = write!(
            body,
            "<input type=\"hidden\" name=\"page_record\" value=\"{}\">",
            esc(&record_key(&state.record))
        );
    }
    let _ = write!(
        body,
        "<div class=\"actions\"><button type=\"submit\" name=\"scope\" value=\"selected\">Re-sync selected</button>\
         <button class=\"quiet\" type=\"submit\" name=\"scope\" value=\"page\">Re-sync all {} on this page</button></div></form>",
        view.records.len()
    );
    if let (Some(cursor), Some(filter)) = (view.next_cursor, view.filter) {
        let _ = write!(
            body,
            "<p><a rel=\"next\" href=\"/admin?filter={}&amp;cursor={}\">Next page →</a></p>",
            filter.as_str(),
            esc(&url_part(cursor))
        );
    }
    signed_in("Records", frame, &body)
}

fn crm_cell(state: &RecordState, url: Option<String>) -> String {
    match (&state.crm_id, url) {
        (Some(id), Some(url)) => format!(
            "<a href=\"{}\" rel=\"noreferrer\" target=\"_blank\">{}</a>",
            esc(&url),
            esc(id)
        ),
        (Some(id), None) => esc(id),
        (None, _) => "<span class=\"muted\">none yet</span>".into(),
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

/// Long on purpose: the record page's HTML in document order (a template crate would move it
/// to a template).
pub fn record_page(frame: &Frame<'_>, view: &RecordView, crm_url: Option<String>) -> String {
    let state = &view.state;
    let key = record_key(&state.record);
    let here = record_href(&state.record);
    let mut body = format!("<h1>{} {}</h1>", esc(&key), status_badge(state.status));
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/admin/resync\" class=\"actions\">{}\
         <input type=\"hidden\" name=\"record\" value=\"{}\"><input type=\"hidden\" name=\"back\" value=\"{}\">\
         <button type=\"submit\" name=\"scope\" value=\"selected\">Re-sync</button></form>",
        csrf_field(frame.csrf),
        esc(&key),
        esc(&here)
    );
    let _ = write!(
        body,
        "<dl><dt>Status</dt><dd>{}</dd><dt>CRM id</dt><dd>{}</dd><dt>Last synced</dt><dd>{}</dd>\
         <dt>Last attempt</dt><dd>{}</dd><dt>Attempts</dt><dd>{}</dd><dt>Last error</dt><dd class=\"err\" id=\"last-error\">{}</dd>\
         <dt>Applied change</dt><dd>{}</dd><dt>Waiting change</dt><dd>{}</dd><dt>Conflicts</dt><dd>{}{}</dd></dl>",
        status_badge(state.status),
        crm_cell(state, crm_url),
        when(state.last_synced_at_ms, frame.now_ms),
        when(state.last_attempt_at_ms, frame.now_ms),
        state.attempts,
        state
            .last_error
            .as_deref()
            .map(esc)
            .unwrap_or_else(|| "<span class=\"muted\">none</span>".into()),
        match (&state.applied_idempotency_id, state.applied_version_ms) {
            (Some(id), Some(version)) => format!("{} (version {})", esc(id), rfc3339(version)),
            _ => "<span class=\"muted\">none</span>".into(),
        },
        state
            .pending_change
            .as_deref()
            .map(|body| format!("<pre>{}</pre>", esc(&pretty(body))))
            .unwrap_or_else(|| "<span class=\"muted\">none</span>".into()),
        state.conflicts,
        if state.open_conflicts { " (open)" } else { "" }
    );

    body.push_str("<h2>Conflicts</h2>");
    if view.conflicts.is_empty() {
        body.push_str(
            "<p class=\"muted\">None: no app-owned field of this record was changed in the CRM.</p>",
        );
    } else {
        if state.open_conflicts {
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/admin/conflicts/dismiss\" class=\"actions\">{}\
                 <input type=\"hidden\" name=\"record\" value=\"{}\">\
                 <button class=\"quiet\" type=\"submit\">Dismiss conflicts</button></form>",
                csrf_field(frame.csrf),
                esc(&key)
            );
        }
        body.push_str(
            "<div class=\"scroll\"><table><thead><tr><th>When</th><th>Field</th><th>App value</th><th>CRM value</th>\
             <th>Outcome</th></tr></thead><tbody>",
        );
        for conflict in &view.conflicts {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{} <span class=\"muted\">({})</span></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                when(Some(conflict.at_ms), frame.now_ms),
                esc(&conflict.field),
                esc(&conflict.crm_property),
                conflict
                    .app_value
                    .as_deref()
                    .map(esc)
                    .unwrap_or_else(|| "<span class=\"muted\">unknown</span>".into()),
                esc(&conflict.crm_value),
                esc(&conflict.resolution)
            );
        }
        body.push_str("</tbody></table></div>");
    }

    body.push_str("<h2>Timeline</h2>");
    if view.timeline.is_empty() {
        body.push_str("<p class=\"muted\">Nothing yet.</p>");
    } else {
        body.push_str(
            "<div class=\"scroll\"><table id=\"timeline\"><thead><tr><th>When</th><th>What</th><th>Detail</th>\
             <th class=\"hide-narrow\">CRM call</th></tr></thead><tbody>",
        );
        for entry in &view.timeline {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}{}</td><td class=\"hide-narrow\">{}</td></tr>",
                when(Some(entry.at_ms), frame.now_ms),
                esc(entry.kind.as_str()),
                esc(&entry.detail),
                entry
                    .idempotency_id
                    .as_deref()
                    .map(|id| format!(" <span class=\"muted\">({})</span>", esc(id)))
                    .unwrap_or_default(),
                esc(entry.call.as_deref().unwrap_or(""))
            );
        }
        body.push_str("</tbody></table></div>");
    }

    for (title, values) in [
        ("Written to the CRM", &state.written),
        ("Received from the CRM", &state.received),
    ] {
        if values.is_empty() {
            continue;
        }
        let _ = write!(
            body,
            "<h2>{title}</h2><div class=\"scroll\"><table><thead><tr><th>CRM property</th><th>Value</th></tr></thead><tbody>"
        );
        for (name, value) in values {
            let _ = write!(body, "<tr><td>{}</td><td>{}</td></tr>", esc(name), esc(value));
        }
        body.push_str("</tbody></table></div>");
    }
    signed_in(&key, frame, &body)
}

pub fn queues_page(
    frame: &Frame<'_>,
    lanes: &[LaneView],
    report: Result<Option<&RunReport>, &str>,
) -> String {
    let mut body = String::from(
        "<h1>Queues</h1><p class=\"muted\">Dead letters are changes and events that failed for good or kept \
         failing. Fix the cause, then redrive: the messages go back to their queue, and running it twice is safe.</p>\
         <div class=\"scroll\"><table><thead><tr><th>Dead-letter queue</th><th>Waiting</th><th class=\"hide-narrow\">In flight</th>\
         <th>Oldest</th><th></th></tr></thead><tbody>",
    );
    for lane in lanes {
        let (waiting, in_flight, oldest) = match &lane.summary {
            Ok(summary) => lane_cells(summary, frame.now_ms),
            Err(error) => (
                "?".into(),
                "?".into(),
                format!(
                    "<span class=\"err\">could not read the queue: {}</span>",
                    esc(error)
                ),
            ),
        };
        let _ = write!(
            body,
            "<tr data-lane=\"{0}\"><td><strong>{0}</strong><br><span class=\"muted\">{1}</span></td><td class=\"depth\">{waiting}</td>\
             <td class=\"hide-narrow\">{in_flight}</td><td>{oldest}</td><td><form method=\"post\" action=\"/admin/queues/redrive\">{2}\
             <input type=\"hidden\" name=\"lane\" value=\"{0}\"><button type=\"submit\">Redrive</button></form></td></tr>",
            esc(lane.name),
            esc(lane.description),
            csrf_field(frame.csrf)
        );
    }
    body.push_str("</tbody></table></div><h2>Latest reconciliation</h2>");
    match report {
        Err(error) => {
            let _ = write!(
                body,
                "<p class=\"err\">Could not read the reports: {}</p>",
                esc(error)
            );
        }
        Ok(None) => body.push_str("<p class=\"muted\">No reconciliation has run yet.</p>"),
        Ok(Some(report)) => {
            let _ = write!(
                body,
                "<dl id=\"reconcile-report\"><dt>Run</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd><dt>Finished</dt><dd>{}</dd>\
                 <dt>Records checked</dt><dd>{}</dd><dt>Re-enqueued</dt><dd>{}</dd><dt>Drift healed</dt><dd>{}</dd>\
                 <dt>Drift flagged</dt><dd>{}</dd><dt>CRM-owned drift</dt><dd>{}</dd><dt>Errors</dt><dd>{}</dd>\
                 <dt>CRM calls</dt><dd>{}</dd><dt>Segments</dt><dd>{} of {} (tonight's: {})</dd><dt>Stopped early</dt><dd>{}</dd></dl>",
                esc(&report.run_id),
                when(Some(report.started_at_ms), frame.now_ms),
                when(report.finished_at_ms, frame.now_ms),
                report.checked,
                report.requeued,
                report.healed,
                report.flagged,
                report.crm_drift,
                report.errors,
                report.api_calls,
                report.segments_checked,
                report.segments,
                report.segment,
                report.stopped.as_deref().map(esc).unwrap_or_else(|| "no".into())
            );
        }
    }
    signed_in("Queues", frame, &body)
}

fn lane_cells(summary: &DeadLetterSummary, now_ms: i64) -> (String, String, String) {
    let oldest = match &summary.oldest {
        None => "<span class=\"muted\">empty</span>".to_string(),
        Some(letter) => format!(
            "{}<div class=\"err reason\">{}</div><details><summary>Message</summary><pre>{}</pre></details>",
            when(Some(letter.sent_at_ms), now_ms),
            esc(letter.reason.as_deref().unwrap_or(
                "no reason recorded: the queue moved it here after repeated deliveries failed (a crash or a timeout)"
            )),
            esc(&short(&letter.body, 2000))
        ),
    };
    (summary.waiting.to_string(), summary.in_flight.to_string(), oldest)
}

pub fn message_page(title: &str, message: &str) -> String {
    document(
        title,
        "<header><a class=\"brand\" href=\"/admin\">crm-sync</a></header>",
        &format!("<h1>{}</h1><p>{}</p>", esc(title), esc(message)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::contract::ObjectKind;

    #[test]
    fn escaping_neutralises_markup_in_text_and_attributes() {
        assert_eq!(
            esc("<script>alert(\"x\")</script> & 'y'"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
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
            now_ms: 0,
            notice: None,
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
            },
            &|_| None,
        );
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains("t\"oken"));
        assert!(page.contains("id=%3Cimg+src%3Dx+onerror%3Dalert%281%29%3E"));
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
