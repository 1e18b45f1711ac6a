fn main() -> std::process::ExitCode {
    rtbackup_server::cmd::main()
}
