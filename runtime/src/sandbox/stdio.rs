//! A plugin's stdout and stderr, when not granted the runtime's own: each line goes to the log
//! with the plugin's name, rate-limited, and stderr's last lines are kept for trap reports.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::logline::{LINE_MAX, LineBudget, clean_line};

/// Sends a plugin's output stream to the log, one line per event, rate-limited.
pub(super) struct LogWriter {
    label: Arc<str>,
    stream: &'static str,
    line: Vec<u8>,
    budget: LineBudget,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
}

/// Lines of stderr kept for trap reports.
const TAIL_LINES: usize = 4;

impl LogWriter {
    pub(super) fn new(
        label: Arc<str>,
        stream: &'static str,
        tail: Option<Arc<Mutex<VecDeque<String>>>>,
    ) -> Self {
        LogWriter {
            budget: LineBudget::new(label.clone(), stream),
            label,
            stream,
            line: Vec::new(),
            tail,
        }
    }

    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line).trim_end().to_owned();
        self.line.clear();
        if text.trim().is_empty() || text.starts_with("note: run with `RUST_BACKTRACE") {
            return;
        }
        if let Some(tail) = &self.tail
            && let Ok(mut tail) = tail.lock()
        {
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text.clone());
        }
        if self.budget.admit(Instant::now()) {
            tracing::info!("{} ({}): {}", self.label, self.stream, clean_line(&text));
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                self.emit();
            } else if self.line.len() < LINE_MAX {
                self.line.push(byte);
            }
        }
    }
}

impl Drop for LogWriter {
    /// A last line without its newline still reaches the log when the instance goes.
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

/// A plugin's stdout or stderr as WASI sees it: every write goes straight to its [`LogWriter`],
/// in the calling thread. (wasmtime-wasi's `AsyncStdoutStream` would spawn a task per stream
/// and per instance — a sixth of an instantiation — and log a trapping plugin's last words
/// only after the trap report had been written.)
#[derive(Clone)]
pub(super) struct LogStream(Arc<Mutex<LogWriter>>);

impl LogStream {
    pub(super) fn new(writer: LogWriter) -> Self {
        LogStream(Arc::new(Mutex::new(writer)))
    }

    fn write(&self, bytes: &[u8]) {
        // A writer poisoned by a panic elsewhere still takes lines: it holds no invariant.
        let mut writer = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        writer.write(bytes);
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// How much a plugin may write per `write` call; the log takes any amount at once.
const LOG_WRITE_PERMIT: usize = 64 * 1024;

impl OutputStream for LogStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        LogStream::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(LOG_WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    /// Always ready: writes never wait.
    async fn ready(&mut self) {}
}

impl AsyncWrite for LogStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        LogStream::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_output_reaches_the_stderr_tail_as_it_is_written_and_at_the_end() {
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let stream = LogStream::new(LogWriter::new(
            Arc::from("p/t"),
            "stderr",
            Some(tail.clone()),
        ));
        let lines = |tail: &Arc<Mutex<VecDeque<String>>>| -> Vec<String> {
            tail.lock()
                .map(|t| t.iter().cloned().collect())
                .unwrap_or_default()
        };
        let mut p2 = stream.p2_stream();
        assert_eq!(p2.check_write().ok(), Some(LOG_WRITE_PERMIT));
        assert!(p2.write(bytes::Bytes::from_static(b"one\ntw")).is_ok());
        assert_eq!(lines(&tail), ["one"]);
        assert!(p2.write(bytes::Bytes::from_static(b"o\nthree")).is_ok());
        assert_eq!(lines(&tail), ["one", "two"]);
        drop(p2);
        drop(stream);
        // The unfinished last line is logged when the instance (its last stream) goes.
        assert_eq!(lines(&tail), ["one", "two", "three"]);
    }
}
