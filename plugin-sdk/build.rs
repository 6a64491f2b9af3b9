//! Writes `$OUT_DIR/wit.rs`: the WIT package `patchbay:connector` as one Rust string literal
//! (`WIT_TEXT`, for reference) and the three export macros, which expand wit-bindgen's
//! `generate!` for one world *in the plugin crate*, with that text inlined.
//!
//! Why not generate the worlds here in the SDK: each world exports the interface `plugin`, and
//! wit-bindgen's cross-crate export macros (`pub_export_macro`) are `#[macro_export]`ed under a
//! name derived from the interface, so three worlds in one crate collide. Generating in the
//! plugin crate also embeds exactly one world's exports in each component. The shared types and
//! host imports are still generated once, in the SDK (`bindings.rs`), and mapped with `with`.

use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    // `wit/` next to the crate when packaged, `../wit` in the workspace.
    let wit = [manifest.join("wit"), manifest.join("../wit")]
        .into_iter()
        .find(|p| p.join("types.wit").is_file())
        .ok_or("cannot find the WIT contract: neither plugin-sdk/wit nor ../wit has types.wit")?;
    println!("cargo:rerun-if-changed={}", wit.display());
    let text = package_text(&wit)?;

    let mut out = format!(
        "/// The WIT package `patchbay:connector` this SDK was built against.\n\
         pub const WIT_TEXT: &str = {text:?};\n"
    );
    for role in ["source", "transform", "sink"] {
        write_export_macro(&mut out, role, &text)?;
    }
    let dest = Path::new(&std::env::var("OUT_DIR")?).join("wit.rs");
    std::fs::write(&dest, out).map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    Ok(())
}

/// Every `.wit` file of the folder, in name order, as one package: the first `package` line is
/// kept, the others are dropped.
fn package_text(dir: &Path) -> Result<String, Box<dyn Error>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wit"))
        .collect();
    files.sort();
    let mut text = String::new();
    let mut seen_package = false;
    for path in files {
        println!("cargo:rerun-if-changed={}", path.display());
        let content = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for line in content.lines() {
            if line.trim_start().starts_with("package ") {
                if seen_package {
                    continue;
                }
                seen_package = true;
            }
            text.push_str(line);
            text.push('\n');
        }
    }
    Ok(text)
}

fn write_export_macro(out: &mut String, role: &str, text: &str) -> Result<(), Box<dyn Error>> {
    let (macro_name, role_trait) = match role {
        "source" => ("export_source", "Source"),
        "transform" => ("export_transform", "Transform"),
        _ => ("export_sink", "Sink"),
    };
    // The data interface and its functions, forwarding to `$crate::export`; for transforms
    // and sinks also the packed fast path (world `transform-packed` / `sink-packed`).
    let (api, functions) = match role {
        "source" => (
            "source_api",
            "fn poll(max: u32) -> ::core::result::Result<$crate::PollResult, $crate::Error> {
                    $crate::export::poll(&INSTANCE, max)
                }
                fn ack(checkpoint: u64) -> ::core::result::Result<(), $crate::Error> {
                    $crate::export::ack(&INSTANCE, checkpoint)
                }",
        ),
        "transform" => (
            "transform_api",
            "fn process(
                    batch: ::std::vec::Vec<$crate::Message>,
                ) -> ::std::vec::Vec<$crate::Outcome> {
                    $crate::export::process(&INSTANCE, batch)
                }",
        ),
        _ => (
            "sink_api",
            "fn write(
                    batch: ::std::vec::Vec<$crate::Message>,
                ) -> ::std::vec::Vec<::core::result::Result<(), $crate::Error>> {
                    $crate::export::write(&INSTANCE, batch)
                }",
        ),
    };
    let (world, packed) = match role {
        "source" => ("source", String::new()),
        "transform" => (
            "transform-packed",
            "impl __api::transform_packed_api::Guest for Adapter {
                fn process_packed(batch: ::std::vec::Vec<u8>) -> ::std::vec::Vec<u8> {
                    $crate::export::process_packed(&INSTANCE, &batch)
                }
            }"
            .to_owned(),
        ),
        _ => (
            "sink-packed",
            "impl __api::sink_packed_api::Guest for Adapter {
                fn write_packed(batch: ::std::vec::Vec<u8>) -> ::std::vec::Vec<u8> {
                    $crate::export::write_packed(&INSTANCE, &batch)
                }
            }"
            .to_owned(),
        ),
    };
    write!(
        out,
        r#"
/// Export a type implementing [`{role_trait}`](crate::{role_trait}) as this crate's component
/// (world `{world}` of `patchbay:connector@0.1.0`). Invoke it once, at the root of a `cdylib`
/// crate:
///
/// ```ignore
/// patchbay_sdk::{macro_name}!(MyPlugin);
/// ```
///
/// The instance `init` builds lives in a `thread_local!` `RefCell<Option<T>>`; data calls made
/// before a successful `init` answer the fatal error `plugin used before init` (per record for
/// batches), never a trap.
#[macro_export]
macro_rules! {macro_name} {{
    ($t:ty) => {{
        #[doc(hidden)]
        #[allow(unsafe_code, missing_docs, dead_code, unused, clippy::all)]
        mod __patchbay_{role}_bindings {{
            // Absolute `::patchbay_sdk` paths: wit-bindgen reads these as text, where `$crate`
            // cannot appear. A plugin must therefore depend on the SDK under its own name.
            ::patchbay_sdk::__wit_bindgen::generate!({{
                inline: {text:?},
                world: "patchbay:connector/{world}@0.1.0",
                runtime_path: "::patchbay_sdk::__wit_bindgen::rt",
                with: {{
                    "patchbay:connector/types@0.1.0": ::patchbay_sdk::bindings::types,
                    "patchbay:connector/logging@0.1.0": ::patchbay_sdk::bindings::logging,
                    "patchbay:connector/metrics@0.1.0": ::patchbay_sdk::bindings::metrics,
                    "patchbay:connector/state@0.1.0": ::patchbay_sdk::bindings::state,
                }},
            }});
        }}

        #[doc(hidden)]
        #[allow(unsafe_code)]
        const _: () = {{
            use __patchbay_{role}_bindings::exports::patchbay::connector as __api;

            ::std::thread_local! {{
                static INSTANCE: ::core::cell::RefCell<::core::option::Option<$t>> =
                    const {{ ::core::cell::RefCell::new(::core::option::Option::None) }};
            }}

            struct Adapter;

            impl __api::plugin::Guest for Adapter {{
                fn describe() -> $crate::Metadata {{
                    <$t as $crate::{role_trait}>::metadata()
                }}
                fn init(
                    config: ::std::vec::Vec<$crate::ConfigEntry>,
                ) -> ::core::result::Result<(), $crate::Error> {{
                    $crate::export::init(&INSTANCE, config, <$t as $crate::{role_trait}>::init)
                }}
            }}

            impl __api::{api}::Guest for Adapter {{
                {functions}
            }}

            {packed}

            __patchbay_{role}_bindings::export!(Adapter with_types_in __patchbay_{role}_bindings);
        }};
    }};
}}
"#
    )?;
    Ok(())
}
