// SPDX-License-Identifier: GPL-2.0

//! The C entry points of the GMEM core, all in one place: what `include/linux/gmem.h` declares
//! for drivers and for core MM, and the `hmadvise(2)` system call.
//!
//! Each is a thin `extern "C"` wrapper, checked against its C declaration by `#[export]`: it
//! turns the caller's pointers into references under the safety requirements it documents,
//! calls the module that does the work, and turns the result into what C expects (an errno,
//! an `ERR_PTR()`, a `vm_fault_t`).  Nothing else in the crate is called from C but the
//! callbacks it hands to C itself: the MMU notifier operations (see [`crate::address_space`]),
//! work items, and the commit callback of `gm_map_anon_folios()` (see [`crate::migrate`]).

use crate::{
    address_space::{self, AddressSpace},
    context::{attach, Context},
    device::{device_arc, device_ref, Device},
    fault::{cpu_fault_begin, cpu_fault_end, Fill},
    hmadvise::hmadvise,
    lpt::Claim,
    maps, thrash,
};
use core::ptr::NonNull;
use kernel::{
    bindings,
    ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_void},
    mm::MmWithUser,
    page::{BorrowedPage, PAGE_SIZE},
    prelude::*,
    seq_file::SeqFile,
    sync::Arc,
};

/// `0`, or the negative errno of `r`: what a C entry point returns.
fn errno(r: Result) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

// Setting up.

/// Sets up the GMEM core.
///
/// # Safety
///
/// Called exactly once, by `gm_init()` in `mm/gmem/glue.c` at
/// `subsys_initcall` time, before any driver can register a device.
#[export]
pub unsafe extern "C" fn gm_core_init() -> c_int {
    // The statistics are a debugging aid: GMEM works without them.
    if let Err(e) = address_space::debugfs_init() {
        pr_warn!("no debugfs statistics: {e:?}\n");
    }
    pr_info!(
        "core initialised: MAP_PEER_SHARED and hmadvise(2) available, one word per tracked page\n"
    );
    0
}

// Devices (the driver API).

/// Registers a device with GMEM; see `include/linux/gmem.h`.
///
/// # Safety
///
/// `mmu` points to operations valid until `mmu->release` is called, or for ever if it has none;
/// `name` is a NUL-terminated string.
#[export]
pub unsafe extern "C" fn gm_dev_create(
    mmu: *const bindings::gm_mmu,
    priv_: *mut c_void,
    caps: c_uint,
    name: *const c_char,
) -> *mut bindings::gm_dev {
    if name.is_null() {
        return EINVAL.to_ptr();
    }
    // SAFETY: `name` is a NUL-terminated string by the safety requirements, and `mmu` valid
    // operations or NULL.
    match unsafe { Device::create(mmu, priv_, caps, CStr::from_char_ptr(name)) } {
        Ok(dev) => dev,
        Err(e) => e.to_ptr(),
    }
}

/// Unregisters a device: drops the driver's reference from `gm_dev_create()`.
///
/// Contexts still attached keep the device (and the driver's data) until they go.
///
/// # Safety
///
/// `dev` came from `gm_dev_create()` and the caller gives up its reference.
#[export]
pub unsafe extern "C" fn gm_dev_destroy(dev: *mut bindings::gm_dev) {
    // SAFETY: by the safety requirements.
    unsafe { Device::destroy(dev) }
}

/// Hands `size` bytes of device memory at device physical address `base` to GMEM.
///
/// # Safety
///
/// `dev` is a live device handle.
#[export]
pub unsafe extern "C" fn gm_dev_register_physmem(
    dev: *mut bindings::gm_dev,
    base: u64,
    size: u64,
) -> c_int {
    // SAFETY: `dev` is live by the safety requirements.
    errno(unsafe { device_ref(dev) }.register_physmem(base, size))
}

/// The driver's private data of a device.
///
/// # Safety
///
/// `dev` is a live device handle.
#[export]
pub unsafe extern "C" fn gm_dev_priv(dev: *const bindings::gm_dev) -> *mut c_void {
    // SAFETY: `dev` is live by the safety requirements.
    unsafe { device_ref(dev) }.priv_data()
}

/// The device's node id (`hnid`).
///
/// # Safety
///
/// `dev` is a live device handle.
#[export]
pub unsafe extern "C" fn gm_dev_hnid(dev: *const bindings::gm_dev) -> c_int {
    // SAFETY: `dev` is live by the safety requirements.
    c_int::from(unsafe { device_ref(dev) }.id)
}

/// The device's name.
///
/// # Safety
///
/// `dev` is a live device handle; the string lives as long as the device.
#[export]
pub unsafe extern "C" fn gm_dev_name(dev: *const bindings::gm_dev) -> *const c_char {
    // SAFETY: `dev` is live by the safety requirements.
    unsafe { device_ref(dev) }.name().as_char_ptr()
}

/// Sets how many bytes of its memory the device may use (sysfs `limit`); more than it has
/// means all of it.  Pages above a lowered limit are evicted as the device allocates.
///
/// # Safety
///
/// `dev` is a live device handle.
#[export]
pub unsafe extern "C" fn gm_dev_set_limit(dev: *mut bindings::gm_dev, bytes: u64) -> c_int {
    // SAFETY: `dev` is live by the safety requirements.
    errno(unsafe { device_ref(dev) }.set_limit(bytes / PAGE_SIZE as u64))
}

/// The device's capabilities (`GM_DEV_CAP_*`).
///
/// # Safety
///
/// `dev` is a live device handle.
#[export]
pub unsafe extern "C" fn gm_dev_caps(dev: *const bindings::gm_dev) -> c_uint {
    // SAFETY: `dev` is live by the safety requirements.
    unsafe { device_ref(dev) }.caps()
}

/// Reads the device's counters.
///
/// # Safety
///
/// `dev` is a live device handle and `stats` is writable.
#[export]
pub unsafe extern "C" fn gm_dev_get_stats(
    dev: *const bindings::gm_dev,
    stats: *mut bindings::gm_dev_stats,
) {
    // SAFETY: `dev` is live and `stats` writable by the safety requirements.
    unsafe { stats.write(device_ref(dev).stats()) };
}

// Address spaces and contexts (the driver API).

/// The address space of the calling process, created if it has none; see `gm_as_create()`.
///
/// # Safety
///
/// Called from a process (not a kernel thread without an mm), holding none of its mm's locks.
#[export]
pub unsafe extern "C" fn gm_as_create() -> *mut bindings::gm_as {
    // SAFETY: `get_current()` is always valid; `mm` is the task's own mm or NULL.
    let mm = unsafe { (*bindings::get_current()).mm };
    if mm.is_null() {
        return EINVAL.to_ptr();
    }
    // SAFETY: `mm` is current's mm and the caller holds none of its locks.
    let ret = unsafe { gm_as_prepare(mm) };
    if ret != 0 {
        return Error::from_errno(ret).to_ptr();
    }
    // SAFETY: current keeps its mm alive.
    match unsafe { AddressSpace::of(mm) } {
        Some(this) => core::ptr::from_ref(this).cast_mut().cast(),
        None => ENOMEM.to_ptr(),
    }
}

/// Attaches `dev` to address space `as_`; see `gm_as_attach()`.
///
/// # Safety
///
/// `as_` came from `gm_as_create()` in the same system call of the same process; `dev` is a
/// live device handle.
#[export]
pub unsafe extern "C" fn gm_as_attach(
    as_: *mut bindings::gm_as,
    dev: *mut bindings::gm_dev,
) -> *mut bindings::gm_context {
    // SAFETY: by the safety requirements `as_` is the live address space of current's mm.
    let this = unsafe { &*as_.cast::<AddressSpace>() };
    // SAFETY: `dev` is live by the safety requirements.
    let dev = unsafe { device_arc(dev) };
    match attach(this, dev) {
        Ok(ctx) => Arc::into_raw(ctx).cast_mut().cast(),
        Err(e) => e.to_ptr(),
    }
}

/// Detaches a context and drops the driver's reference to it; see `gm_context_detach()`.
///
/// # Safety
///
/// `ctx` came from `gm_as_attach()`; the caller gives up its reference and makes no other call
/// on `ctx` concurrently.
#[export]
pub unsafe extern "C" fn gm_context_detach(ctx: *mut bindings::gm_context) {
    // SAFETY: `ctx` came from `Arc::into_raw` in `gm_as_attach()`; the caller gives it up.
    let ctx = unsafe { Arc::<Context>::from_raw(ctx.cast_const().cast()) };
    ctx.detach();
}

/// Keeps eviction away from `len` bytes at `start` until [`gm_context_unhold`]: what a driver
/// does for the pages of a job while the job runs (a device that cannot fault must, after it
/// made them resident).  Holds nest; `ENOMEM` if the hold cannot be recorded.
///
/// # Safety
///
/// `ctx` came from `gm_as_attach()` and is not detached.
#[export]
pub unsafe extern "C" fn gm_context_hold(
    ctx: *mut bindings::gm_context,
    start: c_ulong,
    len: c_ulong,
) -> c_int {
    // SAFETY: `ctx` is live by the safety requirements.
    let ctx = unsafe { &*ctx.cast_const().cast::<Context>() };
    errno(ctx.hold(start, len))
}

/// Ends one hold of `len` bytes at `start` from [`gm_context_hold`].
///
/// # Safety
///
/// `ctx` came from `gm_as_attach()` and is not detached.
#[export]
pub unsafe extern "C" fn gm_context_unhold(
    ctx: *mut bindings::gm_context,
    start: c_ulong,
    len: c_ulong,
) {
    // SAFETY: `ctx` is live by the safety requirements.
    unsafe { &*ctx.cast_const().cast::<Context>() }.unhold(start, len);
}

/// The device page table of a context: what `pmap_create` made for it.
///
/// # Safety
///
/// `ctx` came from `gm_as_attach()` and is not detached.
#[export]
pub unsafe extern "C" fn gm_context_pmap(ctx: *const bindings::gm_context) -> *mut c_void {
    // SAFETY: `ctx` is live by the safety requirements.
    unsafe { &*ctx.cast::<Context>() }.pmap()
}

/// Makes `len` bytes at `start` of the context's address space resident on its device and
/// mapped there; see `gm_dev_fault_range()`.
///
/// # Safety
///
/// `ctx` came from `gm_as_attach()` and is not detached concurrently.
#[export]
pub unsafe extern "C" fn gm_dev_fault_range(
    ctx: *mut bindings::gm_context,
    start: c_ulong,
    len: c_ulong,
    access: c_uint,
) -> c_int {
    // SAFETY: `ctx` is live by the safety requirements.
    let ctx = unsafe { &*ctx.cast_const().cast::<Context>() };
    errno(ctx.fault(start, len, access))
}

/// Serves `nr` device faults at `faults`; see `gm_dev_fault_batch()`.
///
/// # Safety
///
/// `ctx` came from `gm_as_attach()` and is not detached concurrently; `faults` points to `nr`
/// writable faults (or `nr` is 0).
#[export]
pub unsafe extern "C" fn gm_dev_fault_batch(
    ctx: *mut bindings::gm_context,
    faults: *mut bindings::gm_fault,
    nr: c_uint,
) -> c_int {
    // SAFETY: `ctx` is live by the safety requirements.
    let ctx = unsafe { &*ctx.cast_const().cast::<Context>() };
    if faults.is_null() || nr == 0 {
        return EINVAL.to_errno();
    }
    // SAFETY: by the safety requirements `faults` points to `nr` faults we may write.
    let faults = unsafe { core::slice::from_raw_parts_mut(faults, nr as usize) };
    errno(ctx.fault_batch(faults))
}

/// The density prefetch threshold of the device, in percent (sysfs `prefetch_threshold`).
///
/// # Safety
///
/// `dev` is a live device handle.
#[export]
pub unsafe extern "C" fn gm_dev_prefetch_threshold(dev: *const bindings::gm_dev) -> c_uint {
    // SAFETY: `dev` is live by the safety requirements.
    unsafe { device_ref(dev) }.prefetch_threshold()
}

/// Sets the density prefetch threshold of the device: 0 (off) to 100 percent, `EINVAL` above.
///
/// # Safety
///
/// `dev` is a live device handle.
#[export]
pub unsafe extern "C" fn gm_dev_set_prefetch_threshold(
    dev: *mut bindings::gm_dev,
    percent: c_uint,
) -> c_int {
    // SAFETY: `dev` is live by the safety requirements.
    errno(unsafe { device_ref(dev) }.set_prefetch_threshold(percent))
}

// Core MM hooks.

/// Gives `mm` an address space before its first `MAP_PEER_SHARED` mapping.
///
/// # Safety
///
/// `mm` is the current process's mm; the caller holds none of its locks.
#[export]
pub unsafe extern "C" fn gm_as_prepare(mm: *mut bindings::mm_struct) -> c_int {
    // SAFETY: `mm` is current's mm, alive for the whole call, and the caller holds none of its
    // locks.
    errno(unsafe { address_space::prepare(mm) })
}

/// Lets the address space of `mm` follow `len` bytes at `addr`, a range that mmap() just
/// mapped peer-shared: registers the MMU interval notifiers of its windows, and drops range
/// attributes an unmap there could not (see `Policy::unmap`).  A failure is not fatal: a device
/// fault registers what it needs itself.
///
/// # Safety
///
/// `mm` is the current process's mm; the caller holds none of its locks.
#[export]
pub unsafe extern "C" fn gm_as_cover(mm: *mut bindings::mm_struct, addr: c_ulong, len: c_ulong) {
    // SAFETY: `mm` is current's mm, alive for the whole call.
    if let Some(this) = unsafe { AddressSpace::of(mm) } {
        let end = addr.saturating_add(len);
        // SAFETY: as above; no mmap lock is held.
        let _ = unsafe { this.cover(addr, end, false) };
        let _ = this
            .policy
            .reset(addr / PAGE_SIZE, end.div_ceil(PAGE_SIZE), this.unpin());
    }
}

/// The bounces in a window that make a page thrash (sysfs `thrashing/threshold`; 0: off).
#[export]
pub extern "C" fn gm_thrashing_threshold() -> c_uint {
    thrash::threshold().into()
}

/// Sets the thrashing threshold: `-EINVAL` above 7.
#[export]
pub extern "C" fn gm_set_thrashing_threshold(bounces: c_uint) -> c_int {
    errno(thrash::set_threshold(bounces))
}

/// The thrashing window, in milliseconds (sysfs `thrashing/window_ms`).
#[export]
pub extern "C" fn gm_thrashing_window_ms() -> c_uint {
    thrash::window_ms()
}

/// Sets the thrashing window: `-EINVAL` for 0 or more than an hour.
#[export]
pub extern "C" fn gm_set_thrashing_window_ms(ms: c_uint) -> c_int {
    errno(thrash::set_window_ms(ms))
}

/// The thrashing pages device faults mapped in place.
#[export]
pub extern "C" fn gm_thrashing_in_place() -> u64 {
    thrash::in_place()
}

/// Writes `/proc/<pid>/gmem_maps` of `mm` into `m` (see `crate::maps`).
///
/// # Safety
///
/// `m` is the seq_file being read; `mm` has a user the caller holds, and none of its locks.
#[export]
pub unsafe extern "C" fn gm_show_maps(
    m: *mut bindings::seq_file,
    mm: *mut bindings::mm_struct,
) -> c_int {
    // SAFETY: by the safety requirements `m` is valid and only this thread uses it for the
    // call, and `mm` has a user.
    let (m, mm) = unsafe { (SeqFile::from_raw(m), MmWithUser::from_raw(mm)) };
    errno(maps::show(m, mm))
}

/// Prepares fork: brings the parent's device pages home and gives the child an address space.
///
/// The child gets an empty logical page table: the pages it inherits are host pages, mapped by
/// the page tables that fork copies, and are recorded when GMEM next needs to know about them.
/// Devices attached to the parent are not attached to the child.
///
/// # Safety
///
/// Called by `dup_mmap()` with `oldmm` and `mm` write-locked, before any VMA is copied.
#[export]
pub unsafe extern "C" fn gm_as_fork(
    oldmm: *mut bindings::mm_struct,
    mm: *mut bindings::mm_struct,
) -> c_int {
    // SAFETY: by the safety requirements.
    errno(unsafe { address_space::fork(oldmm, mm) })
}

/// Frees the address space of `mm`, once, after `exit_mmap()`.
///
/// # Safety
///
/// Called by `__mmput()` after `exit_mmap(mm)`: no user of `mm` is left.
#[export]
pub unsafe extern "C" fn gm_as_exit(mm: *mut bindings::mm_struct) {
    // SAFETY: by the safety requirements.
    unsafe { address_space::exit(mm) }
}

/// Moves the logical mappings of `len` bytes at `old` to `new` (mremap), before core MM moves
/// the page tables.  Device pages stay where they are and are unmapped at their old address.
/// With `undo` (moving them back when mremap failed), the move cannot fail.
///
/// # Safety
///
/// Called by mremap with `mm`'s mmap lock held for writing; `old` and `new` are page aligned
/// and the two ranges do not overlap.
#[export]
pub unsafe extern "C" fn gm_as_mremap(
    mm: *mut bindings::mm_struct,
    old: c_ulong,
    new: c_ulong,
    len: c_ulong,
    undo: bool,
) -> c_int {
    // SAFETY: `mm` is current's mm, live.
    unsafe { bindings::mmap_assert_write_locked(mm) };
    // SAFETY: `mm` is current's mm, locked by the caller.
    let Some(this) = (unsafe { AddressSpace::of(mm) }) else {
        return 0;
    };
    // SAFETY: the caller holds the mmap lock for writing.
    errno(unsafe { this.mremap(old, new, len, undo) })
}

/// Starts the discard of `start..end` (madvise `MADV_DONTNEED` or `MADV_FREE`, before the zap
/// of the range's PTEs): drops its device and parked pages, and keeps moves from host memory
/// out of it until [`gm_as_dontneed_end`].
///
/// # Safety
///
/// Called by madvise with `mm`'s mmap or VMA lock held, and followed by
/// [`gm_as_dontneed_end`] for the same range under the same lock.
#[export]
pub unsafe extern "C" fn gm_as_dontneed_begin(
    mm: *mut bindings::mm_struct,
    start: c_ulong,
    end: c_ulong,
) {
    // SAFETY: `mm` is the mm madvise works on (another process's with process_madvise()),
    // kept alive and locked by the caller.
    if let Some(this) = unsafe { AddressSpace::of(mm) } {
        this.dontneed_begin(start, end);
    }
}

/// Ends the discard [`gm_as_dontneed_begin`] started, after the zap.
///
/// # Safety
///
/// As for [`gm_as_dontneed_begin`], which the caller called for this range.
#[export]
pub unsafe extern "C" fn gm_as_dontneed_end(
    mm: *mut bindings::mm_struct,
    start: c_ulong,
    end: c_ulong,
) {
    // SAFETY: as in `gm_as_dontneed_begin`; the address space that began the discard is the
    // mm's until the mm goes.
    if let Some(this) = unsafe { AddressSpace::of(mm) } {
        this.dontneed_end(start, end);
    }
}

/// Claims the page at `addr` for a CPU fault that will install `page` (see [`crate::fault`]),
/// and fills `page` (not zeroed by the caller) with the page's data or with zeros.  Sleeps
/// while someone else moves the page.  On success, `*token` is what [`gm_cpu_fault_end`] takes
/// to end the claim.
///
/// # Safety
///
/// Called by `do_anonymous_page()` on a peer-shared VMA of `mm`, with the mmap or VMA lock
/// held and no spinlock; `page` is the new, exclusively owned page; `token` is valid for a
/// write.
#[export]
pub unsafe extern "C" fn gm_cpu_fault_begin(
    mm: *mut bindings::mm_struct,
    addr: c_ulong,
    page: *mut bindings::page,
    token: *mut c_ulong,
) -> bindings::vm_fault_t {
    // SAFETY: `mm` is the faulting mm, alive during the fault.
    let Some(this) = (unsafe { AddressSpace::of(mm) }) else {
        return bindings::vm_fault_reason_VM_FAULT_SIGBUS;
    };
    let (Some(page), false) = (NonNull::new(page), token.is_null()) else {
        return bindings::vm_fault_reason_VM_FAULT_SIGBUS;
    };
    // SAFETY: the caller owns `page` for the duration of the call.
    let page = unsafe { BorrowedPage::from_raw(page) };
    let va = addr & !(PAGE_SIZE - 1);
    match cpu_fault_begin(&this.lpt, &this.devices, va / PAGE_SIZE, va, &page) {
        Ok((claim, fill)) => {
            let token_value = ((claim.into_token() as c_ulong) << 2) | fill.to_bits() as c_ulong;
            // SAFETY: `token` is valid for a write, by the safety requirements.
            unsafe { token.write(token_value) };
            0
        }
        Err(e) if e == ENOMEM => bindings::vm_fault_reason_VM_FAULT_OOM,
        Err(_) => bindings::vm_fault_reason_VM_FAULT_SIGBUS,
    }
}

/// Ends the CPU fault at `addr` that [`gm_cpu_fault_begin`] claimed (`token`), which installs
/// `page` if `install`.  Returns whether the page may be installed: `false` if its entry was
/// dropped since the claim (the data copied is stale), and always when not `install` (the
/// data `page` holds is kept in the entry).
///
/// # Safety
///
/// Called by `do_anonymous_page()` once for each successful [`gm_cpu_fault_begin`], with the
/// same `mm`, `addr`, `page` and `token`; under the page table lock if `install`.
#[export]
pub unsafe extern "C" fn gm_cpu_fault_end(
    mm: *mut bindings::mm_struct,
    addr: c_ulong,
    page: *mut bindings::page,
    token: c_ulong,
    install: bool,
) -> bool {
    // SAFETY: `mm` is the faulting mm, alive during the fault.
    let (Some(this), Some(page)) = (unsafe { AddressSpace::of(mm) }, NonNull::new(page)) else {
        return false;
    };
    // SAFETY: the caller holds `page` for the duration of the call.
    let page = unsafe { BorrowedPage::from_raw(page) };
    // The token is the claim's generation and what `page` holds.
    let claim = Claim::from_token(addr / PAGE_SIZE, (token >> 2) as u32);
    cpu_fault_end(
        &this.lpt,
        claim,
        &page,
        Fill::from_bits(token as u32),
        install,
    )
}

/// Whether the CPU may not write the page at `addr` yet: devices hold read-only copies of it
/// (`MADV_READ_MOSTLY`), or one is being made.  Never sleeps.
///
/// # Safety
///
/// Called by `do_wp_page()` on a peer-shared VMA of `mm`, under the page table lock.
#[export]
pub unsafe extern "C" fn gm_cpu_write_shared(mm: *mut bindings::mm_struct, addr: c_ulong) -> bool {
    // SAFETY: `mm` is the faulting mm, alive during the fault.
    unsafe { AddressSpace::of(mm) }.is_some_and(|this| this.lpt.has_copies(addr / PAGE_SIZE))
}

/// Drops the read-only copies of the page at `addr` that [`gm_cpu_write_shared`] found, before
/// the CPU writes it; the write faults again.  Returns 0.
///
/// # Safety
///
/// Called by `do_wp_page()` on a peer-shared VMA of `mm`, with the mmap or VMA lock held and
/// no spinlock.
#[export]
pub unsafe extern "C" fn gm_cpu_write_collapse(
    mm: *mut bindings::mm_struct,
    addr: c_ulong,
) -> bindings::vm_fault_t {
    // SAFETY: `mm` is the faulting mm, alive during the fault.
    if let Some(this) = unsafe { AddressSpace::of(mm) } {
        this.collapse(addr / PAGE_SIZE);
    }
    0
}

// The hmadvise(2) system call.

/// The `hmadvise(2)` system call, also exported to drivers that move a range on the calling
/// process's request (`lib/test_gmem.c`'s MIGRATE_TO_SYS ioctl).
///
/// # Safety
///
/// Called in process context, with `start` untagged and none of the calling process's mm locks
/// held: from the `hmadvise` syscall entry (`mm/gmem/glue.c`) or a driver's system call.
#[export]
pub unsafe extern "C" fn gm_hmadvise(
    hnid: c_int,
    start: usize,
    len: usize,
    advice: c_int,
) -> c_long {
    match hmadvise(hnid, start, len, advice) {
        Ok(()) => 0,
        // Lossless: `c_long` is 64-bit wherever GMEM builds.
        Err(e) => e.to_errno() as c_long,
    }
}
