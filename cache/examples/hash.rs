//! Prints `<blake3>  <path>` for each file, like `b3sum`, through `qflow_cache::hash_file`,
//! then the throughput on stderr: a way to compare qflow's hashing with `b3sum`.
//!
//! `cargo run --release -p qflow-cache --example hash -- FILE...`

fn main() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut bytes = 0u64;
    for arg in std::env::args_os().skip(1) {
        let path = std::path::Path::new(&arg);
        bytes += std::fs::metadata(path)?.len();
        println!("{}  {}", qflow_cache::hash_file(path)?, path.display());
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{bytes} bytes in {secs:.3} s: {:.0} MB/s",
        bytes as f64 / secs / 1e6
    );
    Ok(())
}
