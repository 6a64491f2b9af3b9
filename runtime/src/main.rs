//! The `patchbay` binary.

fn main() -> std::process::ExitCode {
    patchbay_runtime::cli::main()
}
