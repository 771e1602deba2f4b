//! Adoption's files on local disk: the app's records (JSON Lines of outbound-change v1 messages,
//! or CSV with a header naming the fields), the plan (JSON Lines, one decision a line), and the
//! work files that find app records sharing an email without holding every email in memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::adoption::{InputLine, PlanSink};
use crate::domain::adoption::PlanItem;
use crate::domain::contract::{parse_change, ObjectKind, MAX_MESSAGE_BYTES};

/// How the app's records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// One outbound-change v1 message a line.
    JsonLines,
    /// A header naming the fields (`record_id` required; `changed_at` and `contact_record_id`
    /// optional), one record of `object` a row; an empty cell sets nothing.
    Csv { object: ObjectKind },
}

impl InputFormat {
    /// JSON Lines, unless the file ends in `.csv` (then `object`'s records).
    pub fn of(path: &Path, object: ObjectKind) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("csv") => InputFormat::Csv { object },
            _ => InputFormat::JsonLines,
        }
    }
}

/// The app's records, a line at a time. `changed_at_ms` dates CSV rows without a `changed_at`.
pub fn read_input(
    path: &Path,
    format: InputFormat,
    changed_at_ms: i64,
) -> anyhow::Result<Box<dyn Iterator<Item = InputLine> + Send>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    if !file.metadata()?.is_file() {
        anyhow::bail!("{} is not a file", path.display());
    }
    Ok(match format {
        InputFormat::JsonLines => Box::new(JsonLines {
            reader: BufReader::new(file),
            line: 0,
        }),
        InputFormat::Csv { object } => Box::new(csv_lines(file, object, changed_at_ms)?),
    })
}

/// JSON Lines read with a cap per line: a line longer than a message may be is refused without
/// being held whole, and blank lines are skipped.
struct JsonLines<R> {
    reader: BufReader<R>,
    line: u64,
}

impl<R: Read> Iterator for JsonLines<R> {
    type Item = InputLine;

    fn next(&mut self) -> Option<InputLine> {
        loop {
            let mut bytes = Vec::new();
            let read = (&mut self.reader)
                .take(MAX_MESSAGE_BYTES as u64 + 1)
                .read_until(b'\n', &mut bytes);
            self.line += 1;
            let line = self.line;
            match read {
                Ok(0) => return None,
                Err(error) => {
                    return Some(InputLine::Invalid {
                        line,
                        reason: format!("unreadable: {error}"),
                    })
                }
                Ok(_) => {}
            }
            if !bytes.ends_with(b"\n") && bytes.len() > MAX_MESSAGE_BYTES {
                // Skip the rest of the over-long line a buffer at a time, never holding it.
                skip_line(&mut self.reader);
                return Some(InputLine::Invalid {
                    line,
                    reason: format!("the line is longer than the {MAX_MESSAGE_BYTES} bytes a message may be"),
                });
            }
            let text = String::from_utf8_lossy(&bytes);
            let body = text.trim();
            if body.is_empty() {
                continue;
            }
            return Some(InputLine::Message {
                line,
                body: body.to_string(),
            });
        }
    }
}

/// Reads past the end of the current line without keeping it.
fn skip_line<R: Read>(reader: &mut BufReader<R>) {
    loop {
        let (done, used) = match reader.fill_buf() {
            Ok([]) | Err(_) => return,
            Ok(buffer) => match buffer.iter().position(|b| *b == b'\n') {
                Some(at) => (true, at + 1),
                None => (false, buffer.len()),
            },
        };
        reader.consume(used);
        if done {
            return;
        }
    }
}

/// Passes a CSV file through, failing a record longer than a message may be: the CSV reader
/// would otherwise hold a record of any length (one quoted field can span the whole file).
struct RecordCap<R> {
    inner: R,
    since_row: usize,
    /// Inside a quoted field, where a line break belongs to the field (`""` toggles twice).
    quoted: bool,
}

impl<R: Read> Read for RecordCap<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        for byte in &buffer[..read] {
            if *byte == b'"' {
                self.quoted = !self.quoted;
            }
            self.since_row = if *byte == b'\n' && !self.quoted {
                0
            } else {
                self.since_row + 1
            };
            if self.since_row > MAX_MESSAGE_BYTES {
                return Err(std::io::Error::other(format!(
                    "a CSV row is longer than the {MAX_MESSAGE_BYTES} bytes a message may be"
                )));
            }
        }
        Ok(read)
    }
}

/// CSV rows as outbound-change messages.
fn csv_lines(
    file: File,
    object: ObjectKind,
    changed_at_ms: i64,
) -> anyhow::Result<impl Iterator<Item = InputLine>> {
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(RecordCap {
        inner: file,
        since_row: 0,
        quoted: false,
    });
    let headers: Vec<String> = reader
        .headers()
        .context("reading the CSV header")?
        .iter()
        .map(|name| name.trim().to_string())
        .collect();
    if !headers.iter().any(|name| name == "record_id") {
        anyhow::bail!("the CSV header names no `record_id` column");
    }
    let type_name = match object {
        ObjectKind::Activity => "activity.log".to_string(),
        other => format!("{other}.upsert"),
    };
    Ok(reader.into_records().enumerate().map(move |(index, row)| {
        // The header is line 1.
        let line = index as u64 + 2;
        let row = match row {
            Ok(row) => row,
            // The reader cannot go on after its input failed (a line over the cap).
            Err(error) if matches!(error.kind(), csv::ErrorKind::Io(_)) => {
                return InputLine::Unreadable {
                    line,
                    reason: error.to_string(),
                }
            }
            Err(error) => {
                return InputLine::Invalid {
                    line,
                    reason: format!("not a CSV row: {error}"),
                }
            }
        };
        let mut message = Map::new();
        let mut data = Map::new();
        let mut changed_at = json!(changed_at_ms);
        for (name, cell) in headers.iter().zip(row.iter()) {
            let cell = cell.trim();
            match name.as_str() {
                "record_id" | "contact_record_id" if !cell.is_empty() => {
                    message.insert(name.clone(), json!(cell));
                }
                "record_id" | "contact_record_id" => {}
                "changed_at" if !cell.is_empty() => {
                    changed_at = cell.parse::<i64>().map_or_else(|_| json!(cell), |ms| json!(ms));
                }
                "changed_at" => {}
                _ if !cell.is_empty() => {
                    data.insert(name.clone(), json!(cell));
                }
                _ => {}
            }
        }
        let record_id = message
            .get("record_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        message.insert("version".into(), json!(1));
        message.insert("type".into(), json!(type_name));
        message.insert(
            "idempotency_id".into(),
            json!(format!("adopt-{object}-{record_id}-{changed_at}")),
        );
        message.insert("changed_at".into(), changed_at);
        message.insert("data".into(), Value::Object(data));
        InputLine::Message {
            line,
            body: Value::Object(message).to_string(),
        }
    }))
}

/// How many work files the emails are spread over: each holds about 1/64 of them, and only one
/// is in memory at a time (64 open files stay under every system's default limit).
const BUCKETS: usize = 64;

/// The app records sharing an email with another of the input, by line: line → the other
/// records' ids (at most ten named). The emails go to work files in `work_dir` by a digest, and
/// one file at a time is read back, so memory holds one 64th of the input's emails, plus the
/// records that do share one.
pub fn shared_emails(
    path: &Path,
    format: InputFormat,
    work_dir: &Path,
) -> anyhow::Result<HashMap<u64, Vec<String>>> {
    std::fs::create_dir_all(work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
    let bucket_path = |index: usize| work_dir.join(format!("emails-{index:03}.tsv"));
    let mut writers: Vec<BufWriter<File>> = (0..BUCKETS)
        .map(|index| File::create(bucket_path(index)).map(BufWriter::new))
        .collect::<Result<_, _>>()
        .context("creating the email work files")?;
    // Any valid time will do: only the emails are read.
    for line in read_input(path, format, 1)? {
        let InputLine::Message { line, body } = line else {
            continue;
        };
        let Ok(change) = parse_change(&body) else {
            continue;
        };
        let Some(email) = crate::domain::adoption::match_key(&change) else {
            continue;
        };
        let digest = Sha256::digest(email.as_bytes());
        let key = crate::domain::webhook::hex(&digest[..12]);
        writeln!(
            writers[usize::from(digest[0]) % BUCKETS],
            "{key}\t{line}\t{}",
            change.record_id.replace(['\t', '\n'], " ")
        )?;
    }
    for writer in &mut writers {
        writer.flush()?;
    }
    drop(writers);
    let mut shared: HashMap<u64, Vec<String>> = HashMap::new();
    for index in 0..BUCKETS {
        let path = bucket_path(index);
        let mut rows: Vec<(String, u64, String)> = BufReader::new(File::open(&path)?)
            .lines()
            .map_while(Result::ok)
            .filter_map(|row| {
                let mut parts = row.splitn(3, '\t');
                Some((
                    parts.next()?.to_string(),
                    parts.next()?.parse().ok()?,
                    parts.next()?.to_string(),
                ))
            })
            .collect();
        rows.sort();
        for group in rows.chunk_by(|a, b| a.0 == b.0) {
            // The group's first distinct ids, once (a placeholder email on 100,000 rows stays
            // linear): each record names up to ten others among them.
            let mut ids: Vec<&String> = group.iter().map(|(_, _, id)| id).collect();
            ids.sort();
            ids.dedup();
            if ids.len() < 2 {
                continue;
            }
            ids.truncate(11);
            for (_, line, record_id) in group {
                let others: Vec<String> = ids
                    .iter()
                    .filter(|other| **other != record_id)
                    .take(10)
                    .map(|other| (*other).clone())
                    .collect();
                shared.insert(*line, others);
            }
        }
        std::fs::remove_file(&path).ok();
    }
    Ok(shared)
}

/// Writes a plan as JSON Lines: `plan.jsonl` (one decision a line) and `invalid.jsonl` (input
/// lines refused, with why) in a directory.
pub struct PlanFiles {
    items: BufWriter<File>,
    invalid: BufWriter<File>,
}

impl PlanFiles {
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            items: BufWriter::new(File::create(plan_path(dir))?),
            invalid: BufWriter::new(File::create(dir.join("invalid.jsonl"))?),
        })
    }

    pub fn finish(mut self) -> anyhow::Result<()> {
        self.items.flush()?;
        self.invalid.flush()?;
        Ok(())
    }
}

impl PlanSink for PlanFiles {
    fn item(&mut self, item: &PlanItem) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.items, item)?;
        self.items.write_all(b"\n")?;
        Ok(())
    }

    fn invalid(&mut self, line: u64, reason: &str) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.invalid, &json!({"line": line, "reason": reason}))?;
        self.invalid.write_all(b"\n")?;
        Ok(())
    }
}

/// Where a plan directory keeps its decisions.
pub fn plan_path(dir: &Path) -> PathBuf {
    dir.join("plan.jsonl")
}

/// A plan's decisions, a line at a time.
pub fn read_plan(dir: &Path) -> anyhow::Result<impl Iterator<Item = anyhow::Result<PlanItem>>> {
    let path = plan_path(dir);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(BufReader::new(file).lines().map(|line| {
        let line = line?;
        serde_json::from_str(&line).context("a plan line that is no decision")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("crm-sync-plan-files-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn message(id: &str, email: &str) -> String {
        json!({"version": 1, "type": "contact.upsert", "record_id": id, "idempotency_id": id,
               "changed_at": 1_796_000_000_000_i64, "data": {"email": email}})
        .to_string()
    }

    #[test]
    fn app_records_sharing_an_email_in_any_case_are_found_and_one_record_twice_is_not_a_pair() {
        let dir = work_dir("shared");
        let input = dir.join("app.jsonl");
        let lines = [
            message("a", "one@example.com"),
            message("b", "ONE@example.com"),
            message("c", "two@example.com"),
            message("c", "two@example.com"),
            message("d", "three@example.com"),
        ];
        std::fs::write(&input, lines.join("\n")).unwrap();
        let shared = shared_emails(&input, InputFormat::JsonLines, &dir.join("work")).unwrap();
        assert_eq!(
            shared,
            HashMap::from([(1, vec!["b".to_string()]), (2, vec!["a".to_string()])])
        );
        assert_eq!(
            std::fs::read_dir(dir.join("work")).unwrap().count(),
            0,
            "the work files are gone"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn csv_rows_sharing_an_email_are_found_without_a_changed_at_column() {
        let dir = work_dir("shared-csv");
        let input = dir.join("users.csv");
        std::fs::write(
            &input,
            "record_id,email\nu1,twin@example.com\nu2,Twin@Example.com\nu3,solo@example.com\n",
        )
        .unwrap();
        let format = InputFormat::of(&input, ObjectKind::Contact);
        let shared = shared_emails(&input, format, &dir.join("work")).unwrap();
        assert_eq!(
            shared,
            HashMap::from([(2, vec!["u2".to_string()]), (3, vec!["u1".to_string()])])
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn an_over_long_line_is_refused_without_losing_the_next_and_blank_lines_are_skipped() {
        let dir = work_dir("long");
        let input = dir.join("app.jsonl");
        let at_limit = "x".repeat(MAX_MESSAGE_BYTES);
        let past_it = "x".repeat(MAX_MESSAGE_BYTES + 1);
        let text = format!("{at_limit}\n{past_it}\n\n{}\n", message("a", "a@example.com"));
        std::fs::write(&input, text).unwrap();
        let lines: Vec<InputLine> = read_input(&input, InputFormat::JsonLines, 0).unwrap().collect();
        assert!(
            matches!(&lines[0], InputLine::Message { line: 1, body } if body.len() == MAX_MESSAGE_BYTES),
            "at the limit: read whole"
        );
        assert!(matches!(&lines[1], InputLine::Invalid { line: 2, reason } if reason.contains("longer")));
        assert!(
            matches!(&lines[2], InputLine::Message { line: 4, .. }),
            "{lines:?}"
        );
        assert_eq!(lines.len(), 3);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_directory_is_refused_and_an_over_long_csv_line_stops_the_plan_with_its_line() {
        let dir = work_dir("bad-input");
        assert!(
            read_input(&dir, InputFormat::JsonLines, 1).is_err(),
            "a directory is no input"
        );
        let input = dir.join("users.csv");
        let long = "x".repeat(MAX_MESSAGE_BYTES + 1);
        std::fs::write(&input, format!("record_id,email\nu1,{long}\nu2,b@example.com\n")).unwrap();
        let lines: Vec<InputLine> = read_input(
            &input,
            InputFormat::Csv {
                object: ObjectKind::Contact,
            },
            1,
        )
        .unwrap()
        .collect();
        // The CSV reader cannot go on past a line it refused: the plan stops, naming it, rather
        // than plan the file without its rest.
        assert!(
            matches!(&lines[0], InputLine::Unreadable { reason, .. } if reason.contains("longer")),
            "{:?}",
            lines.first()
        );
        // A quoted field may hold line breaks: the row, not each line, is what is capped.
        let csv = InputFormat::Csv {
            object: ObjectKind::Contact,
        };
        let spread = |bytes: usize| "a\n".repeat(bytes / 2);
        for (field, refused) in [
            (spread(MAX_MESSAGE_BYTES - 100), false),
            (spread(MAX_MESSAGE_BYTES + 100), true),
        ] {
            std::fs::write(
                &input,
                format!(
                    "record_id,email,company\nu1,a@example.com,\"{field}\"\nu2,b@example.com,\"\"\"q\"\"\"\n"
                ),
            )
            .unwrap();
            let lines: Vec<InputLine> = read_input(&input, csv, 1).unwrap().collect();
            let first_refused =
                matches!(&lines[0], InputLine::Unreadable { reason, .. } if reason.contains("longer"));
            assert_eq!(first_refused, refused, "{} bytes over many lines", field.len());
            if !refused {
                assert_eq!(lines.len(), 2, "an escaped quote leaves the next row whole");
                assert!(matches!(&lines[1], InputLine::Message { .. }), "{:?}", lines[1]);
            }
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_csv_row_becomes_an_outbound_change_message_and_empty_cells_set_nothing() {
        let dir = work_dir("csv");
        let input = dir.join("users.csv");
        std::fs::write(
            &input,
            "record_id,email,first_name,changed_at\nu1,ada@example.com,,2026-11-30T10:00:00Z\nu2,bob@example.com,Bob,\n",
        )
        .unwrap();
        let lines: Vec<InputLine> = read_input(&input, InputFormat::of(&input, ObjectKind::Contact), 42)
            .unwrap()
            .collect();
        let InputLine::Message { line, body } = &lines[0] else {
            panic!("{lines:?}")
        };
        assert_eq!(*line, 2, "the header is line 1");
        let change = parse_change(body).unwrap();
        assert_eq!(change.record_id, "u1");
        assert_eq!(
            change.data.len(),
            1,
            "the empty first_name sets nothing: {:?}",
            change.data
        );
        assert_eq!(change.changed_at_ms, 1_796_032_800_000);
        let InputLine::Message { body, .. } = &lines[1] else {
            panic!()
        };
        assert_eq!(
            parse_change(body).unwrap().changed_at_ms,
            42,
            "no changed_at: the plan's time"
        );
        std::fs::write(&input, "email\nada@example.com\n").unwrap();
        assert!(read_input(
            &input,
            InputFormat::Csv {
                object: ObjectKind::Contact
            },
            0
        )
        .is_err());
        std::fs::remove_dir_all(dir).ok();
    }
}
