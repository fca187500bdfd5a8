//! The `resmon` binary: parses the command line and hands over to [`resmon::cli::main`].

#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    resmon::cli::main(resmon::cli::Cli::parse())
}
