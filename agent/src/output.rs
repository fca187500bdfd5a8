//! Where event and log lines go: one JSON schema for both, written by a thread of its own.
//!
//! A check thread that emits an event, or any task that logs, only puts the line on a bounded
//! queue ([`QUEUE_LINES`]) and goes on: a slow reader of stderr (a journal under load, a pipe
//! nobody reads) never delays a check. When the queue is full the line is dropped and counted
//! (`resmon_events_dropped_total`); the in-memory recent-events log keeps every event anyway.
//!
//! Every line is one JSON object with `ts` and `event`; a log line is `"event":"log"` with
//! `level`, `target` and `message` (and its fields). Under systemd, when `JOURNAL_STREAM` names
//! this process's stderr, lines go to journald's native socket instead, with the JSON text as
//! `MESSAGE`, a syslog `PRIORITY`, and each field as a `RESMON_*` journal field
//! (`journalctl RESMON_EVENT=state_changed RESMON_GROUP=vs1`).

use prometheus_client::metrics::counter::Counter;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::Duration;

/// How many lines may wait for the writer: a burst of state changes at start (10,000
/// resources coming online) fits, a stalled reader costs at most this many lines of memory.
pub const QUEUE_LINES: usize = 8192;

/// journald's native socket.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// A syslog priority (journald's `PRIORITY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// 3: a log line at `error`.
    Error = 3,
    /// 4: a log line at `warn`.
    Warning = 4,
    /// 6: an event, or a log line at `info`.
    Info = 6,
    /// 7: a log line at `debug` or `trace`.
    Debug = 7,
}

enum Message {
    Line {
        priority: Priority,
        json: Box<str>,
    },
    /// Answered once every line before it is written.
    Flush(SyncSender<()>),
}

/// Where the writer thread writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Standard error, one line per event.
    Stderr,
    /// journald's native protocol on this datagram socket.
    Journal(PathBuf),
}

impl Target {
    /// The journal when `JOURNAL_STREAM` says stderr is connected to it (systemd.exec(5)),
    /// else stderr.
    pub fn detect() -> Target {
        let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
            return Target::Stderr;
        };
        let ours = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&std::io::stderr()))
            .map(|st| format!("{}:{}", st.st_dev, st.st_ino))
            .ok();
        if ours.as_deref() == Some(stream.as_str()) && Path::new(JOURNAL_SOCKET).exists() {
            Target::Journal(JOURNAL_SOCKET.into())
        } else {
            Target::Stderr
        }
    }
}

/// The sending end of the output queue. Cheap to clone.
#[derive(Clone)]
pub struct Output {
    tx: SyncSender<Message>,
    dropped: Counter,
}

impl Output {
    /// Starts the writer thread on `target`; lines dropped on a full queue count in `dropped`.
    pub fn start(target: Target, dropped: Counter) -> std::io::Result<Output> {
        let (tx, rx) = sync_channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("resmon-output".into())
            .spawn(move || write_all(rx, target))?;
        Ok(Output { tx, dropped })
    }

    /// Queues a line; drops and counts it when the queue is full. Never blocks.
    pub fn send(&self, priority: Priority, json: Box<str>) {
        match self.tx.try_send(Message::Line { priority, json }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.inc();
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Waits up to `limit` for the lines queued so far to be written (at exit).
    pub fn flush(&self, limit: Duration) {
        let (done, wait) = sync_channel(1);
        let deadline = std::time::Instant::now() + limit;
        // The flush itself waits for room: it is the last word, not a line to drop.
        let mut message = Message::Flush(done);
        loop {
            match self.tx.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    message = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = wait.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
    }
}

/// `tracing`'s logs in the events' schema, through the same queue: `{"ts", "event":"log",
/// "level", "target", "message", ...fields}`.
pub struct LogLayer {
    /// Where the lines go.
    pub output: Output,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        let (priority, level) = match *meta.level() {
            tracing::Level::ERROR => (Priority::Error, "error"),
            tracing::Level::WARN => (Priority::Warning, "warn"),
            tracing::Level::INFO => (Priority::Info, "info"),
            tracing::Level::DEBUG => (Priority::Debug, "debug"),
            tracing::Level::TRACE => (Priority::Debug, "trace"),
        };
        let mut line = serde_json::Map::new();
        line.insert("ts".into(), crate::events::rfc3339_now().into());
        line.insert("event".into(), "log".into());
        line.insert("level".into(), level.into());
        line.insert("target".into(), meta.target().into());
        event.record(&mut FieldVisitor(&mut line));
        self.output.send(
            priority,
            serde_json::Value::Object(line).to_string().into_boxed_str(),
        );
    }
}

/// Copies a log event's fields into its JSON line.
struct FieldVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for FieldVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

/// Sends `tracing`'s logs (filtered by `RESMON_LOG`, default `info`) through `output`, once per
/// process.
pub fn install_logs(output: Output) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RESMON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(LogLayer { output })
        .try_init();
}

/// The writer thread: until every sender is gone.
fn write_all(rx: Receiver<Message>, target: Target) {
    let journal = match &target {
        Target::Journal(path) => UnixDatagram::unbound()
            .and_then(|s| s.connect(path).map(|()| s))
            .ok(),
        Target::Stderr => None,
    };
    let stderr = std::io::stderr();
    for message in rx {
        match message {
            Message::Line { priority, json } => {
                let sent = journal
                    .as_ref()
                    .is_some_and(|j| j.send(&journal_entry(priority, &json)).is_ok());
                if !sent {
                    let mut line = String::with_capacity(json.len() + 1);
                    line.push_str(&json);
                    line.push('\n');
                    let _ = stderr.lock().write_all(line.as_bytes());
                }
            }
            Message::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// One journal entry in the native protocol: `MESSAGE` (the JSON line), `PRIORITY`,
/// `SYSLOG_IDENTIFIER`, and each top-level JSON field as `RESMON_<KEY>`. A value holding a
/// newline uses the protocol's length-prefixed form.
pub fn journal_entry(priority: Priority, json: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() * 2 + 64);
    let mut field = |key: &str, value: &str| {
        out.extend_from_slice(key.as_bytes());
        if value.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
            out.extend_from_slice(value.as_bytes());
        } else {
            out.push(b'=');
            out.extend_from_slice(value.as_bytes());
        }
        out.push(b'\n');
    };
    field("MESSAGE", json);
    field("PRIORITY", &(priority as u8).to_string());
    field("SYSLOG_IDENTIFIER", "resmon");
    if let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(json) {
        for (key, value) in fields {
            // Journal field names: upper-case letters, digits and underscores.
            let name: String = key
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            let text = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            field(&format!("RESMON_{name}"), &text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_and_never_blocks() {
        // A queue of two that no writer drains, as when stderr blocks: the third line on is
        // dropped and counted, and every send returns at once.
        let dropped = Counter::default();
        let (tx, rx) = sync_channel(2);
        let output = Output {
            tx,
            dropped: dropped.clone(),
        };
        for _ in 0..5 {
            output.send(Priority::Info, r#"{"event":"x"}"#.into());
        }
        assert_eq!(dropped.get(), 3);
        drop(rx);
    }

    #[test]
    fn journal_entries_carry_the_fields_and_survive_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.socket");
        let journal = UnixDatagram::bind(&path).unwrap();
        let output = Output::start(Target::Journal(path), Counter::default()).unwrap();
        output.send(
            Priority::Warning,
            r#"{"ts":"t","event":"log","level":"warn","message":"two\nlines","n":3}"#.into(),
        );
        output.flush(Duration::from_secs(5));
        let mut buf = vec![0; 4096];
        journal
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = journal.recv(&mut buf).unwrap();
        let entry = &buf[..n];
        let text = String::from_utf8_lossy(entry);
        assert!(text.contains("PRIORITY=4\n"), "{text}");
        assert!(text.contains("SYSLOG_IDENTIFIER=resmon\n"), "{text}");
        assert!(text.contains("RESMON_EVENT=log\n"), "{text}");
        assert!(text.contains("RESMON_N=3\n"), "{text}");
        // The message with a newline is length-prefixed: name, newline, 8-byte length.
        let key = b"RESMON_MESSAGE\n";
        let at = entry
            .windows(key.len())
            .position(|w| w == key)
            .expect("length-prefixed field");
        let len_at = at + key.len();
        let len = u64::from_le_bytes(entry[len_at..len_at + 8].try_into().unwrap());
        assert_eq!(len, "two\nlines".len() as u64);
        assert_eq!(&entry[len_at + 8..len_at + 8 + 9], b"two\nlines");
    }
}
