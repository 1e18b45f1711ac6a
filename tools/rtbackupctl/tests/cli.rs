//! Drives the real rtbackupctl binary in the situations that need no
//! kernel module: the VM tests cover the rest.

use std::process::{Command, Output};

fn rtbackupctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rtbackupctl"))
        .args(["--control", "/nonexistent/rtbackup-control"])
        .args(args)
        .output()
        .expect("run rtbackupctl")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn without_the_module_every_command_says_modprobe() {
    for args in [
        &["status"][..],
        &["attach", "/dev/null"],
        &["detach", "rtbackup0"],
        &["mark", "rtbackup0", "before-upgrade"],
        &["mark", "--freeze", "/", "rtbackup0", "m1"],
    ] {
        let o = rtbackupctl(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&o).contains("modprobe rtbackup"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["attach"][..],
        &["frobnicate"],
        &["status", "--bogus"],
        &["mark", "rtbackup0"],
        &["mark", "rtbackup0", "m1", "--freeze"],
    ] {
        let o = rtbackupctl(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn bad_mark_names_are_usage_errors() {
    for (name, why) in [
        ("vol@x", "only A-Z"),
        (".x", "starts with a dot"),
        ("", "empty"),
        (&"x".repeat(65), "longer than 64"),
    ] {
        let o = rtbackupctl(&["mark", "rtbackup0", name]);
        assert_eq!(o.status.code(), Some(2), "{name:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("invalid mark name") && err.contains(why),
            "{name:?}: {err}"
        );
    }
}

#[test]
fn version_reports_the_abi_without_the_module() {
    let o = rtbackupctl(&["version", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["abi_version"], rtbackup_control::ABI_VERSION);
    assert!(v["module"].is_null());
    assert!(v["module_error"]
        .as_str()
        .is_some_and(|e| e.contains("modprobe rtbackup")));
}
