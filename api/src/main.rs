//! `api`: serves the pricing API, or seeds / imports the catalog.

use clap::Parser as _;

/// mimalloc: the read path allocates a few small buffers per request, and
/// glibc's malloc cost about a tenth of the api's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    shared::shutdown::exit_code(api::main(api::Cli::parse()))
}
