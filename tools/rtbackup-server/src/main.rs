fn main() -> std::process::ExitCode {
    rtbackup_server::cli::main()
}
