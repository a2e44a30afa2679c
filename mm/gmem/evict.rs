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
//! Lock order: the device memory's spinlock, then the owner's device list lock, then the
//! context's hold list and the owner's logical page table lock (all taken only to claim the
//! victim).

use crate::{
    address_space::AddressSpace,
    device::{Device, DeviceOps, Stats},
    devmem::Victim,
    lpt::{DevicePage, ParkedPage, Residency},
};
use kernel::{
    alloc::KVec,
    page::{Page, PAGE_SIZE},
    prelude::*,
    sync::Arc,
};

/// Pages evicted at once when a device is full: the free reserve the next faults use.
pub(crate) const EVICT_BATCH: usize = 16;

/// A page claimed for eviction.
struct Claimed {
    victim: Victim,
    ctx: Arc<dyn DeviceOps>,
    host: Page,
}

/// Evicts up to `count` cold pages of `dev` to host memory, as one batch: the pages are
/// claimed, their device mappings removed with one TLB invalidation per context, then copied
/// out.  Returns how many went; `ENOMEM` if none could.
pub(crate) fn evict(dev: &Device, count: usize) -> Result<usize> {
    let memory = dev.memory().ok_or(ENOMEM)?;
    let mut batch = KVec::with_capacity(count, GFP_KERNEL)?;
    while batch.len() < count {
        // Allocated before any lock: this may reclaim.
        let host = Page::alloc_page(GFP_KERNEL)?;
        let mut holder: Option<Arc<dyn DeviceOps>> = None;
        let Some(victim) = memory.pick_victim(|v| {
            // SAFETY: `v.space` holds an allocated page of this device: an address space
            // frees its device pages (taking the device memory lock, which we hold) before it
            // goes, and waits for evictions it is part of (`begin_move`).
            let this = unsafe { &*(v.space as *const AddressSpace) };
            let page = DevicePage {
                dev: dev.id,
                pfn: v.pfn,
            };
            holder = this.devices.get_if(dev.id, |ctx| {
                !ctx.held(v.vpn * PAGE_SIZE) && this.begin_move(v.vpn, Residency::Device(page))
            });
            holder.is_some()
        }) else {
            break;
        };
        let Some(ctx) = holder else {
            break;
        };
        // Cannot fail: the capacity is there.
        batch.push(Claimed { victim, ctx, host }, GFP_KERNEL)?;
    }
    if batch.is_empty() {
        return Err(ENOMEM);
    }
    // One TLB invalidation per run of pages of one context (usually the whole batch).
    let mut start = 0;
    while start < batch.len() {
        let ctx = &batch[start].ctx;
        let len = batch[start..]
            .iter()
            .take_while(|c| Arc::ptr_eq(&c.ctx, ctx))
            .count();
        let mut pages = KVec::with_capacity(len, GFP_KERNEL)?;
        for c in &batch[start..start + len] {
            let page = DevicePage {
                dev: dev.id,
                pfn: c.victim.pfn,
            };
            pages.push((c.victim.vpn * PAGE_SIZE, page), GFP_KERNEL)?;
        }
        ctx.unmap_many(&pages);
        start += len;
    }
    let mut done = 0;
    for c in batch {
        if finish(dev, c).is_ok() {
            done += 1;
        }
    }
    if done == 0 {
        return Err(ENOMEM);
    }
    Ok(done)
}

/// Copies a claimed, unmapped page out and parks it (or gives it back if the copy fails).
fn finish(dev: &Device, c: Claimed) -> Result {
    let Claimed { victim, ctx, host } = c;
    // SAFETY: `begin_move` keeps the address space until `move_done` below.
    let this = unsafe { &*(victim.space as *const AddressSpace) };
    let page = DevicePage {
        dev: dev.id,
        pfn: victim.pfn,
    };
    let va = victim.vpn * PAGE_SIZE;
    let (now, result) = match ctx.copy_to_host(page, &host) {
        Ok(()) => {
            ctx.free(page);
            Stats::inc(&dev.stats.evictions);
            (Residency::Parked(ParkedPage::new(host).into_raw()), Ok(()))
        }
        Err(e) => {
            if let Some(memory) = dev.memory() {
                memory.unpick(victim.pfn);
            }
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
