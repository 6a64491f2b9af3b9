//! The shared types and host imports, generated once from the crate's own `wit/` (a copy of
//! the repository's `wit/`, kept identical by a test, so the packaged crate needs no checkout)
//! by wit-bindgen.
//!
//! The world here imports the four shared interfaces and exports nothing. The export macros
//! (`export_source!`, `export_transform!`, `export_sink!`, written by `build.rs`) generate the
//! one world a plugin implements in the plugin crate and map these interfaces to this module
//! with `with`, so `Message` is the same Rust type for every role. wit-component merges this
//! imports-only world with the plugin's world when it builds the component.

#![allow(missing_docs, unsafe_code, clippy::all)]

wit_bindgen::generate!({
    path: "wit",
    inline: "
        package patchbay:sdk;

        world imports {
            import patchbay:connector/types@0.2.0;
            import patchbay:connector/logging@0.2.0;
            import patchbay:connector/metrics@0.2.0;
            import patchbay:connector/state@0.2.0;
        }
    ",
    world: "patchbay:sdk/imports",
    additional_derives: [PartialEq, Eq],
    generate_all,
});

pub use self::patchbay::connector::{logging, metrics, state, types};

#[cfg(test)]
mod tests {
    /// The vendored contract is the repository's, file for file (skipped outside a checkout).
    #[test]
    fn the_vendored_wit_is_the_contract() {
        let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let repo = crate_dir.join("../wit");
        if !repo.is_dir() {
            return;
        }
        for file in ["types.wit", "worlds.wit"] {
            let ours = std::fs::read_to_string(crate_dir.join("wit").join(file));
            let theirs = std::fs::read_to_string(repo.join(file));
            assert!(
                ours.is_ok() && ours.ok() == theirs.ok(),
                "plugin-sdk/wit/{file} differs from wit/{file}: copy it (cp wit/*.wit plugin-sdk/wit/)"
            );
        }
    }
}
