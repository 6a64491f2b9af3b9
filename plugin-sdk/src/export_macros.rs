//! The export macros: [`export_source!`], [`export_transform!`], [`export_sink!`].
//!
//! Each expands wit-bindgen's `generate!` for one world *in the plugin crate*, with the WIT text
//! inlined, then implements the generated `Guest` traits by forwarding to [`crate::export`].
//!
//! Why not generate the worlds in the SDK: each world exports the interface `plugin`, and
//! wit-bindgen's cross-crate export macros (`pub_export_macro`) are `#[macro_export]`ed under a
//! name derived from the interface, so three worlds in one crate collide. Generating in the
//! plugin crate also embeds exactly one world's exports in each component. The shared types and
//! host imports are still generated once, in the SDK (`bindings.rs`), and mapped with `with`.
//!
//! `generate!` is a proc macro: it needs the WIT text as a string literal in its input (it sees
//! a `const` or a nested macro call unexpanded). build.rs therefore writes only the WIT text, in
//! the callback macro `__patchbay_with_wit!` (`$OUT_DIR/wit.rs`): `__patchbay_with_wit! {
//! cb! { args } }` expands to `$crate::cb! { "WIT TEXT", args }`. Each public macro below calls
//! it with its `__export_*_with_wit!` macro, which receives the text as `$wit:literal`.

/// Export a type implementing [`Source`](crate::Source) as this crate's component
/// (world `source-shared` of `patchbay:connector@0.2.0`: `poll`, `poll-within`, which
/// keeps each answer within the host's byte bound, and `share`, which asks
/// [`Source::share`](crate::Source::share)). Invoke it once, at the root of a `cdylib`
/// crate:
///
/// ```ignore
/// patchbay_sdk::export_source!(MyPlugin);
/// ```
///
/// A source that also answers requests implements [`Replies`](crate::Replies) and is exported
/// with `export_source!(MyPlugin, replies)` (world `source-reply`).
///
/// The instance `init` builds lives in a `thread_local!` `RefCell<Option<T>>`; data calls made
/// before a successful `init` answer the fatal error `plugin used before init` (per record for
/// batches), never a trap.
#[macro_export]
macro_rules! export_source {
    ($t:ty) => {
        $crate::__patchbay_with_wit! { __export_source_with_wit! { $t } }
    };
    ($t:ty, replies) => {
        $crate::__patchbay_with_wit! { __export_replying_source_with_wit! { $t } }
    };
}

/// Export a type implementing [`Transform`](crate::Transform) as this crate's component
/// (world `transform-packed` of `patchbay:connector@0.2.0`). Invoke it once, at the root of a `cdylib`
/// crate:
///
/// ```ignore
/// patchbay_sdk::export_transform!(MyPlugin);
/// ```
///
/// The instance `init` builds lives in a `thread_local!` `RefCell<Option<T>>`; data calls made
/// before a successful `init` answer the fatal error `plugin used before init` (per record for
/// batches), never a trap.
#[macro_export]
macro_rules! export_transform {
    ($t:ty) => {
        $crate::__patchbay_with_wit! { __export_transform_with_wit! { $t } }
    };
}

/// Export a type implementing [`Sink`](crate::Sink) as this crate's component
/// (world `sink-packed` of `patchbay:connector@0.2.0`). Invoke it once, at the root of a `cdylib`
/// crate:
///
/// ```ignore
/// patchbay_sdk::export_sink!(MyPlugin);
/// ```
///
/// The instance `init` builds lives in a `thread_local!` `RefCell<Option<T>>`; data calls made
/// before a successful `init` answer the fatal error `plugin used before init` (per record for
/// batches), never a trap.
#[macro_export]
macro_rules! export_sink {
    ($t:ty) => {
        $crate::__patchbay_with_wit! { __export_sink_with_wit! { $t } }
    };
}

/// `generate!` for one world of the contract, in a module of the plugin crate named `$module`.
/// Absolute `::patchbay_sdk` paths: wit-bindgen reads these as text, where `$crate` cannot
/// appear. A plugin must therefore depend on the SDK under its own name.
#[doc(hidden)]
#[macro_export]
macro_rules! __patchbay_bindings {
    ($module:ident, $wit:literal, $world:literal) => {
        #[doc(hidden)]
        #[allow(unsafe_code, missing_docs, dead_code, unused, clippy::all)]
        mod $module {
            // `path: []`: without it, generate! also parses the crate's own `wit/` folder
            // if one exists, and a plugin that keeps a copy of the contract there (or the
            // SDK's doc tests, whose crate carries `wit/`) fails with "attempting to re-add
            // package patchbay:connector@0.2.0".
            ::patchbay_sdk::__wit_bindgen::generate!({
                inline: $wit,
                path: [],
                world: $world,
                runtime_path: "::patchbay_sdk::__wit_bindgen::rt",
                with: {
                    "patchbay:connector/types@0.2.0": ::patchbay_sdk::bindings::types,
                    "patchbay:connector/logging@0.2.0": ::patchbay_sdk::bindings::logging,
                    "patchbay:connector/metrics@0.2.0": ::patchbay_sdk::bindings::metrics,
                    "patchbay:connector/state@0.2.0": ::patchbay_sdk::bindings::state,
                },
            });
        }
    };
}

/// The instance and the `plugin` interface (`describe`, `init`), shared by the three roles;
/// `Adapter` is the type the caller implements the data interface on.
#[doc(hidden)]
#[macro_export]
macro_rules! __patchbay_plugin_api {
    ($t:ty, $role:ident) => {
        ::std::thread_local! {
            static INSTANCE: ::core::cell::RefCell<::core::option::Option<$t>> =
                const { ::core::cell::RefCell::new(::core::option::Option::None) };
        }

        // Built for another target than wasm32 (unit tests, a native benchmark), nothing is
        // exported: several plugins may then link into one program.
        #[allow(dead_code)]
        struct Adapter;

        impl __api::plugin::Guest for Adapter {
            fn describe() -> $crate::Metadata {
                <$t as $crate::$role>::metadata()
            }
            fn init(
                config: ::std::vec::Vec<$crate::ConfigEntry>,
            ) -> ::core::result::Result<(), $crate::Error> {
                $crate::export::init(&INSTANCE, config, <$t as $crate::$role>::init)
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_source_with_wit {
    ($wit:literal, $t:ty) => {
        $crate::__patchbay_source!($wit, $t, "patchbay:connector/source-shared@0.2.0", {});
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_replying_source_with_wit {
    ($wit:literal, $t:ty) => {
        $crate::__patchbay_source!($wit, $t, "patchbay:connector/source-reply@0.2.0", {
            // Answers to requests (world `source-reply`).
            impl __api::source_reply_api::Guest for Adapter {
                fn reply(
                    token: ::std::string::String,
                    answer: $crate::Answer,
                ) -> ::core::result::Result<(), $crate::Error> {
                    $crate::export::reply(&INSTANCE, token, answer)
                }
            }
        });
    };
}

/// A source's bindings and `Guest` impls for `$world`, with `$extra` items (more exports).
#[doc(hidden)]
#[macro_export]
macro_rules! __patchbay_source {
    ($wit:literal, $t:ty, $world:literal, { $($extra:item)* }) => {
        $crate::__patchbay_bindings!(__patchbay_source_bindings, $wit, $world);

        #[doc(hidden)]
        #[allow(unsafe_code)]
        const _: () = {
            use __patchbay_source_bindings::exports::patchbay::connector as __api;

            $crate::__patchbay_plugin_api!($t, Source);

            impl __api::source_api::Guest for Adapter {
                fn poll(max: u32) -> ::core::result::Result<$crate::PollResult, $crate::Error> {
                    $crate::export::poll(&INSTANCE, max)
                }
                fn ack(checkpoint: u64) -> ::core::result::Result<(), $crate::Error> {
                    $crate::export::ack(&INSTANCE, checkpoint)
                }
            }

            // The byte-bounded poll (world `source-bounded`).
            impl __api::source_bounded_api::Guest for Adapter {
                fn poll_within(
                    max: u32,
                    max_bytes: u64,
                ) -> ::core::result::Result<$crate::PollResult, $crate::Error> {
                    $crate::export::poll_within(&INSTANCE, max, max_bytes)
                }
            }

            // Several instances sharing the work (world `source-shared`).
            impl __api::source_shared_api::Guest for Adapter {
                fn share(
                    instance: u32,
                    instances: u32,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::export::share(&INSTANCE, instance, instances)
                }
            }

            $($extra)*


            #[cfg(target_arch = "wasm32")]
            __patchbay_source_bindings::export!(
                Adapter with_types_in __patchbay_source_bindings
            );
        };
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_transform_with_wit {
    ($wit:literal, $t:ty) => {
        $crate::__patchbay_bindings!(
            __patchbay_transform_bindings,
            $wit,
            "patchbay:connector/transform-packed@0.2.0"
        );

        #[doc(hidden)]
        #[allow(unsafe_code)]
        const _: () = {
            use __patchbay_transform_bindings::exports::patchbay::connector as __api;

            $crate::__patchbay_plugin_api!($t, Transform);

            impl __api::transform_api::Guest for Adapter {
                fn process(
                    batch: ::std::vec::Vec<$crate::Message>,
                ) -> ::std::vec::Vec<$crate::Outcome> {
                    $crate::export::process(&INSTANCE, batch)
                }
            }

            // The packed fast path (world `transform-packed`).
            impl __api::transform_packed_api::Guest for Adapter {
                fn process_packed(batch: ::std::vec::Vec<u8>) -> ::std::vec::Vec<u8> {
                    $crate::export::process_packed(&INSTANCE, &batch)
                }
            }

            #[cfg(target_arch = "wasm32")]
            __patchbay_transform_bindings::export!(
                Adapter with_types_in __patchbay_transform_bindings
            );
        };
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_sink_with_wit {
    ($wit:literal, $t:ty) => {
        $crate::__patchbay_bindings!(
            __patchbay_sink_bindings,
            $wit,
            "patchbay:connector/sink-packed@0.2.0"
        );

        #[doc(hidden)]
        #[allow(unsafe_code)]
        const _: () = {
            use __patchbay_sink_bindings::exports::patchbay::connector as __api;

            $crate::__patchbay_plugin_api!($t, Sink);

            impl __api::sink_api::Guest for Adapter {
                fn write(
                    batch: ::std::vec::Vec<$crate::Message>,
                ) -> ::std::vec::Vec<::core::result::Result<(), $crate::Error>> {
                    $crate::export::write(&INSTANCE, batch)
                }
            }

            // The packed fast path (world `sink-packed`).
            impl __api::sink_packed_api::Guest for Adapter {
                fn write_packed(batch: ::std::vec::Vec<u8>) -> ::std::vec::Vec<u8> {
                    $crate::export::write_packed(&INSTANCE, &batch)
                }
            }

            #[cfg(target_arch = "wasm32")]
            __patchbay_sink_bindings::export!(
                Adapter with_types_in __patchbay_sink_bindings
            );
        };
    };
}
