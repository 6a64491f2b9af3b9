//! Write Patchbay plugins in Rust.
//!
//! A complete transform that upper-cases UTF-8 payloads, with one optional config key:
//!
//! ```no_run
//! use patchbay_sdk::{Config, Error, Key, Message, Metadata, Outcome, Transform};
//!
//! /// The config keys, declared once: `metadata` lists them, `init` reads them.
//! const KEYS: &[Key] = &[Key::text("prefix", "Text put before every payload.").default("")];
//!
//! struct Upper {
//!     prefix: String,
//! }
//!
//! impl Transform for Upper {
//!     fn metadata() -> Metadata {
//!         Metadata::new("upper", env!("CARGO_PKG_VERSION"), "Upper-cases UTF-8 payloads.")
//!             .keys(KEYS)
//!     }
//!
//!     fn init(config: Config) -> Result<Self, Error> {
//!         let c = config.checked(KEYS)?; // types, ranges, required keys; defaults applied
//!         Ok(Upper { prefix: c.text("prefix")?.to_owned() })
//!     }
//!
//!     fn process(&mut self, message: &Message) -> Outcome {
//!         let text = match message.payload_str() {
//!             Ok(text) => text,
//!             Err(e) => return Outcome::Fail(e), // invalid-data: "payload is not UTF-8 text: …"
//!         };
//!         let upper = format!("{}{}", self.prefix, text.to_uppercase());
//!         if upper == text {
//!             return Outcome::Keep; // unchanged: nothing is copied back to the host
//!         }
//!         // Same key, headers and timestamp; new payload.
//!         Outcome::Replace(vec![message.with_payload(upper)])
//!     }
//! }
//!
//! patchbay_sdk::export_transform!(Upper);
//! # fn main() {}
//! ```
//!
//! In the plugin's `Cargo.toml` set `crate-type = ["cdylib"]`; then
//! `cargo build --release --target wasm32-wasip2` writes the component to
//! `target/wasm32-wasip2/release/<crate_name>.wasm` (rustc emits a component directly for this
//! target; no other tool is needed).
//!
//! # What is here
//!
//! - The three roles as traits: [`Source`], [`Transform`], [`Sink`], and the macros that export
//!   a type implementing one of them as the component: [`export_source!`],
//!   [`export_transform!`], [`export_sink!`]. The SDK keeps the instance `init` builds and
//!   answers every data call made before a successful `init` with the fatal error
//!   `plugin used before init`.
//! - The contract's types ([`Message`], [`Outcome`], [`Error`], [`Metadata`]…), generated from
//!   `wit/` (package `patchbay:connector@0.2.0`), with constructors such as
//!   [`Error::fatal`] and [`Message::new`].
//! - [`Key`]: a plugin's config keys declared once (`const KEYS: &[Key]`), from which come both
//!   the metadata ([`Metadata::keys`]) and the parsing in `init` ([`Config::checked`], then the
//!   typed accessors of [`Settings`], defaults applied). Durations and sizes are written like
//!   the pipeline file's (`"250ms"`, `"64MiB"`); an old `*_ms` key can stay accepted as an alias.
//! - [`Config`]: the raw configuration `init` receives, with error messages that name the key,
//!   the expected format and the value found.
//! - The host's services as plain functions: [`log`], [`metrics`], [`state`].
//! - [`files`]: a file a config key names (a schema, a CA), read through the plugin's grants,
//!   with an error that names the key, the path and the grant to add.
//! - [`json`] (feature `json`, on by default): dotted paths (`a.b.c`) into JSON objects.
//!
//! The rules a plugin follows (one outcome per input, errors vs traps, checkpoints…) are in
//! `wit/README.md`.

/// Raw wit-bindgen output, used by the export macros; prefer the re-exports at the root.
#[doc(hidden)]
pub mod bindings;
#[doc(hidden)]
pub mod bounded;
mod config;
#[doc(hidden)]
pub mod export;
mod export_macros;
pub mod files;
pub mod http;
#[cfg(feature = "json")]
pub mod json;
pub mod log;
pub mod metrics;
pub mod net;
mod roles;
pub mod spec;
pub mod state;
pub mod tls;
mod types;

pub use config::Config;
pub use roles::{REQUEST, Replies, Sink, Source, Transform};
pub use spec::{Key, Settings};
pub use types::{
    Answer, ConfigEntry, ConfigKey, Error, ErrorKind, Header, Message, Metadata, Outcome,
    PollResult, SourceBatch,
};

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

// `WIT_TEXT` and the macro `__patchbay_with_wit!` that hands the WIT text to the export macros
// as a literal, written by build.rs.
include!(concat!(env!("OUT_DIR"), "/wit.rs"));
