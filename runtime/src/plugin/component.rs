//! Loading a component: read the file, check the sha256 pin and the header, compile (through
//! the cache), find the world it implements and pre-link it, ready to instantiate. Nothing of
//! the plugin runs here.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::engine::Runtime;
use super::instance::HostState;
use crate::config::Role;
use crate::contract::{
    sink, sink_packed, source, source_bounded, source_reply, source_shared, transform,
    transform_packed, v0_1,
};

/// The contract versions the host loads, newest first (wit/README.md, rule 22).
pub const CONTRACTS: [&str; 2] = ["0.2.0", "0.1.0"];

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read `{path}`")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The sha256 pin does not match.
    #[error(
        "`{path}`: sha256 mismatch: the config pins {expected} but the file has {actual}; \
         the file changed since it was pinned: check where it came from, then update `sha256`"
    )]
    PinMismatch {
        /// File.
        path: PathBuf,
        /// Pinned hash.
        expected: String,
        /// Actual hash.
        actual: String,
    },
    /// Not a component.
    #[error("`{path}` is not a WebAssembly component: {reason}")]
    NotAComponent {
        /// File.
        path: PathBuf,
        /// What it is instead.
        reason: String,
    },
    /// The component does not implement a Patchbay world.
    #[error("`{path}` does not implement a patchbay:connector world (0.2.0 or 0.1.0): {reason}")]
    NoWorld {
        /// File.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// The component imports something the host does not provide.
    #[error(
        "`{path}` imports {import}, which Patchbay does not provide; a plugin may import \
         patchbay:connector/{{logging,metrics,state}} (0.2.0 or 0.1.0) and WASI 0.2 interfaces"
    )]
    UnknownImport {
        /// File.
        path: PathBuf,
        /// The import wasmtime could not satisfy.
        import: String,
    },
}

/// A loaded, checked component, ready to instantiate.
#[derive(Clone)]
pub struct LoadedPlugin {
    /// File it came from.
    pub path: PathBuf,
    /// Hex sha256 of the file.
    pub sha256: String,
    /// The world it implements.
    pub role: Role,
    /// The contract version it was built against (`0.2.0` or `0.1.0`).
    pub contract: &'static str,
    /// Everything it imports, as `name` strings.
    pub imports: Vec<String>,
    pub(super) pre: RolePre,
}

impl LoadedPlugin {
    /// Whether a source is polled with a byte bound (`poll-within`).
    pub fn bounded(&self) -> bool {
        matches!(
            self.pre,
            RolePre::SourceBounded(_)
                | RolePre::SourceShared(_)
                | RolePre::SourceReply(_)
                | RolePre::SourceBoundedV1(_)
                | RolePre::SourceSharedV1(_)
        )
    }

    /// Whether a source exports `share`, so that several instances may share its work.
    pub fn shared(&self) -> bool {
        matches!(
            self.pre,
            RolePre::SourceShared(_) | RolePre::SourceReply(_) | RolePre::SourceSharedV1(_)
        )
    }

    /// Whether a source answers requests (`reply`, world `source-reply`).
    pub fn replies(&self) -> bool {
        matches!(self.pre, RolePre::SourceReply(_))
    }

    /// Whether it is called through the packed fast path (`process-packed`, `write-packed`).
    pub fn packed(&self) -> bool {
        matches!(
            self.pre,
            RolePre::TransformPacked(_)
                | RolePre::SinkPacked(_)
                | RolePre::TransformPackedV1(_)
                | RolePre::SinkPackedV1(_)
        )
    }
}

#[derive(Clone)]
pub(super) enum RolePre {
    Source(source::SourcePre<HostState>),
    SourceBounded(source_bounded::SourceBoundedPre<HostState>),
    /// A bounded source that also exports `share` (world `source-shared`).
    SourceShared(source_shared::SourceSharedPre<HostState>),
    Transform(transform::TransformPre<HostState>),
    TransformPacked(transform_packed::TransformPackedPre<HostState>),
    Sink(sink::SinkPre<HostState>),
    SinkPacked(sink_packed::SinkPackedPre<HostState>),
    /// A shared source that also answers requests (world `source-reply`, 0.2.0 only).
    SourceReply(source_reply::SourceReplyPre<HostState>),
    // The same worlds of contract 0.1.0.
    SourceV1(v0_1::source::SourcePre<HostState>),
    SourceBoundedV1(v0_1::source_bounded::SourceBoundedPre<HostState>),
    SourceSharedV1(v0_1::source_shared::SourceSharedPre<HostState>),
    TransformV1(v0_1::transform::TransformPre<HostState>),
    TransformPackedV1(v0_1::transform_packed::TransformPackedPre<HostState>),
    SinkV1(v0_1::sink::SinkPre<HostState>),
    SinkPackedV1(v0_1::sink_packed::SinkPackedPre<HostState>),
}

impl Runtime {
    /// Read, verify, compile and check a component.
    pub fn load(&self, path: &Path, pin: Option<&str>) -> Result<LoadedPlugin, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let sha256 = hex(&Sha256::digest(&bytes));
        if let Some(expected) = pin
            && expected != sha256
        {
            return Err(LoadError::PinMismatch {
                path: path.to_owned(),
                expected: expected.to_owned(),
                actual: sha256,
            });
        }
        check_header(path, &bytes)?;
        let component = self.compile(path, &bytes, &sha256)?;
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        // The version of its `plugin` export; 0.2.0 when it exports none (the error below
        // then names what it does export).
        let contract = CONTRACTS
            .into_iter()
            .find(|v| {
                exports
                    .iter()
                    .any(|e| e == &format!("patchbay:connector/plugin@{v}"))
            })
            .unwrap_or(CONTRACTS[0]);
        let exports_api = |api: &str| {
            exports
                .iter()
                .any(|e| e == &format!("patchbay:connector/{api}@{contract}"))
        };
        let role = if exports_api("source-api") {
            Role::Source
        } else if exports_api("transform-api") {
            Role::Transform
        } else if exports_api("sink-api") {
            Role::Sink
        } else {
            let found = if exports.is_empty() {
                "it exports nothing".to_owned()
            } else {
                format!("it exports {}", exports.join(", "))
            };
            return Err(LoadError::NoWorld {
                path: path.to_owned(),
                reason: format!(
                    "{found}; a plugin exports patchbay:connector/plugin@0.2.0 and one of \
                     source-api, transform-api or sink-api (see wit/worlds.wit)"
                ),
            });
        };
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            let text = format!("{e:#}");
            match text.split('`').nth(1) {
                Some(import) if text.contains("matching implementation was not found") => {
                    LoadError::UnknownImport {
                        path: path.to_owned(),
                        import: format!("`{import}`"),
                    }
                }
                _ => LoadError::UnknownImport {
                    path: path.to_owned(),
                    import: text,
                },
            }
        })?;
        let world_error = |e: wasmtime::Error| LoadError::NoWorld {
            path: path.to_owned(),
            reason: format!(
                "it looks like a {role} but its exports do not match world `{role}`: {e:#}"
            ),
        };
        let v1 = contract == "0.1.0";
        macro_rules! pre {
            ($variant:ident, $pre:ty) => {
                RolePre::$variant(<$pre>::new(instance_pre).map_err(world_error)?)
            };
        }
        let shared = exports_api("source-shared-api") && exports_api("source-bounded-api");
        let pre = match role {
            Role::Source if !v1 && shared && exports_api("source-reply-api") => {
                pre!(SourceReply, source_reply::SourceReplyPre<HostState>)
            }
            Role::Source if v1 && shared => {
                pre!(
                    SourceSharedV1,
                    v0_1::source_shared::SourceSharedPre<HostState>
                )
            }
            Role::Source if shared => pre!(SourceShared, source_shared::SourceSharedPre<HostState>),
            Role::Source if v1 && exports_api("source-bounded-api") => {
                pre!(
                    SourceBoundedV1,
                    v0_1::source_bounded::SourceBoundedPre<HostState>
                )
            }
            Role::Source if exports_api("source-bounded-api") => {
                pre!(SourceBounded, source_bounded::SourceBoundedPre<HostState>)
            }
            Role::Source if v1 => pre!(SourceV1, v0_1::source::SourcePre<HostState>),
            Role::Source => pre!(Source, source::SourcePre<HostState>),
            Role::Transform if v1 && exports_api("transform-packed-api") => {
                pre!(
                    TransformPackedV1,
                    v0_1::transform_packed::TransformPackedPre<HostState>
                )
            }
            Role::Transform if exports_api("transform-packed-api") => {
                pre!(
                    TransformPacked,
                    transform_packed::TransformPackedPre<HostState>
                )
            }
            Role::Transform if v1 => pre!(TransformV1, v0_1::transform::TransformPre<HostState>),
            Role::Transform => pre!(Transform, transform::TransformPre<HostState>),
            Role::Sink if v1 && exports_api("sink-packed-api") => {
                pre!(SinkPackedV1, v0_1::sink_packed::SinkPackedPre<HostState>)
            }
            Role::Sink if exports_api("sink-packed-api") => {
                pre!(SinkPacked, sink_packed::SinkPackedPre<HostState>)
            }
            Role::Sink if v1 => pre!(SinkV1, v0_1::sink::SinkPre<HostState>),
            Role::Sink => pre!(Sink, sink::SinkPre<HostState>),
        };
        Ok(LoadedPlugin {
            path: path.to_owned(),
            sha256,
            role,
            contract,
            imports,
            pre,
        })
    }
}

fn check_header(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    let fail = |reason: &str| {
        Err(LoadError::NotAComponent {
            path: path.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if bytes.len() < 8 {
        return fail("the file is too short to be WebAssembly (truncated?)");
    }
    if &bytes[0..4] != b"\0asm" {
        return fail(
            "the file does not start with the WebAssembly magic number; is it the right file?",
        );
    }
    match bytes[4..8] {
        [0x01, 0x00, 0x00, 0x00] => fail(
            "it is a core WebAssembly module; build the plugin for the wasm32-wasip2 target (which \
             emits a component) or wrap it with `wasm-tools component new`",
        ),
        [_, _, 0x01, 0x00] => Ok(()),
        _ => fail("unknown WebAssembly version or layer"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of a file, as lowercase hex.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    Ok(hex(&Sha256::digest(std::fs::read(path)?)))
}
