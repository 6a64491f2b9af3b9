//! The shared types and host imports, generated once from `wit/` by wit-bindgen.
//!
//! The world here imports the four shared interfaces and exports nothing. The export macros
//! (`export_source!`, `export_transform!`, `export_sink!`, written by `build.rs`) generate the
//! one world a plugin implements in the plugin crate and map these interfaces to this module
//! with `with`, so `Message` is the same Rust type for every role. wit-component merges this
//! imports-only world with the plugin's world when it builds the component.

#![allow(missing_docs, unsafe_code, clippy::all)]

wit_bindgen::generate!({
    path: "../wit",
    inline: "
        package patchbay:sdk;

        world imports {
            import patchbay:connector/types@0.1.0;
            import patchbay:connector/logging@0.1.0;
            import patchbay:connector/metrics@0.1.0;
            import patchbay:connector/state@0.1.0;
        }
    ",
    world: "patchbay:sdk/imports",
    additional_derives: [PartialEq, Eq],
    generate_all,
});

pub use self::patchbay::connector::{logging, metrics, state, types};
