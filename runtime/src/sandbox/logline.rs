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

/// WASI's errno names, from 1 (`2BIG`) to 76 (`NOTCAPABLE`), as wasi-libc numbers them.
const WASI_ERRNO: [&str; 76] = [
    "2BIG",
    "ACCES",
    "ADDRINUSE",
    "ADDRNOTAVAIL",
    "AFNOSUPPORT",
    "AGAIN",
    "ALREADY",
    "BADF",
    "BADMSG",
    "BUSY",
    "CANCELED",
    "CHILD",
    "CONNABORTED",
    "CONNREFUSED",
    "CONNRESET",
    "DEADLK",
    "DESTADDRREQ",
    "DOM",
    "DQUOT",
    "EXIST",
    "FAULT",
    "FBIG",
    "HOSTUNREACH",
    "IDRM",
    "ILSEQ",
    "INPROGRESS",
    "INTR",
    "INVAL",
    "IO",
    "ISCONN",
    "ISDIR",
    "LOOP",
    "MFILE",
    "MLINK",
    "MSGSIZE",
    "MULTIHOP",
    "NAMETOOLONG",
    "NETDOWN",
    "NETRESET",
    "NETUNREACH",
    "NFILE",
    "NOBUFS",
    "NODEV",
    "NOENT",
    "NOEXEC",
    "NOLCK",
    "NOLINK",
    "NOMEM",
    "NOMSG",
    "NOPROTOOPT",
    "NOSPC",
    "NOSYS",
    "NOTCONN",
    "NOTDIR",
    "NOTEMPTY",
    "NOTRECOVERABLE",
    "NOTSOCK",
    "NOTSUP",
    "NOTTY",
    "NXIO",
    "OVERFLOW",
    "OWNERDEAD",
    "PERM",
    "PIPE",
    "PROTO",
    "PROTONOSUPPORT",
    "PROTOTYPE",
    "RANGE",
    "ROFS",
    "SPIPE",
    "SRCH",
    "STALE",
    "TIMEDOUT",
    "TXTBSY",
    "XDEV",
    "NOTCAPABLE",
];

/// Text a plugin made, with each `(os error N)` that Rust's std wrote on wasm32 given its WASI
/// name: `Permission denied (os error 2)` becomes `Permission denied (WASI errno ACCES)`.
/// The number is WASI's, not Linux's (2 is ACCES there, ENOENT here), so left alone it reads
/// as the wrong error. Only for text that came from a plugin: the host's own errors carry
/// Linux numbers.
pub fn wasi_errors(text: &str) -> Cow<'_, str> {
    const OPEN: &str = "(os error ";
    if !text.contains(OPEN) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        let after = &rest[at + OPEN.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let name = after[..digits]
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| WASI_ERRNO.get(i));
        match (name, after[digits..].starts_with(')')) {
            (Some(name), true) => {
                out.push_str(&rest[..at]);
                out.push_str("(WASI errno ");
                out.push_str(name);
                out.push(')');
                rest = &after[digits + 1..];
            }
            _ => {
                out.push_str(&rest[..at + OPEN.len()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// `text` as one safe log line: control characters escaped (`\n`, `\r`, `\t`, `\u{1b}`),
/// cut to [`LINE_MAX`] bytes (on a character boundary) with a note of how much was cut.
/// WASI errno numbers are named ([`wasi_errors`]): every such line comes from a plugin.
pub fn clean_line(text: &str) -> Cow<'_, str> {
    match wasi_errors(text) {
        Cow::Borrowed(text) => escape(text),
        Cow::Owned(text) => Cow::Owned(escape(&text).into_owned()),
    }
}

fn escape(text: &str) -> Cow<'_, str> {
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
    fn wasi_errno_numbers_are_named() {
        assert_eq!(
            wasi_errors("cannot open /out/x: Permission denied (os error 2)"),
            "cannot open /out/x: Permission denied (WASI errno ACCES)"
        );
        assert_eq!(
            wasi_errors("a (os error 44) b (os error 76) c (os error 99) (os error x"),
            "a (WASI errno NOENT) b (WASI errno NOTCAPABLE) c (os error 99) (os error x"
        );
        assert!(matches!(wasi_errors("no number here"), Cow::Borrowed(_)));
    }

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
