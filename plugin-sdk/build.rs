//! Writes `$OUT_DIR/wit.rs`: the WIT package `patchbay:connector` as one Rust string literal,
//! twice: `WIT_TEXT` (for reference) and the callback macro `__patchbay_with_wit!`, which hands
//! the text as a literal to another macro of the SDK:
//! `__patchbay_with_wit! { cb! { args } }` expands to `$crate::cb! { "WIT TEXT", args }`.
//!
//! That is all that is generated: the export macros are ordinary `macro_rules!` in
//! `src/export_macros.rs`. They need the text as a literal because wit-bindgen's `generate!` is a
//! proc macro, which sees a `const` or a nested macro call unexpanded.

use std::error::Error;
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

    let out = format!(
        "/// The WIT package `patchbay:connector` this SDK was built against.\n\
         pub const WIT_TEXT: &str = {text:?};\n\
         \n\
         /// `__patchbay_with_wit! {{ cb! {{ args }} }}` is `$crate::cb! {{ \"WIT TEXT\", args }}`\n\
         /// (see `export_macros.rs`).\n\
         #[doc(hidden)]\n\
         #[macro_export]\n\
         macro_rules! __patchbay_with_wit {{\n    \
             ($cb:ident ! {{ $($args:tt)* }}) => {{\n        \
                 $crate::$cb! {{ {text:?}, $($args)* }}\n    \
             }};\n\
         }}\n"
    );
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
