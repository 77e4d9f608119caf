//! The `cordon` command line. Parsing, output and exit codes only; the work is in the library crates.

mod cli;
mod cmd_flags;
mod cmd_flags_gov;
mod cmd_mcp;
mod cmd_net;
mod cmd_policy;
mod cmd_session;
mod output;

fn main() {
    // The native sandbox re-executes this binary as its stage 1; that must
    // happen before anything starts a thread or touches the terminal.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(cordon_sandbox::native::STAGE1_ARG))
    {
        cordon_sandbox::native::stage1_main();
    }
    std::process::exit(cli::main());
}
