//! The `ferry` command-line tool.
//!
//! Not built yet: `ferry serve`, `ferry demo` and the cluster commands
//! arrive with the networked server (see README.md). Until then the binary
//! says so instead of silently doing nothing.

fn main() {
    eprintln!(
        "ferry {}: the networked server is not built yet.\n\
         Run the embedded engine instead: cargo run --release -p ferry-engine --example embedded",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
