//! The `resmon` binary: parses the command line and hands over to [`resmon::cli::main`].

use clap::Parser;

#[global_allocator]
static ALLOCATOR: resmon::alloc::CheckThreadAllocator = resmon::alloc::CheckThreadAllocator;

fn main() -> std::process::ExitCode {
    resmon::cli::main(resmon::cli::Cli::parse())
}
