//! Plugins written in C (sdk-c/examples), built as a third party would with the standard tools,
//! in three steps:
//!
//! 1. bindings for one world of `wit/` by wit-bindgen's C generator (the `wit-bindgen-c` crate,
//!    the library behind `wit-bindgen c --world WORLD wit/`): `WORLD.h`, `WORLD.c` and
//!    `WORLD_component_type.o`, which carries the world's type for step 3;
//! 2. clang for `wasm32-wasi` with Debian's `wasi-libc` (a core module, reactor model: no
//!    `main`, the exports are called one by one);
//! 3. a component from the core module by wit-component with the WASI preview1 adapter of
//!    wasmtime 48 (the library behind `wasm-tools component new --adapt`).
//!
//! Debian's clang 14 and wasi-libc target WASI preview1 only, hence the adapter; a clang with
//! `wasm32-wasip2` and a newer wasi-libc would skip step 3 (sdk-c/README.md says so).

use std::path::{Path, PathBuf};
use std::process::Command;

use wit_bindgen_core::wit_parser::Resolve;

use crate::{Result, on_path, root, run, target_dir};

/// Plugins written in C (sdk-c/examples): folder, world, output name.
pub const C_PLUGINS: &[(&str, &str, &str)] = &[("upper", "transform", "c-upper")];

/// The Debian packages that give clang for wasm32-wasi: the compiler, the linker (wasm-ld),
/// the C library and the compiler's builtins for wasm32.
const C_PACKAGES: &[&str] = &["clang", "lld", "wasi-libc", "libclang-rt-dev-wasm32"];

/// Build every C plugin into `target/plugins/<name>.wasm`.
pub fn build_c_plugins() -> Result<()> {
    ensure_c_toolchain()?;
    let out_dir = target_dir().join("plugins");
    let work = target_dir().join("c-sdk");
    for (folder, world, name) in C_PLUGINS {
        let bindings = work.join("bindings").join(world);
        c_bindings(world, &bindings)?;
        let core = work.join(format!("{name}.core.wasm"));
        let source = root().join("sdk-c").join("examples").join(folder);
        let mut clang = Command::new("clang");
        clang
            .args(["--target=wasm32-wasi", "-mexec-model=reactor", "-O2"])
            .args(["-Wall", "-Wextra", "-Werror", "-std=c11"])
            .arg("-I")
            .arg(&bindings)
            .arg(source.join("plugin.c"))
            .arg(bindings.join(format!("{world}.c")))
            .arg(bindings.join(format!("{world}_component_type.o")))
            .arg("-o")
            .arg(&core);
        run(&mut clang)?;
        componentize(&core, &out_dir.join(format!("{name}.wasm")))?;
    }
    Ok(())
}

/// clang, wasm-ld and wasi-libc, from Debian's packages when one is missing.
fn ensure_c_toolchain() -> Result<()> {
    let have = on_path("clang")
        && on_path("wasm-ld")
        && Path::new("/usr/lib/wasm32-wasi/libc.a").is_file()
        && has_wasm_builtins();
    if have {
        return Ok(());
    }
    if !on_path("apt-get") {
        return Err(format!(
            "the C SDK's example needs clang with a wasm32-wasi sysroot (Debian packages {}): \
             install them and run again",
            C_PACKAGES.join(", ")
        ));
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(C_PACKAGES))
}

/// Whether clang finds its compiler-rt builtins for wasm32 (`libclang-rt-dev-wasm32`).
fn has_wasm_builtins() -> bool {
    Command::new("clang")
        .args(["--target=wasm32-wasi", "-print-libgcc-file-name"])
        .output()
        .ok()
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .is_some_and(|p| p.is_file())
}

/// `wit-bindgen c --world WORLD --out-dir OUT wit/`.
fn c_bindings(world: &str, out: &Path) -> Result<()> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_dir(root().join("wit"))
        .map_err(|e| format!("cannot read wit/: {e:#}"))?;
    let world_id = resolve
        .select_world(&[package], Some(world))
        .map_err(|e| format!("no world `{world}` in wit/: {e:#}"))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world_id, &mut files)
        .map_err(|e| format!("C bindings for world `{world}`: {e:#}"))?;
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    for (name, bytes) in files.iter() {
        let path = out.join(name);
        std::fs::write(&path, bytes)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// `wasm-tools component new CORE --adapt wasi_snapshot_preview1.reactor.wasm -o OUT`.
fn componentize(core: &Path, out: &Path) -> Result<()> {
    use wasi_preview1_component_adapter_provider::{
        WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
    };
    let module = std::fs::read(core).map_err(|e| format!("cannot read {}: {e}", core.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .and_then(|e| {
            e.adapter(
                WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|e| e.encode())
        .map_err(|e| format!("cannot make a component of {}: {e:#}", core.display()))?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(out, component).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    eprintln!("xtask: {} (C)", out.display());
    Ok(())
}
