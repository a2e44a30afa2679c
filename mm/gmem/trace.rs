// SPDX-License-Identifier: GPL-2.0

//! Tracepoints: the events of `<trace/events/gmem.h>` (tracefs `events/gmem/`).
//!
//! Each function here emits one event when it is enabled, and costs one static branch when it
//! is not.  A node is a device's hnid, a NUMA node of host memory, or -1 for no page at all (a
//! zero fill, a parked page).  Errors are negative errnos, 0 for success.

use kernel::{
    ffi::{c_int, c_uint, c_ulong},
    prelude::*,
};

kernel::declare_trace! {
    /// # Safety
    ///
    /// Always safe to call.
    unsafe fn gmem_dev_fault(
        hnid: c_int,
        va: c_ulong,
        faults: c_uint,
        pages: c_uint,
        prefetched: c_uint,
        ret: c_int,
    );
    /// # Safety
    ///
    /// Always safe to call.
    unsafe fn gmem_cpu_fault(va: c_ulong, from: c_int, ret: c_int);
    /// # Safety
    ///
    /// Always safe to call.
    unsafe fn gmem_migrate(va: c_ulong, pages: c_uint, zeroed: c_uint, from: c_int, to: c_int);
    /// # Safety
    ///
    /// Always safe to call.
    unsafe fn gmem_prefetch(hnid: c_int, va: c_ulong, faulted: c_uint, pages: c_uint);
    /// # Safety
    ///
    /// Always safe to call.
    unsafe fn gmem_evict(hnid: c_int, wanted: c_uint, evicted: c_uint, ret: c_int);
    /// # Safety
    ///
    /// Always safe to call.
    unsafe fn gmem_thrashing(hnid: c_int, va: c_ulong, pages: c_uint, in_place: c_int);
    /// # Safety
    ///
    /// Always safe to call.
    unsafe fn gmem_copy(hnid: c_int, va: c_ulong, pages: c_uint, made: c_int);
    /// # Safety
    ///
    /// Always safe to call.
    unsafe fn gmem_map_in_place(hnid: c_int, va: c_ulong, pages: c_uint, writable: c_int);
    /// # Safety
    ///
    /// Always safe to call.
    unsafe fn gmem_device_unmap(hnid: c_int, va: c_ulong, len: c_ulong);
    /// # Safety
    ///
    /// Always safe to call.
    unsafe fn gmem_invalidate(start: c_ulong, end: c_ulong, event: c_int);
}

/// `-1`: no node (a zero fill, a parked page).
pub(crate) const NO_NODE: i32 = -1;

/// A count for an event's `unsigned int` field (saturated: batches are far smaller).
fn count(n: usize) -> c_uint {
    c_uint::try_from(n).unwrap_or(c_uint::MAX)
}

/// The errno of `r`, 0 for success.
fn errno<T>(r: &Result<T>) -> c_int {
    r.as_ref().map_or_else(|e| e.to_errno(), |_| 0)
}

/// A batch of `faults` device faults of device `hnid` was served: `pages` distinct pages from
/// `va` up, and `prefetched` more; `ret` is the first error in address order.
pub(crate) fn dev_fault(
    hnid: u16,
    va: usize,
    faults: usize,
    pages: usize,
    prefetched: usize,
    ret: &Result,
) {
    // SAFETY: always safe to call.
    unsafe {
        gmem_dev_fault(
            hnid.into(),
            va,
            count(faults),
            count(pages),
            count(prefetched),
            errno(ret),
        )
    }
}

/// The CPU faulted on the page at `va`, which was on device `from` (or parked, [`NO_NODE`]).
pub(crate) fn cpu_fault(va: usize, from: i32, ret: &Result) {
    // SAFETY: always safe to call.
    unsafe { gmem_cpu_fault(va, from, errno(ret)) }
}

/// A run of `pages` pages at `va` moved from node `from` to node `to`, `zeroed` of them as
/// zero fills.
pub(crate) fn migrate(va: usize, pages: usize, zeroed: usize, from: i32, to: i32) {
    // SAFETY: always safe to call.
    unsafe { gmem_migrate(va, count(pages), count(zeroed), from, to) }
}

/// Density prefetch moved `pages` pages of the block at `va` beside its `faulted` faulting
/// pages to device `hnid`.
pub(crate) fn prefetch(hnid: u16, va: usize, faulted: usize, pages: usize) {
    // SAFETY: always safe to call.
    unsafe { gmem_prefetch(hnid.into(), va, count(faulted), count(pages)) }
}

/// An eviction from device `hnid` asked for `wanted` pages and freed `evicted`.
pub(crate) fn evict(hnid: u16, wanted: usize, evicted: usize, ret: &Result<usize>) {
    // SAFETY: always safe to call.
    unsafe { gmem_evict(hnid.into(), count(wanted), count(evicted), errno(ret)) }
}

/// A fault of device `hnid` found `pages` thrashing pages in the block at `va`, and mapped them
/// `in_place`, or moved them as before (`in_place` false: the device cannot map host memory).
pub(crate) fn thrashing(hnid: u16, va: usize, pages: usize, in_place: bool) {
    // SAFETY: always safe to call.
    unsafe { gmem_thrashing(hnid.into(), va, count(pages), in_place.into()) }
}

/// `pages` read-only copies from `va` on were made on device `hnid` (`made`), or dropped.
pub(crate) fn copy(hnid: u16, va: usize, pages: usize, made: bool) {
    // SAFETY: always safe to call.
    unsafe { gmem_copy(hnid.into(), va, count(pages), made.into()) }
}

/// Device `hnid` mapped `pages` host pages from `va` on where they are.
pub(crate) fn map_in_place(hnid: u16, va: usize, pages: usize, writable: bool) {
    // SAFETY: always safe to call.
    unsafe { gmem_map_in_place(hnid.into(), va, count(pages), writable.into()) }
}

/// Device `hnid`'s mappings of `len` bytes at `va` were removed.
pub(crate) fn device_unmap(hnid: u16, va: usize, len: usize) {
    // SAFETY: always safe to call.
    unsafe { gmem_device_unmap(hnid.into(), va, len) }
}

/// An MMU notifier invalidation of `start..end`, for `event`.
pub(crate) fn invalidate(start: usize, end: usize, event: u32) {
    // SAFETY: always safe to call.
    unsafe { gmem_invalidate(start, end, event as c_int) }
}
