//! Test only: the hot-swap tagger, version from this crate (see `../../tagger.rs`).
include!("../../tagger.rs");
