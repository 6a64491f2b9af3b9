//! Log through the host. Lines carry the plugin's name; the host may rate-limit them.
//!
//! Each level is a function taking `&str` and a `format!`-style macro of the same name:
//!
//! ```no_run
//! use patchbay_sdk::log;
//!
//! log::info("connected");
//! let (n, topic) = (3, "orders");
//! log::warn!("{n} messages on `{topic}` had no key");
//! ```

//!
//! Built for another target than wasm32 (a plugin's own unit tests, a native benchmark), there
//! is no host: lines go to stderr.

use crate::bindings::logging::Level;

#[cfg(target_arch = "wasm32")]
use crate::bindings::logging::log;

/// A line to stderr, without a host.
#[cfg(not(target_arch = "wasm32"))]
fn log(level: Level, message: &str) {
    eprintln!("{level:?}: {message}");
}

/// Log a line at trace level.
pub fn trace(message: &str) {
    log(Level::Trace, message)
}

/// Log a line at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, message)
}

/// Log a line at info level.
pub fn info(message: &str) {
    log(Level::Info, message)
}

/// Log a warning.
pub fn warn(message: &str) {
    log(Level::Warn, message)
}

/// Log an error line. This only reports: to fail a record or a call, return an
/// [`Error`](crate::Error).
pub fn error(message: &str) {
    log(Level::Error, message)
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_trace {
    ($($arg:tt)*) => { $crate::log::trace(&::std::format!($($arg)*)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __log_debug {
    ($($arg:tt)*) => { $crate::log::debug(&::std::format!($($arg)*)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __log_info {
    ($($arg:tt)*) => { $crate::log::info(&::std::format!($($arg)*)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __log_warn {
    ($($arg:tt)*) => { $crate::log::warn(&::std::format!($($arg)*)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __log_error {
    ($($arg:tt)*) => { $crate::log::error(&::std::format!($($arg)*)) };
}

/// `log::debug!("...", args)`: [`debug()`] with `format!` arguments.
#[doc(inline)]
pub use crate::__log_debug as debug;
/// `log::error!("...", args)`: [`error()`] with `format!` arguments.
#[doc(inline)]
pub use crate::__log_error as error;
/// `log::info!("...", args)`: [`info()`] with `format!` arguments.
#[doc(inline)]
pub use crate::__log_info as info;
/// `log::trace!("...", args)`: [`trace()`] with `format!` arguments.
#[doc(inline)]
pub use crate::__log_trace as trace;
/// `log::warn!("...", args)`: [`warn()`] with `format!` arguments.
#[doc(inline)]
pub use crate::__log_warn as warn;
