//! The `cordon` command line. Parsing, output and exit codes only; the work is in the library crates.

mod cli;
mod output;

fn main() {
    std::process::exit(cli::main());
}
