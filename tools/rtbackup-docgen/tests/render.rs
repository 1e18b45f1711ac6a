//! The generated man pages render without warnings (`man -l`), and the
//! bash completions load and complete subcommands and options.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_rtbackup-docgen");

fn generate(dir: &Path) {
    let out = Command::new(BIN).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn man_pages_render() {
    assert!(have("man"), "man is missing: run `make deps`");
    let d = tempfile::tempdir().unwrap();
    generate(d.path());
    let mut pages: Vec<_> = std::fs::read_dir(d.path().join("man"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    // One page per command and subcommand.
    for want in [
        "rtbackupctl.8",
        "rtbackupctl-attach.8",
        "rtbackupctl-verify.8",
        "rtbackup-agent.8",
        "rtbackup-server.8",
        "rtbackup-server-serve.8",
        "rtbackup-server-restore.8",
    ] {
        assert!(
            pages.iter().any(|p| p.ends_with(want)),
            "no {want} in {pages:?}"
        );
    }
    for page in &pages {
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(page)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .env("PAGER", "cat")
            .output()
            .unwrap();
        let text = plain(&String::from_utf8_lossy(&out.stdout));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {err}", page.display());
        assert!(err.trim().is_empty(), "{}: warnings: {err}", page.display());
        for section in ["NAME", "SYNOPSIS", "OPTIONS", "EXIT STATUS", "SEE ALSO"] {
            assert!(
                text.lines().any(|l| l.trim_end() == section),
                "{}: no {section} section:\n{text}",
                page.display()
            );
        }
    }
    let serve = std::fs::read_to_string(d.path().join("man/rtbackup-server-serve.8")).unwrap();
    assert!(serve.contains("metrics"), "serve's page lacks --metrics");
    assert!(serve.contains("config"), "serve's page lacks --config");
}

/// `text` without the overstrikes (`N\bN`) of bold and underlined text.
fn plain(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs bash's completion for `line` (the words typed so far, the last
/// one being completed) with the generated script loaded.
fn complete(script: &Path, line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split(' ').collect();
    let program = format!(
        "source '{}' || exit 3\n\
         spec=$(complete -p {cmd}) || exit 4\n\
         fn=$(printf '%s' \"$spec\" | sed -n 's/.*-F \\([^ ]*\\).*/\\1/p')\n\
         COMP_WORDS=({words})\n\
         COMP_CWORD={cword}\n\
         COMP_LINE='{line}'\n\
         COMP_POINT=${{#COMP_LINE}}\n\
         \"$fn\" {cmd} '{cur}' '{prev}'\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        cmd = words[0],
        words = words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
        cword = words.len() - 1,
        cur = words[words.len() - 1],
        prev = words[words.len().saturating_sub(2)],
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn bash_completions_load_and_complete() {
    let d = tempfile::tempdir().unwrap();
    generate(d.path());
    let bash = d.path().join("bash");
    let got = complete(&bash.join("rtbackupctl"), "rtbackupctl at");
    assert_eq!(got, ["attach"], "{got:?}");
    let got = complete(&bash.join("rtbackupctl"), "rtbackupctl ");
    for sub in [
        "attach", "detach", "status", "sync", "verify", "rollback", "mark",
    ] {
        assert!(got.iter().any(|w| w == sub), "no {sub} in {got:?}");
    }
    let got = complete(&bash.join("rtbackup-server"), "rtbackup-server serve --me");
    assert_eq!(got, ["--metrics"], "{got:?}");
    let got = complete(&bash.join("rtbackup-agent"), "rtbackup-agent --spo");
    assert!(got.iter().any(|w| w == "--spool"), "{got:?}");
    // zsh's are written too (zsh itself is not needed here).
    for name in ["rtbackupctl", "rtbackup-agent", "rtbackup-server"] {
        let z = std::fs::read_to_string(d.path().join("zsh").join(format!("_{name}"))).unwrap();
        assert!(z.starts_with(&format!("#compdef {name}")), "{z:.60}");
    }
}
