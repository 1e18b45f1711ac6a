// SPDX-License-Identifier: GPL-2.0

//! Probe: `AsBytes` and `FromBytes` live in `kernel::transmute` (6.17), no
//! longer in `kernel::types`.

pub use kernel::transmute::{AsBytes, FromBytes};
