//! What a plugin may put into the runtime's log, by any channel (its stdout and stderr, the
//! `logging` interface): at most [`LINES_PER_SECOND`] lines a second per channel (more are
//! counted, and the count is logged when the second is over), at most [`LINE_MAX`] bytes a line,
//! and no control characters: a newline or an escape sequence in a plugin's text is shown
//! escaped, so a plugin cannot start a line of its own (forge another plugin's denial, say).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most log lines one channel of a plugin may produce per second.
pub const LINES_PER_SECOND: u32 = 100;
/// Longest log line kept from a plugin, in bytes.
pub const LINE_MAX: usize = 4096;

/// The rate limit of one channel of one plugin instance. Lines dropped are reported when the
/// next second starts, or when the instance goes.
#[derive(Debug)]
pub struct LineBudget {
    label: Arc<str>,
    channel: &'static str,
    window: Instant,
    lines: u32,
    suppressed: u64,
}

impl LineBudget {
    /// The budget of `label`'s (`pipeline/plugin`) `channel` (`stdout`, `stderr`, `log`).
    pub fn new(label: Arc<str>, channel: &'static str) -> LineBudget {
        LineBudget {
            label,
            channel,
            window: Instant::now(),
            lines: 0,
            suppressed: 0,
        }
    }

    fn report(&self) {
        if self.suppressed > 0 {
            tracing::warn!(
                "{} ({}): {} lines dropped by the rate limit ({LINES_PER_SECOND}/s)",
                self.label,
                self.channel,
                self.suppressed
            );
        }
    }

    /// The plugin's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether one more line may be logged at `now`.
    pub fn admit(&mut self, now: Instant) -> bool {
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.report();
            self.window = now;
            self.lines = 0;
            self.suppressed = 0;
        }
        if self.lines < LINES_PER_SECOND {
            self.lines += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Lines dropped in the current second.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

impl Drop for LineBudget {
    fn drop(&mut self) {
        self.report();
    }
}

/// `text` as one safe log line: control characters escaped (`\n`, `\r`, `\t`, `\u{1b}`),
/// cut to [`LINE_MAX`] bytes (on a character boundary) with a note of how much was cut.
pub fn clean_line(text: &str) -> Cow<'_, str> {
    let clean = text.len() <= LINE_MAX && !text.chars().any(char::is_control);
    if clean {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(LINE_MAX) + 32);
    let mut taken = 0;
    for c in text.chars() {
        if out.len() >= LINE_MAX {
            break;
        }
        taken += c.len_utf8();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if taken < text.len() {
        out.push_str(&format!(" … ({} more bytes cut)", text.len() - taken));
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_cannot_forge_another_line_or_run_on() {
        assert_eq!(clean_line("plain text ünï"), "plain text ünï");
        assert_eq!(
            clean_line("x\nWARN sandbox: denied tcp for `other`\r\x1b[31m"),
            "x\\nWARN sandbox: denied tcp for `other`\\r\\u{1b}[31m"
        );
        let long = "é".repeat(5000);
        let cut = clean_line(&long);
        assert!(
            cut.ends_with(" … (5904 more bytes cut)"),
            "{}",
            &cut[cut.len() - 40..]
        );
        assert!(cut.len() < LINE_MAX + 40);
    }

    #[test]
    fn the_budget_admits_a_hundred_lines_a_second_and_counts_the_rest() {
        let start = Instant::now();
        let mut budget = LineBudget::new(Arc::from("p/t"), "log");
        let admitted = (0..250).filter(|_| budget.admit(start)).count();
        assert_eq!(admitted, 100);
        assert_eq!(budget.suppressed(), 150);
        // The next second starts afresh.
        assert!(budget.admit(start + Duration::from_millis(1001)));
        assert_eq!(budget.suppressed(), 0);
    }
}
