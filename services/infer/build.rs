// Embeds the directory of the libtorch that torch-sys linked against as the run-time
// search path of this package's binaries and tests, so they start without
// LD_LIBRARY_PATH. `cargo:rustc-link-arg` reaches only the package's own link targets,
// which is why the `lungstream` binary includes this same file as its build script.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        // The linker drops libtorch_cuda by default because nothing names its symbols.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch,--as-needed");
    }
}
