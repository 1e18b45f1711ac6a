// SPDX-License-Identifier: GPL-2.0

//! Probe: `module!` takes `authors: [...]` (6.15), not `author: "..."`.

use kernel::prelude::*;

module! {
    type: Probe,
    name: "rtb_probe",
    authors: ["rtbackup"],
    description: "probe",
    license: "GPL",
}

struct Probe;

impl kernel::Module for Probe {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        Ok(Probe)
    }
}
