//! Settings files: `--config FILE` in TOML, each key a long option of the
//! command without its dashes.
//!
//! The settings become arguments (`--key=value`) placed before the command
//! line's own, and clap parses the whole: a setting is checked exactly like
//! the option it names, and an option on the command line overrides the
//! file (the commands set `args_override_self`). A table
//! `[device."/dev/vdb"]` holds the settings of one device, chosen by the
//! value of an option of the command line ([`Section`]).

use crate::CliError;
use clap::Command;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// The option that names a settings file.
pub const CONFIG_OPTION: &str = "config";

/// A table of per-object settings: `[TABLE."VALUE"]` applies when the
/// command line gives `--OPTION VALUE`, after (so over) the file's other
/// settings.
#[derive(Clone, Copy, Debug)]
pub struct Section {
    /// The table's name in the file.
    pub table: &'static str,
    /// The option whose value picks the entry.
    pub option: &'static str,
}

/// `args` (the program's arguments, its name first) with the settings of
/// each `--config FILE` among them inserted before the command line's
/// options, in the order of the files. `cmd` is the command's definition;
/// with subcommands, the settings are the options of the subcommand named
/// in `args` and are read only when that subcommand is given `--config`.
pub fn with_config_files(
    cmd: &Command,
    args: Vec<OsString>,
    section: Option<Section>,
) -> Result<Vec<OsString>, CliError> {
    let mut cmd = cmd.clone();
    // Global options reach the subcommands only in a built command.
    cmd.build();
    let (target, at) = match subcommand_at(&cmd, &args) {
        Some((i, name)) => match cmd.find_subcommand(&name) {
            Some(sub) => (sub.clone(), i + 1),
            None => return Ok(args),
        },
        None if cmd.has_subcommands() => return Ok(args),
        None => (cmd.clone(), 1.min(args.len())),
    };
    let user = &args[at..];
    let files = option_values(user, CONFIG_OPTION)?;
    if files.is_empty() {
        return Ok(args);
    }
    let picked = match section {
        Some(s) => option_values(user, s.option)?.pop(),
        None => None,
    };
    let mut settings = Vec::new();
    for file in files {
        let path = PathBuf::from(file);
        let table = read_table(&path)?;
        file_args(
            &target,
            &path,
            &table,
            section,
            picked.as_deref(),
            &mut settings,
        )?;
    }
    // A global option given before the subcommand would come before the
    // settings: it overrides them by leaving them out.
    let before = if at > 1 { &args[1..at - 1] } else { &[] };
    settings.retain(|s| {
        let s = s.to_string_lossy();
        let name = s.split('=').next().unwrap_or_default();
        !before.iter().any(|b| {
            b.to_str()
                .is_some_and(|b| b == name || b.starts_with(&format!("{name}=")))
        })
    });
    let mut out = args[..at].to_vec();
    out.extend(settings);
    out.extend_from_slice(user);
    Ok(out)
}

/// The index and name of the subcommand in `args`, skipping the values of
/// the top-level options before it.
fn subcommand_at(cmd: &Command, args: &[OsString]) -> Option<(usize, String)> {
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_str()?;
        if a == "--" {
            return None;
        }
        if let Some(long) = a.strip_prefix("--") {
            if !long.contains('=') && takes_value(cmd, long) {
                i += 1;
            }
        } else if !a.starts_with('-') {
            return cmd
                .get_subcommands()
                .any(|s| s.get_name() == a || s.get_all_aliases().any(|x| x == a))
                .then(|| (i, a.to_owned()));
        }
        i += 1;
    }
    None
}

fn takes_value(cmd: &Command, long: &str) -> bool {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(long))
        .is_some_and(|a| a.get_action().takes_values())
}

/// Every value of `--NAME VALUE` and `--NAME=VALUE` in `args`, in order.
fn option_values(args: &[OsString], name: &str) -> Result<Vec<OsString>, CliError> {
    let flag = format!("--{name}");
    let prefix = format!("--{name}=");
    let mut values = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_os_str();
        if a == OsStr::new("--") {
            break;
        }
        if a == OsStr::new(&flag) {
            let v = args.get(i + 1).ok_or(CliError::ConfigMissingValue)?;
            values.push(v.clone());
            i += 1;
        } else if let Some(v) = a.to_str().and_then(|s| s.strip_prefix(&prefix)) {
            values.push(OsString::from(v));
        }
        i += 1;
    }
    Ok(values)
}

fn read_table(path: &Path) -> Result<toml::Table, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::ConfigRead {
        path: path.to_owned(),
        source,
    })?;
    text.parse::<toml::Table>().map_err(|e| CliError::Config {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

/// The arguments for the settings of one file: its top-level keys, then
/// the keys of the section picked by the command line.
fn file_args(
    cmd: &Command,
    path: &Path,
    table: &toml::Table,
    section: Option<Section>,
    picked: Option<&OsStr>,
    out: &mut Vec<OsString>,
) -> Result<(), CliError> {
    let err = |message: String| CliError::Config {
        path: path.to_owned(),
        message,
    };
    for (key, value) in table {
        match section {
            // A table of that name is the sections (a value of that name
            // may be the option of the same name).
            Some(s) if key == s.table && value.is_table() => {
                let entries = value.as_table().into_iter().flatten();
                for (name, entry) in entries {
                    if !entry.is_table() {
                        return Err(err(format!("`{key}.{name}` must be a table")));
                    }
                }
            }
            _ => setting_args(cmd, key, key, value, out).map_err(err)?,
        }
    }
    if let (Some(s), Some(picked)) = (section, picked) {
        let entry = table
            .get(s.table)
            .and_then(|t| t.get(picked.to_string_lossy().as_ref()))
            .and_then(toml::Value::as_table);
        for (key, value) in entry.into_iter().flatten() {
            let shown = format!("{}.\"{}\".{key}", s.table, picked.to_string_lossy());
            if key == s.option {
                return Err(err(format!(
                    "`{shown}`: the table is already for that {key}"
                )));
            }
            setting_args(cmd, key, &shown, value, out).map_err(err)?;
        }
    }
    Ok(())
}

/// The arguments for `key = value`; `shown` names the key in messages.
fn setting_args(
    cmd: &Command,
    key: &str,
    shown: &str,
    value: &toml::Value,
    out: &mut Vec<OsString>,
) -> Result<(), String> {
    let arg = match cmd.get_arguments().find(|a| a.get_long() == Some(key)) {
        Some(a) if !matches!(key, CONFIG_OPTION | "help" | "version") => a,
        _ => {
            return Err(format!(
                "unknown setting `{shown}`: the settings are the long options of `{} --help` \
                 without their dashes",
                cmd.get_bin_name().unwrap_or(cmd.get_name())
            ))
        }
    };
    if !arg.get_action().takes_values() {
        return match value {
            toml::Value::Boolean(true) => {
                out.push(format!("--{key}").into());
                Ok(())
            }
            toml::Value::Boolean(false) => Ok(()),
            _ => Err(format!("`{shown}` is a switch: true or false")),
        };
    }
    let many = matches!(arg.get_action(), clap::ArgAction::Append);
    let values: Vec<&toml::Value> = match value {
        toml::Value::Array(items) if many => items.iter().collect(),
        toml::Value::Array(_) => return Err(format!("`{shown}` takes one value, not a list")),
        v => vec![v],
    };
    for v in values {
        let text = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Datetime(d) => d.to_string(),
            toml::Value::Array(_) | toml::Value::Table(_) => {
                return Err(format!("`{shown}` takes a value, not a list or a table"))
            }
        };
        out.push(format!("--{key}={text}").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn agent() -> Command {
        Command::new("agent")
            .args_override_self(true)
            .arg(Arg::new("config").long("config"))
            .arg(Arg::new("device").long("device").required(true))
            .arg(Arg::new("server").long("server"))
            .arg(Arg::new("volume").long("volume"))
            .arg(
                Arg::new("rate")
                    .long("rate")
                    .value_parser(clap::value_parser!(u64)),
            )
            .arg(Arg::new("spool").long("spool").action(ArgAction::Append))
            .arg(Arg::new("quiet").long("quiet").action(ArgAction::SetTrue))
    }

    const DEVICE: Section = Section {
        table: "device",
        option: "device",
    };

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn expand(cmd: &Command, args: &[&str]) -> Result<Vec<String>, CliError> {
        let args = args.iter().map(OsString::from).collect();
        with_config_files(cmd, args, Some(DEVICE))
            .map(|v| v.into_iter().map(|a| a.into_string().unwrap()).collect())
    }

    #[test]
    fn settings_go_before_the_command_line() {
        let f = file(
            "server = \"b:7420\"\nrate = 5\nquiet = true\nspool = [\"/a\", \"/b\"]\n\
             [device.\"/dev/vdb\"]\nvolume = \"db1\"\n[device.\"/dev/vdc\"]\nvolume = \"db2\"\n",
        );
        let p = f.path().to_str().unwrap();
        let args = expand(&agent(), &["agent", "--config", p, "--device", "/dev/vdb"]).unwrap();
        assert_eq!(
            args,
            [
                "agent",
                "--quiet",
                "--rate=5",
                "--server=b:7420",
                "--spool=/a",
                "--spool=/b",
                "--volume=db1",
                "--config",
                p,
                "--device",
                "/dev/vdb"
            ]
        );
        let m = agent().try_get_matches_from(&args).unwrap();
        assert_eq!(m.get_one::<String>("volume").unwrap(), "db1");
        assert_eq!(*m.get_one::<u64>("rate").unwrap(), 5);
    }

    #[test]
    fn the_command_line_wins() {
        let f = file("server = \"b:7420\"\nquiet = true\n");
        let p = f.path().to_str().unwrap();
        let args = expand(
            &agent(),
            &[
                "agent",
                "--config",
                p,
                "--device=x",
                "--server",
                "c:1",
                "--quiet",
            ],
        )
        .unwrap();
        let m = agent().try_get_matches_from(&args).unwrap();
        assert_eq!(m.get_one::<String>("server").unwrap(), "c:1");
        assert!(m.get_flag("quiet"));
    }

    #[test]
    fn a_required_option_may_come_from_the_file() {
        let f = file("device = \"/dev/vdb\"\n");
        let p = f.path().to_str().unwrap();
        let args = expand(&agent(), &["agent", &format!("--config={p}")]).unwrap();
        let m = agent().try_get_matches_from(&args).unwrap();
        assert_eq!(m.get_one::<String>("device").unwrap(), "/dev/vdb");
    }

    #[test]
    fn bad_settings_are_named() {
        let cases = [
            ("colour = \"red\"\n", "unknown setting `colour`"),
            ("quiet = \"yes\"\n", "`quiet` is a switch"),
            ("server = [\"a\", \"b\"]\n", "`server` takes one value"),
            ("server = { a = 1 }\n", "not a list or a table"),
            ("config = \"/x\"\n", "unknown setting `config`"),
            (
                "[device.\"/dev/vdb\"]\nshade = 1\n",
                "`device.\"/dev/vdb\".shade`",
            ),
            (
                "[device.\"/dev/vdb\"]\ndevice = \"/dev/vdc\"\n",
                "already for that device",
            ),
            ("device = 3\n[device]\n", "duplicate key"),
            ("server = \n", "TOML parse error"),
        ];
        for (text, want) in cases {
            let f = file(text);
            let p = f.path().to_str().unwrap();
            let e = expand(&agent(), &["agent", "--config", p, "--device", "/dev/vdb"])
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.contains(p), "{e}");
        }
        let e = expand(&agent(), &["agent", "--config", "/nonexistent/x.toml"]).unwrap_err();
        assert!(matches!(e, CliError::ConfigRead { .. }), "{e}");
        let e = expand(&agent(), &["agent", "--config"]).unwrap_err();
        assert!(matches!(e, CliError::ConfigMissingValue), "{e}");
    }

    #[test]
    fn a_value_clap_refuses_is_refused() {
        let f = file("rate = \"fast\"\n");
        let p = f.path().to_str().unwrap();
        let args = expand(&agent(), &["agent", "--config", p, "--device", "x"]).unwrap();
        let e = agent().try_get_matches_from(&args).unwrap_err().to_string();
        assert!(e.contains("--rate") && e.contains("fast"), "{e}");
    }

    #[test]
    fn subcommands_take_their_own_settings() {
        let cmd = Command::new("server")
            .args_override_self(true)
            .arg(Arg::new("log-level").long("log-level").global(true))
            .subcommand(
                Command::new("serve")
                    .arg(Arg::new("config").long("config"))
                    .arg(Arg::new("store").long("store")),
            )
            .subcommand(Command::new("restore").arg(Arg::new("store").long("store")));
        let f = file("store = \"/srv\"\nlog-level = \"debug\"\n");
        let p = f.path().to_str().unwrap();
        let args = expand(
            &cmd,
            &["server", "--log-level", "warn", "serve", "--config", p],
        )
        .unwrap();
        assert_eq!(
            args,
            [
                "server",
                "--log-level",
                "warn",
                "serve",
                "--store=/srv",
                "--config",
                p
            ]
        );
        let m = cmd.clone().try_get_matches_from(&args).unwrap();
        let serve = m.subcommand_matches("serve").unwrap();
        assert_eq!(serve.get_one::<String>("store").unwrap(), "/srv");
        assert_eq!(serve.get_one::<String>("log-level").unwrap(), "warn");
        // Without the global option on the command line, the file's holds.
        let args = expand(&cmd, &["server", "serve", "--config", p]).unwrap();
        let m = cmd.clone().try_get_matches_from(&args).unwrap();
        let serve = m.subcommand_matches("serve").unwrap();
        assert_eq!(serve.get_one::<String>("log-level").unwrap(), "debug");
        // Another subcommand, or none: nothing is read.
        let args = expand(&cmd, &["server", "restore", "--store", "/x"]).unwrap();
        assert_eq!(args, ["server", "restore", "--store", "/x"]);
        assert_eq!(expand(&cmd, &["server"]).unwrap(), ["server"]);
    }
}
