//! Puts the operator's console (the front end in `../console`, built by `cargo xtask build`
//! into `console/dist`) into the binary: its three files are copied to `OUT_DIR/console`, from
//! where `admin/console.rs` includes them. Without a build of the console the admin API serves
//! a page that says how to get one; nothing else changes.

use std::path::Path;

const FILES: [&str; 3] = ["index.html", "console.js", "console.css"];

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let dist = Path::new(&manifest).join("../console/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let out = Path::new(&std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).join("console");
    if let Err(e) = std::fs::create_dir_all(&out) {
        println!("cargo::error=cannot create {}: {e}", out.display());
        return;
    }
    let built = FILES.iter().all(|f| dist.join(f).is_file());
    for file in FILES {
        let to = out.join(file);
        let result = if built {
            std::fs::copy(dist.join(file), &to).map(|_| ())
        } else {
            std::fs::write(&to, placeholder(file))
        };
        if let Err(e) = result {
            println!("cargo::error=cannot write {}: {e}", to.display());
        }
    }
    if !built {
        println!(
            "cargo::warning=the console is not built ({} is missing): the admin API serves a \
             page saying so; `cargo xtask build` builds it",
            dist.display()
        );
    }
}

fn placeholder(file: &str) -> &'static str {
    match file {
        "index.html" => {
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Patchbay \
             console</title></head><body><h1>Patchbay console</h1><p>This binary was built \
             without the console: build it with <code>cargo xtask build</code> (it needs \
             Node.js and npm). The admin API under <code>/v1</code> works without it.</p>\
             </body></html>\n"
        }
        _ => "",
    }
}
