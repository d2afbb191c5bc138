//! Link options of the `qflow` binary that keep its resident code small.
//!
//! - `scripts/hot-symbols.txt` (made by `scripts/hot-symbols.sh`) lists the functions an
//!   apply, a re-apply and a plan run; lld places them side by side at the start of the
//!   code. The kernel maps code in 64 KiB windows around each page touched, so spread
//!   over 10 MB they made 5.7 MB resident in every run; side by side about 2 MB.
//! - `-z pack-relative-relocs`: the position-independent binary's 24,000 relocations as a
//!   bitmap (7 KB) instead of a 590 KB table the loader reads whole at every start.
//!   Needs glibc 2.36 or later, where the loader understands it.
//!
//! Both only with the linker Rust uses on x86-64 Linux by default (lld, since Rust 1.90),
//! and only when no other linker was configured: another linker may not know the options.

fn main() {
    println!("cargo:rerun-if-changed=scripts/hot-symbols.txt");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let default_linker = var("TARGET") == "x86_64-unknown-linux-gnu"
        && var("RUSTC_LINKER").is_empty()
        && !var("CARGO_ENCODED_RUSTFLAGS").contains("link");
    if !default_linker {
        return;
    }
    let list = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join("scripts/hot-symbols.txt");
    if list.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
    if glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the C library this build links against (the host's: qflow is built where it
/// runs) is glibc of at least `major.minor`.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = std::process::Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
    else {
        return false;
    };
    // "glibc 2.36"
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}
