//! rtbackup-docgen DIR: the man pages (DIR/man/NAME.8, one per command and
//! subcommand: rtbackup-server-restore.8) and shell completions
//! (DIR/bash/NAME, DIR/zsh/_NAME) of rtbackupctl, rtbackup-agent and
//! rtbackup-server, rendered from their clap definitions, so that they
//! never disagree with `--help`. `make tools` runs it; `make install`
//! installs what it wrote.
//!
//! Exit status: 0, or 1 when a file cannot be written, 2 on a usage error.

use anyhow::Context;
use clap::{Command, CommandFactory};
use clap_complete::Shell;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// What every page ends with: how the command ends, and where to read on.
const EXIT_STATUS: &[(&str, &str)] = &[
    (
        "rtbackupctl",
        "0 on success; 1 when the operation failed (the message says why and \
         what to do), and for verify when chunks differ and were not \
         repaired, for sync when --timeout passed; 2 on a usage error.",
    ),
    (
        "rtbackup-agent",
        "0 after SIGTERM or SIGINT, or once the device was detached and every \
         record was delivered; 1 on a fatal error (the server refused the \
         credentials or the volume, the device cannot be opened); 2 on a \
         usage error. Network failures are not fatal: the agent reconnects.",
    ),
    (
        "rtbackup-server",
        "0 on success (serve: after SIGTERM or SIGINT, with everything \
         received durable); 1 when the operation failed (the message says \
         why); 2 on a usage error.",
    ),
];

const SEE_ALSO: &str = "rtbackupctl(8), rtbackup-agent(8), rtbackup-server(8), \
     and Documentation/admin-guide.rst in the rtbackup sources";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir] = args.as_slice() else {
        eprintln!("usage: rtbackup-docgen DIR");
        return ExitCode::from(2);
    };
    match generate(Path::new(dir)) {
        Ok(n) => {
            println!("rtbackup-docgen: {n} man pages and their completions in {dir}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rtbackup-docgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn generate(dir: &Path) -> anyhow::Result<usize> {
    for sub in ["man", "bash", "zsh"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    let mut pages = 0;
    for cmd in [
        rtbackupctl::Cli::command(),
        rtbackup_agent::cli::Cli::command(),
        rtbackup_server::cmd::Cli::command(),
    ] {
        // Completions from the command as defined (clap_complete builds it
        // itself), pages from the built one (global options propagated).
        let unbuilt = cmd.clone();
        let mut cmd = cmd;
        cmd.build();
        let name = cmd.get_name().to_owned();
        let status = EXIT_STATUS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
            .with_context(|| format!("no exit status written for {name}"))?;
        pages += man_pages(&cmd, &name, status, &dir.join("man"))?;
        for (shell, file) in [
            (Shell::Bash, dir.join("bash").join(&name)),
            (Shell::Zsh, dir.join("zsh").join(format!("_{name}"))),
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut unbuilt.clone(), &name, &mut out);
            if shell == Shell::Bash {
                out = bash_hyphen_fix(&name, &out);
            }
            write(&file, &out)?;
        }
    }
    Ok(pages)
}

/// The page of `cmd` as `page` (rtbackup-server-serve), then of each of
/// its subcommands. Returns how many pages were written.
fn man_pages(cmd: &Command, page: &str, status: &str, dir: &Path) -> anyhow::Result<usize> {
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone().name(page.to_owned())).section("8");
    man.render(&mut out)
        .with_context(|| format!("rendering {page}"))?;
    writeln!(out, ".SH \"EXIT STATUS\"\n{}", roff_text(status))?;
    writeln!(out, ".SH \"SEE ALSO\"\n{}", roff_text(SEE_ALSO))?;
    write(&dir.join(format!("{page}.8")), &out)?;
    let mut n = 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        n += man_pages(sub, &format!("{page}-{}", sub.get_name()), status, dir)?;
    }
    Ok(n)
}

/// clap_complete's bash script for a name with a hyphen spells the state
/// of a subcommand two ways (`rtbackup__server__subcmd__serve` where it is
/// set, `rtbackup__subcmd__server__subcmd__serve` where it is matched), so
/// no subcommand's options complete (clap-rs/clap#6421): spell the matched
/// one as it is set. tests/render.rs completes a subcommand's option.
fn bash_hyphen_fix(name: &str, script: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(script);
    let wrong = name.replace('-', "__subcmd__");
    let right = name.replace('-', "__");
    if wrong == right {
        return script.to_vec();
    }
    text.replace(&format!("{wrong}__subcmd__"), &format!("{right}__subcmd__"))
        .into_bytes()
}

/// `text` safe as a roff text line (no leading control character, and a
/// backslash escaped).
fn roff_text(text: &str) -> String {
    let t = text.replace('\\', "\\e");
    if t.starts_with(['.', '\'']) {
        format!("\\&{t}")
    } else {
        t
    }
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
