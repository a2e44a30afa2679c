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
//! # Who owns a page
//!
//! A page of a peer-shared range that GMEM tracks (see [`lpt`]) is owned by exactly one side at
//! a time: the host (the CPU page table maps it; core MM may swap or migrate it like any
//! anonymous page) or one device (the CPU page table does not map it; the logical page table
//! names the device and the device page).  Data is coherent because a page is never mapped by
//! two sides at once: the CPU faults a device page home, a device faults a host page over.
//!
//! A page moves only under a *claim* (`lpt::Claim`): a value, the page number and a generation
//! stamped into the entry, that only its holder can end.  A claim ends by recording where the
//! page lives now, and only if the entry still carries the claim's generation: when the entry
//! was dropped meanwhile (munmap, `MADV_DONTNEED`, exit), or dropped and made again by a later
//! fault, ending the claim records nothing and the holder frees what it moved.  Nobody but the
//! holder writes a claimed entry; dropping it is the only other thing that may happen to it.
//! A move that fails leaves the data where it was (the device page, or the host page that was
//! mapped, parked in the entry): no error path drops data.
//!
//! # Locking
//!
//! The rules of GPU SVM (Documentation/gpu/rfc/gpusvm.rst): core-MM locks only around core-MM
//! calls, sequence checks instead of holding locks across device work.  From outer to inner:
//!
//! 1. `mmap_lock` (or the per-VMA lock in the fault path): taken by core MM before it calls
//!    GMEM.  GMEM never takes it in a path that core MM entered with it held.  Entry points
//!    whose safety comments say the caller holds it check that with `mmap_assert_locked()` or
//!    `mmap_assert_write_locked()`.  Eviction, which may run in any process, takes the mmap
//!    lock of the evicted pages' owner for reading around mapping them, only with
//!    `mmap_read_trylock()` (it parks the copies if that fails): it never waits for it.
//! 2. The page table lock: held by core MM around `gm_cpu_fault_end()`, and by
//!    `gm_map_anon_folios()` around the callback that ends each claim of the pages it maps
//!    (`migrate::map_home`).  It comes before the logical page table lock.
//! 3. An address space's `moves` lock (evictions under way), then the logical page table lock
//!    (the XArray's spinlock), which protects every field of every entry.  No allocation that
//!    may reclaim, and no device operation, under either.
//! 4. A device list's spinlock: only to find a device; never held while calling one.  The
//!    table's `wait_lock` only orders a sleeper with its wake-up.
//!
//! Nothing that may sleep runs under 2, 3 or 4.  Device operations (copies, TLB invalidation,
//! freeing device memory) run with at most `mmap_lock` held, on pages that were first claimed
//! or taken out of the table.
//!
//! Whoever needs a claimed page sleeps until the claim ends (`LogicalPageTable::wait_unclaimed`,
//! woken by every end of a claim and every drop of a claimed entry), with at most the mmap or
//! VMA lock held.  That cannot deadlock because a claim holder never waits for another claim
//! and never waits for the mmap lock: CPU and device faults hold it already, migrations run
//! under it, evictions only try it.  mremap and the teardown of an address space wait for the
//! evictions under way (`moves`) instead; new evictions of that address space are refused
//! meanwhile and pick another victim.  The MMU notifier callback never waits for a claim: it
//! drops claimed entries, and their holders find them gone.  It may sleep (device work) only
//! when core MM says the invalidation is blockable.
//!
//! C header: [`include/linux/gmem.h`](srctree/include/linux/gmem.h).
//! UAPI: [`include/uapi/linux/gmem.h`](srctree/include/uapi/linux/gmem.h).

use kernel::prelude::*;

pub mod address_space;
pub mod context;
pub mod device;
mod devmem;
mod evict;
pub mod fault;
pub mod hmadvise;
mod lpt;
mod migrate;

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
