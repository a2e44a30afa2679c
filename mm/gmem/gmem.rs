// SPDX-License-Identifier: GPL-2.0

//! GMEM: generalized memory management for external memory devices.
//!
//! This crate is the machine-independent core of GMEM, built into vmlinux.
//! Userspace opts a range in with `mmap(MAP_PRIVATE | MAP_ANONYMOUS |
//! MAP_PEER_SHARED)` and steers it with `hmadvise(2)`; accelerator drivers
//! implement their MMU operations and let the core manage the rest.
//!
//! Nothing outside `mm/gmem/` can depend on this crate, so every entry point
//! is an `extern "C"` function declared in C and checked against that
//! declaration by `#[export]`.
//!
//! C header: [`include/linux/gmem.h`](srctree/include/linux/gmem.h).
//! UAPI: [`include/uapi/linux/gmem.h`](srctree/include/uapi/linux/gmem.h).

use kernel::prelude::*;

pub mod address_space;
mod device;
mod fault;
pub mod hmadvise;
mod lpt;

/// Prefix of this crate's log lines (`module!` would define it for a module).
const __LOG_PREFIX: &[u8] = b"gmem\0";

/// Sets up the GMEM core.
///
/// # Safety
///
/// Called exactly once, by `gm_init()` in `mm/gmem/glue.c` at
/// `subsys_initcall` time, before any driver can register a device.
#[export]
pub unsafe extern "C" fn gm_core_init() -> c_int {
    if let Err(e) = lpt::init() {
        pr_err!("cannot create the gmem_mapping cache: {e:?}\n");
        return e.to_errno();
    }
    // The statistics are a debugging aid: GMEM works without them.
    if let Err(e) = address_space::debugfs_init() {
        pr_warn!("no debugfs statistics: {e:?}\n");
    }
    pr_info!(
        "core initialised: MAP_PEER_SHARED and hmadvise(2) available, {} bytes per tracked page\n",
        core::mem::size_of::<lpt::GmMapping>()
    );
    0
}
