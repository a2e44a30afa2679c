// SPDX-License-Identifier: GPL-2.0

//! Eviction: making room in a full device's memory.
//!
//! When a device allocation finds the device's memory full (or at the limit an administrator
//! set in sysfs), the allocating path evicts a batch of pages to host memory and retries.  The
//! batch is the free reserve: the faults that follow find free pages without waiting.
//!
//! The victim is chosen by the clock of [`crate::devmem::DeviceMemory::pick_victim`]: a page
//! mapped since the hand last passed gets a second chance; a page whose entry is busy (a fault
//! or another move is using it) or that a running job holds (`gm_context_hold()`) is never
//! taken.  Eviction copies the page into a host page and
//! *parks* it in the logical page table ([`Residency::Parked`]): no mm lock is needed, so any
//! path may evict pages of any process.  The next access from the CPU or a device moves the
//! parked page where it is needed.
//!
//! Lock order: the device memory's spinlock, then the owner's logical page table lock, then
//! its device list lock (all taken only to claim the victim).

use crate::{
    address_space::AddressSpace,
    device::{Device, DeviceOps, Stats},
    lpt::{DevicePage, ParkedPage, Residency},
};
use kernel::{
    page::{Page, PAGE_SIZE},
    prelude::*,
    sync::Arc,
};

/// Pages evicted at once when a device is full: the free reserve the next faults use.
pub(crate) const EVICT_BATCH: usize = 16;

/// Evicts up to `count` cold pages of `dev` to host memory.  Returns how many went; `ENOMEM`
/// if none could.
pub(crate) fn evict(dev: &Device, count: usize) -> Result<usize> {
    let mut done = 0;
    while done < count {
        match evict_one(dev) {
            Ok(()) => done += 1,
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}

/// Evicts one page of `dev`.
fn evict_one(dev: &Device) -> Result {
    let memory = dev.memory().ok_or(ENOMEM)?;
    // Allocated before any lock: this may reclaim.
    let host = Page::alloc_page(GFP_KERNEL)?;
    let mut holder: Option<Arc<dyn DeviceOps>> = None;
    let victim = memory
        .pick_victim(|v| {
            // SAFETY: `v.space` holds an allocated page of this device: an address space
            // frees its device pages (taking the device memory lock, which we hold) before it
            // goes, and waits for evictions it is part of (`begin_move`).
            let this = unsafe { &*(v.space as *const AddressSpace) };
            let page = DevicePage {
                dev: dev.id,
                pfn: v.pfn,
            };
            let Some(ctx) = this.devices.get(dev.id) else {
                return false;
            };
            if ctx.held(v.vpn * PAGE_SIZE) {
                return false;
            }
            if !this.begin_move(v.vpn, Residency::Device(page)) {
                return false;
            }
            holder = Some(ctx);
            true
        })
        .ok_or(ENOMEM)?;
    let ctx = holder.ok_or(ENOMEM)?;
    // SAFETY: as above; `begin_move` keeps the address space until `end_move`.
    let this = unsafe { &*(victim.space as *const AddressSpace) };
    let page = DevicePage {
        dev: dev.id,
        pfn: victim.pfn,
    };
    let va = victim.vpn * PAGE_SIZE;
    let (now, result) = match ctx.move_home(va, page, &host) {
        Ok(()) => {
            Stats::inc(&dev.stats.evictions);
            (Residency::Parked(ParkedPage::new(host).into_raw()), Ok(()))
        }
        Err(e) => {
            memory.unpick(victim.pfn);
            (Residency::Device(page), Err(e))
        }
    };
    if !this.end_move(victim.vpn, now) {
        // The range was unmapped meanwhile: what we hold is nobody's.
        match now {
            // SAFETY: the parked page was never recorded: it is ours.
            Residency::Parked(raw) => drop(unsafe { ParkedPage::from_raw(raw) }),
            Residency::Device(page) => {
                ctx.unmap(va, page);
                ctx.free(page);
            }
            _ => {}
        }
    }
    // From here on the address space may go.
    this.move_done();
    result
}
