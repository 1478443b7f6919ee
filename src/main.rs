//! The `herald` binary: reads `.env`, then the command line (`cli`), and
//! runs what it asks for: serving by default.

mod cli;

/// mimalloc instead of glibc's allocator: herald allocates and frees small
/// blocks per connection and per delivery, where glibc's malloc showed as
/// 17% of the CPU of accepting connections.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Before the flags are parsed, so that `.env` fills in the environment
    // they fall back to; variables already set win over the file.
    let dotenv = dotenvy::dotenv();
    cli::run(dotenv)
}
