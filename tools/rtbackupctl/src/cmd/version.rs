//! `rtbackupctl version`: versions of the tool, its ABI and the module.

use rtbackup_control::{Control, Error};
use std::path::Path;

/// Print the versions of this tool, its ABI and the loaded module.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl Args {
    pub(crate) fn run(self, control_path: &Path) -> anyhow::Result<()> {
        let tool = env!("CARGO_PKG_VERSION");
        let abi = rtbackup_control::ABI_VERSION;
        let module = match Control::open_path(control_path) {
            Ok(c) => Ok(c.version().clone()),
            Err(Error::AbiMismatch { module, .. }) => Err(format!("ABI version {module}")),
            Err(e) => Err(e.to_string()),
        };
        if self.json {
            return super::print_json(&serde_json::json!({
                "tool": tool,
                "abi_version": abi,
                "module": module.as_ref().ok(),
                "module_error": module.as_ref().err(),
            }));
        }
        println!("rtbackupctl {tool} (ABI version {abi})");
        match module {
            Ok(m) => println!(
                "module rtbackup {} (ABI version {})",
                m.release, m.abi_version
            ),
            Err(e) => println!("module: {e}"),
        }
        Ok(())
    }
}
