// SPDX-License-Identifier: GPL-2.0

//! Thrashing control: pages that bounce between the CPU and a device.
//!
//! A page bounces when the CPU takes it back from a device (a CPU fault copies it home).  The
//! logical page table counts the bounces of each page in the current window of time (three
//! bits and a window tag in the entry's flags, no memory of its own).  A page that bounced
//! [`threshold`] times in a window thrashes: until the window ends, a device fault on it does
//! not move it again.  A device that can map host memory maps it where it is, as with
//! `MADV_ACCESSED_BY`, so neither side faults on it any more.  A device that cannot still
//! moves the pages it faulted on (it has no other way to reach them: putting its fault to
//! sleep would only stall it, and the CPU cannot reach device memory), but density prefetch
//! leaves thrashing pages alone, so no fault moves more of them than it asked for.  When the
//! window ends the counts start again.
//!
//! Knobs and counters are in sysfs, `/sys/kernel/mm/gmem/thrashing/`: `threshold` (bounces in
//! a window; 0 turns the control off), `window_ms`, and how many thrashing pages device faults
//! mapped in place (`in_place`).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use kernel::{bindings, prelude::*};

/// Bounces in one window that make a page thrash; 0 (the default): off.  At most 7 (the entry
/// counts to 7).
static THRESHOLD: AtomicU32 = AtomicU32::new(0);
/// The length of a window, in milliseconds.
static WINDOW_MS: AtomicU32 = AtomicU32::new(1000);
/// Device faults that mapped a thrashing page in place.
static IN_PLACE: AtomicU64 = AtomicU64::new(0);

/// The bounces in one window that make a page thrash, 0 if thrashing control is off.
pub(crate) fn threshold() -> u8 {
    // Set only through `set_threshold`, which keeps it within a `u8`.
    THRESHOLD.load(Relaxed) as u8
}

/// Sets the threshold: `EINVAL` above 7.
pub(crate) fn set_threshold(bounces: u32) -> Result {
    if bounces > 7 {
        return Err(EINVAL);
    }
    THRESHOLD.store(bounces, Relaxed);
    Ok(())
}

/// The window length, in milliseconds.
pub(crate) fn window_ms() -> u32 {
    WINDOW_MS.load(Relaxed)
}

/// Sets the window length: `EINVAL` for 0 or more than an hour.
pub(crate) fn set_window_ms(ms: u32) -> Result {
    if ms == 0 || ms > 3_600_000 {
        return Err(EINVAL);
    }
    WINDOW_MS.store(ms, Relaxed);
    Ok(())
}

/// The number of the current window (it wraps; entries keep it modulo 16).
pub(crate) fn window() -> u32 {
    // SAFETY: `jiffies` is only ever read here; a torn read on 32-bit is harmless (a window
    // number off by one).
    let now = unsafe { core::ptr::read_volatile(&raw const bindings::jiffies) };
    // SAFETY: plain arithmetic.
    let ms = unsafe { bindings::jiffies64_to_msecs(now as u64) };
    // Truncated: windows are numbered modulo 2^32, and entries keep them modulo 16.
    (ms / u64::from(window_ms().max(1))) as u32
}

/// Counts a device fault that mapped `pages` thrashing pages in place.
pub(crate) fn mapped_in_place(pages: usize) {
    IN_PLACE.fetch_add(pages as u64, Relaxed);
}

/// The thrashing pages device faults mapped in place.
pub(crate) fn in_place() -> u64 {
    IN_PLACE.load(Relaxed)
}
