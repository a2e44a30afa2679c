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
//! declaration by `#[export]`; they are all in [`entry`], on top of the
//! modules below: the logical page table ([`lpt`]), device memory
//! ([`devmem`]) and range attributes ([`policy`]) at the bottom, then
//! devices ([`device`]), the address space and its notifiers
//! ([`address_space`]), migration ([`migrate`]) and
//! eviction ([`evict`]), faults ([`fault`]), contexts ([`context`]) and
//! `hmadvise(2)` ([`hmadvise`]) and `/proc/<pid>/gmem_maps` ([`maps`]).
//! No module uses one above it; [`trace`] (the tracepoints) and [`thrash`]
//! (thrashing control's knobs) use none, and any may call them.
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
//!    lock of the evicted pages' owner for reading around unmapping, copying and mapping
//!    them, only with `mmap_read_trylock()`: it never waits for it.  If that fails it takes
//!    other pages, and parks copies only when no candidate's owner can be had.
//! 2. The page table lock: held by core MM around `gm_cpu_fault_end()`, and by
//!    `gm_map_anon_folios()` around the callback that ends each claim of the pages it maps
//!    (`migrate::map_home`).  It comes before the logical page table lock.
//! 3. An address space's `moves` lock (evictions under way), then the logical page table lock
//!    (the XArray's spinlock), which protects every field of every entry.  No allocation that
//!    may reclaim, and no device operation, under either.
//! 4. An address space's policy lock (range attributes): a leaf, except that giving a pin back
//!    takes the device list's lock and the device's pin count under it.  Eviction reads
//!    attributes under the device memory's lock.
//! 5. A device list's spinlock: only to find a device; never held while calling one (but to
//!    count pins).  The table's `wait_lock` only orders a sleeper with its wake-up.
//!
//! Nothing that may sleep runs under 2 to 5.  Device operations (copies, TLB invalidation,
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

mod address_space;
mod context;
mod device;
mod devmem;
pub mod entry;
mod evict;
mod fault;
mod hmadvise;
mod lpt;
mod maps;
mod migrate;
mod policy;
mod thrash;
mod trace;

/// Prefix of this crate's log lines (`module!` would define it for a module).
const __LOG_PREFIX: &[u8] = b"gmem\0";
