// SPDX-License-Identifier: GPL-2.0

//! Migration in chunks: moving up to 2 MiB of a range between host and device memory at once.
//!
//! A device fault over a range (`gm_dev_fault_range()`, `hmadvise(MADV_PREFETCH)` to a device)
//! and a prefetch back to host memory move pages [`CHUNK_PAGES`] at a time (2 MiB, aligned),
//! so that the costs that do not depend on the amount of data are paid once per chunk: one
//! CPU TLB flush per run of host pages leaving the CPU page table, one driver call
//! (`peer_map`, `peer_unmap`) and so one device TLB invalidation per run of consecutive pages,
//! one look at the logical page table and one notifier-sequence check for the whole chunk.
//!
//! [`to_device`] takes the pages of a chunk that live in host memory or nowhere yet (the common
//! case: data the CPU wrote, or untouched memory).  Pages already on the device, on another
//! device, parked after an eviction, or busy go through the per-page path of `crate::fault`,
//! which handles every case.
//!
//! [`park_run_home`] is the way back for a prefetch to a host node: a run of a device's pages
//! is unmapped and copied out with one `peer_unmap`, and the copies are mapped in the CPU page
//! table with [`map_home`], one page table lock per page table: they are ordinary anonymous
//! pages from then on (on the LRU, swappable, in RSS).  Without the mmap lock (the KUnit
//! tests), or if a page table cannot be allocated, the copies are parked in the logical page
//! table instead, and the CPU fault that follows installs them without calling the device.

use crate::{
    address_space::{AddressSpace, NOTIFIER_SHIFT},
    device::DeviceOps,
    lpt::{Claim, DeviceId, DevicePage, LogicalPageTable, ParkedPage, Residency},
    trace,
};
use core::ptr::{self, NonNull};
use kernel::ffi::c_void;
use kernel::{
    bindings,
    error::to_result,
    ffi::{c_uint, c_ulong},
    mm::{
        virt::{flags, VmaRef},
        MmWithUser, MmapReadGuard,
    },
    page::{BorrowedPage, Page, PAGE_SIZE},
    prelude::*,
};

/// Pages moved at once: 2 MiB.
pub(crate) const CHUNK_PAGES: usize = 512;

// A chunk lies in one notifier window: one sequence check covers it.
const _: () = assert!((1 << NOTIFIER_SHIFT) % (CHUNK_PAGES * PAGE_SIZE) == 0);

/// A host page pinned with `pin_user_pages_remote()`, unpinned on drop.
pub(crate) struct PinnedPage(BorrowedPage<'static>);

impl PinnedPage {
    /// Pins the host page mapped at `va`.  Without `fault`, a page that is not present (not yet
    /// touched, or swapped out) gives `None`; with it, the page is faulted in first.
    pub(crate) fn get(mm: &MmWithUser, va: usize, fault: bool) -> Result<Option<Self>> {
        let flags = if fault { 0 } else { bindings::FOLL_NOFAULT };
        Self::get_flags(mm, va, flags, fault)
    }

    /// Pins the host page mapped at `va`, faulting it in first (for writing, if `write`: a
    /// copy-on-write page is copied).
    pub(crate) fn fault_in(mm: &MmWithUser, va: usize, write: bool) -> Result<Self> {
        let flags = if write { bindings::FOLL_WRITE } else { 0 };
        Self::get_flags(mm, va, flags, true)?.ok_or(EFAULT)
    }

    fn get_flags(mm: &MmWithUser, va: usize, flags: u32, fault: bool) -> Result<Option<Self>> {
        let mut page: *mut bindings::page = core::ptr::null_mut();
        // SAFETY: the caller holds the mmap lock (it has a VMA of `mm`); `page` has room for
        // the one page asked for; a NULL `locked` means the lock is never dropped.
        let n = unsafe {
            bindings::pin_user_pages_remote(
                mm.as_raw(),
                va as c_ulong,
                1,
                flags as c_uint,
                &mut page,
                core::ptr::null_mut(),
            )
        };
        match NonNull::new(page) {
            // SAFETY: the page is pinned until `drop` unpins it.
            Some(page) if n == 1 => Ok(Some(Self(unsafe { BorrowedPage::from_raw(page) }))),
            _ if fault && n < 0 => Err(Error::from_errno(n as i32)),
            _ if fault => Err(EFAULT),
            _ => Ok(None),
        }
    }

    /// Pins the present host pages mapped from `va` on (mapped writable, if `write`), at most
    /// `max` and at most `out`'s spare capacity, into `out`; stops at the first page that is
    /// not.  Returns how many it pinned.
    fn get_run(mm: &MmWithUser, va: usize, write: bool, out: &mut KVec<Self>, max: usize) -> usize {
        let mut pages = [core::ptr::null_mut::<bindings::page>(); 64];
        let want = max.min(pages.len()).min(out.capacity() - out.len());
        let flags = bindings::FOLL_NOFAULT | if write { bindings::FOLL_WRITE } else { 0 };
        // SAFETY: as in `get`; `pages` has room for `want` pages.
        let n = unsafe {
            bindings::pin_user_pages_remote(
                mm.as_raw(),
                va as c_ulong,
                want as c_ulong,
                flags as c_uint,
                pages.as_mut_ptr(),
                core::ptr::null_mut(),
            )
        };
        let n = usize::try_from(n).unwrap_or(0);
        for &page in &pages[..n] {
            // SAFETY: `pin_user_pages_remote` filled the first `n` entries with pinned pages,
            // unpinned by `drop`.
            let pinned = Self(unsafe { BorrowedPage::from_raw(NonNull::new_unchecked(page)) });
            // Cannot fail: `want` is within the spare capacity.
            let _ = out.push_within_capacity(pinned);
        }
        n
    }

    fn as_ptr(&self) -> *mut bindings::page {
        self.0.as_ptr()
    }

    /// Whether the CPU maps the page at `va` writable (present, and no write fault needed).
    /// Never faults.
    pub(crate) fn writable(mm: &MmWithUser, va: usize) -> bool {
        let flags = bindings::FOLL_WRITE | bindings::FOLL_NOFAULT;
        matches!(Self::get_flags(mm, va, flags, false), Ok(Some(_)))
    }

    /// Whether this is still the page mapped at `va` (present; a page that is not present
    /// counts as another).  Never faults, so it may be asked with the page's entry claimed.
    pub(crate) fn still_mapped(&self, mm: &MmWithUser, va: usize) -> bool {
        matches!(Self::get(mm, va, false), Ok(Some(now)) if now.as_ptr() == self.as_ptr())
    }

    /// The pinned page.
    pub(crate) fn page(&self) -> &Page {
        &self.0
    }
}

impl Drop for PinnedPage {
    fn drop(&mut self) {
        // SAFETY: the page was pinned once by `get` or `get_run`.
        unsafe { bindings::unpin_user_page(self.0.as_ptr()) };
    }
}

/// One page of a chunk moving to a device.
struct Slot {
    vpn: usize,
    /// The entry as it was looked at (`None`: no entry).
    seen: Option<Residency>,
    /// The host page, for a page present in the CPU page table.
    host: Option<PinnedPage>,
    /// The device page allocated for it.
    pfn: Option<u64>,
    /// The entry's claim, while the page moves.
    claim: Option<Claim>,
    /// Whether the page moved and was recorded on the device.
    done: bool,
    /// The claim of the entry of a read-only copy being made ([`copy_run`]).
    copy: Option<Claim>,
    /// How many copies the page had when it was claimed ([`copy_run`]).
    held: usize,
}

impl Slot {
    fn new(vpn: usize, seen: Option<Residency>) -> Self {
        Self {
            vpn,
            seen,
            host: None,
            pfn: None,
            claim: None,
            done: false,
            copy: None,
            held: 0,
        }
    }
}

/// The first run of consecutive pages among `slots[from..]` that `pick` picks: (first index,
/// length).
fn next_run(slots: &[Slot], from: usize, pick: impl Fn(&Slot) -> bool) -> Option<(usize, usize)> {
    let i = from + slots.get(from..)?.iter().position(&pick)?;
    let len = slots[i..]
        .iter()
        .enumerate()
        .take_while(|(k, s)| pick(s) && s.vpn == slots[i].vpn + k)
        .count();
    Some((i, len))
}

/// The moves of `run` (its device pages, and host pages where there are some) into `moves`,
/// which has room for them.
fn fill_moves(run: &[Slot], moves: &mut KVec<bindings::gm_move>) {
    moves.clear();
    for s in run {
        // Cannot fail: the caller made room for every slot.
        let _ = moves.push_within_capacity(bindings::gm_move {
            pfn: s.pfn.unwrap_or(0),
            page: s.host.as_ref().map_or(ptr::null_mut(), |p| p.as_ptr()),
        });
    }
}

/// Calls `f` on every run of [`next_run`].
fn for_each_run(slots: &[Slot], pick: impl Fn(&Slot) -> bool, mut f: impl FnMut(usize, usize)) {
    let mut at = 0;
    while let Some((i, len)) = next_run(slots, at, &pick) {
        f(i, len);
        at = i + len;
    }
}

/// The pages `first..first + n` of a chunk whose entries `take` accepts (what it sees: `None`
/// for no entry, else the residency and whether the entry is claimed), as slots; the others
/// are left to the per-page way.  Both vectors have room for the whole chunk.
fn chunk_slots(
    this: &AddressSpace,
    first: usize,
    n: usize,
    take: impl Fn(Option<(Residency, bool)>) -> bool,
) -> Result<(KVec<Slot>, KVec<usize>)> {
    let mut slots: KVec<Slot> = KVec::with_capacity(n, GFP_KERNEL)?;
    let mut slow: KVec<usize> = KVec::with_capacity(n, GFP_KERNEL)?;
    let guard = this.lpt.lock();
    for vpn in first..first + n {
        let seen = guard.get(vpn).map(|m| (m.residency(), m.busy()));
        let pushed = if take(seen) {
            slots
                .push_within_capacity(Slot::new(vpn, seen.map(|(r, _)| r)))
                .is_ok()
        } else {
            slow.push_within_capacity(vpn).is_ok()
        };
        // Cannot fail: both have room for the whole chunk.
        debug_assert!(pushed);
    }
    Ok((slots, slow))
}

/// [`chunk_slots`] of the pages in host memory and not claimed, for a copy or an in-place
/// mapping.  A page a forked child has from its parent has no entry: it is one too.
fn host_slots(this: &AddressSpace, first: usize, n: usize) -> Result<(KVec<Slot>, KVec<usize>)> {
    chunk_slots(this, first, n, |seen| {
        matches!(seen, None | Some((Residency::Host, false)))
    })
}

/// [`host_slots`] without the pages that have a read-only copy on device `dev`, which are
/// left to the per-page way.
fn uncopied_host_slots(
    this: &AddressSpace,
    first: usize,
    n: usize,
    dev: DeviceId,
) -> Result<(KVec<Slot>, KVec<usize>)> {
    let (mut slots, mut slow) = host_slots(this, first, n)?;
    let here = this.lpt.copies_on(first, n, dev);
    slots.retain(|s| {
        let i = s.vpn - first;
        let copied = here[i / 64] & (1 << (i % 64)) != 0;
        if copied {
            // Cannot fail: `slow` has room for the whole chunk.
            let _ = slow.push_within_capacity(s.vpn);
        }
        !copied
    });
    Ok((slots, slow))
}

/// Pins the present host pages of `slots` (mapped writable, if `write`), a run at a time;
/// `missing(slot)` is called for each page that is not.
fn pin_slots(
    mm: &MmWithUser,
    slots: &mut [Slot],
    write: bool,
    mut missing: impl FnMut(&mut Slot) -> Result,
) -> Result {
    let mut pinned: KVec<PinnedPage> = KVec::with_capacity(slots.len(), GFP_KERNEL)?;
    let mut i = 0;
    while i < slots.len() {
        let run = slots[i..]
            .iter()
            .enumerate()
            .take_while(|(k, s)| s.vpn == slots[i].vpn + k)
            .count();
        let got = PinnedPage::get_run(mm, slots[i].vpn * PAGE_SIZE, write, &mut pinned, run);
        for (k, page) in pinned.drain_all().enumerate() {
            slots[i + k].host = Some(page);
        }
        i += got;
        // `get_run` pins at most 64 pages at a time.
        if got < 64.min(run) {
            missing(&mut slots[i])?;
            i += 1;
        }
    }
    Ok(())
}

/// Moves the chunk of `n` pages at `start` (all in `vma`) to the context's device and maps them
/// there with `prot`.  Returns how many pages moved, and the pages it left to the per-page
/// path (`crate::fault`), in address order: pages on a device or parked, busy pages, and pages
/// an invalidation raced with.
///
/// Every other page of the chunk is resident and mapped on the device when this returns `Ok`.
/// On an error, every entry this claimed is released again.
pub(crate) fn to_device(
    this: &AddressSpace,
    mm: &MmWithUser,
    ctx: &dyn DeviceOps,
    vma: &VmaRef,
    start: usize,
    n: usize,
    prot: c_uint,
) -> Result<(usize, KVec<usize>)> {
    let first = start / PAGE_SIZE;
    // A chunk lies in one window (both are aligned, and a window is a whole number of chunks).
    let window = this.window(start)?;
    let (mut slots, mut slow) = chunk_slots(this, first, n, |seen| {
        matches!(
            seen,
            None | Some((Residency::Host | Residency::Nowhere, false))
        )
    })?;

    // Pin the present host pages, a run at a time.  A page that is not present has no data
    // unless the CPU touched it (it may be swapped out) or the process was forked: those are
    // faulted in.  An invalidation from here to the claims means that a pinned page may no
    // longer be the page mapped (see `claim_since`).
    let pinned_at = window.read_begin();
    pin_slots(mm, &mut slots, false, |s| {
        let maybe_host = matches!(s.seen, Some(Residency::Host)) || this.inherited();
        if maybe_host {
            s.host = PinnedPage::get(mm, s.vpn * PAGE_SIZE, true)?;
            // After the fault-in a present page has a `Host` entry.
            if s.host.is_some() && s.seen.is_none() {
                s.seen = this.lpt.residency(s.vpn);
            }
        }
        Ok(())
    })?;

    // `moves` is allocated first: an error after the device pages would leak them.
    let mut moves = KVec::with_capacity(slots.len(), GFP_KERNEL)?;
    // Device pages, before any claim: allocating may evict (and sleep).  What does not fit
    // goes the per-page way, which evicts the pages this chunk placed.
    for (k, s) in slots.iter_mut().enumerate() {
        match ctx.alloc_page() {
            Ok(pfn) => s.pfn = Some(pfn),
            Err(e) if k == 0 => return Err(e),
            Err(_) => break,
        }
    }

    // From the first claim on, nothing returns before every claimed entry is released:
    // `slow` (capacity `n`) takes each page at most once more.
    let mut result = Ok(());
    for s in slots.iter_mut() {
        s.claim = match s.pfn {
            Some(_) => {
                let still_mapped = || {
                    s.host
                        .as_ref()
                        .is_none_or(|h| h.still_mapped(mm, s.vpn * PAGE_SIZE))
                };
                this.claim_since(s.vpn, s.seen, &pinned_at, still_mapped)
                    .ok()
                    .flatten()
            }
            None => None,
        };
        if s.claim.is_none() {
            // No device page, or someone else got there first (or no memory for the entry):
            // one by one.
            if let Some(pfn) = s.pfn.take() {
                ctx.free(DevicePage { dev: ctx.id(), pfn });
            }
            s.host = None;
            let _ = slow.push_within_capacity(s.vpn);
        }
    }

    // From here on a CPU access faults and sleeps until the page is on the device; the pins
    // keep the pages for the copy.  One zap (one TLB flush) per run.
    for_each_run(
        &slots,
        |s| s.claim.is_some() && s.host.is_some(),
        |i, len| vma.zap_vma_range(slots[i].vpn * PAGE_SIZE, len * PAGE_SIZE),
    );
    let seq = window.read_begin();
    let mut at = 0;
    while let Some((i, len)) = next_run(&slots, at, |s| s.claim.is_some()) {
        at = i + len;
        fill_moves(&slots[i..i + len], &mut moves);
        if let Err(e) = ctx.place_run(slots[i].vpn * PAGE_SIZE, &moves, prot) {
            // The device failed: the data stays in the host pages, parked.
            for s in &mut slots[i..i + len] {
                if let Some(pfn) = s.pfn.take() {
                    ctx.free(DevicePage { dev: ctx.id(), pfn });
                }
                if let Some(claim) = s.claim.take() {
                    let now = host_after_failure(s.host.as_ref().map(PinnedPage::page));
                    end_failed(this, claim, s.vpn * PAGE_SIZE, now);
                }
            }
            result = Err(e);
        }
    }
    // The copies are done.
    for s in slots.iter_mut() {
        s.host = None;
    }

    // Record the device pages, with one notifier check for the chunk.
    let space = core::ptr::from_ref(this) as usize;
    for s in slots.iter().filter(|s| s.claim.is_some()) {
        if let Some(pfn) = s.pfn {
            let page = DevicePage { dev: ctx.id(), pfn };
            ctx.moved(page, space, s.vpn);
        }
    }
    let mut moved = 0;
    let changed = {
        let mut guard = this.lpt.lock();
        for s in slots.iter_mut() {
            let (Some(claim), Some(pfn)) = (s.claim.take(), s.pfn) else {
                continue;
            };
            let page = DevicePage { dev: ctx.id(), pfn };
            // Dropped meanwhile: nobody else knows the page (freed below).
            s.done = LogicalPageTable::end_claim_locked(&mut guard, claim, Residency::Device(page));
            moved += usize::from(s.done);
        }
        this.changed(&guard, &seq)
    };
    this.lpt.wake();
    for s in slots.iter_mut().filter(|s| !s.done) {
        if let Some(pfn) = s.pfn.take() {
            ctx.unmap_va(s.vpn * PAGE_SIZE, PAGE_SIZE);
            ctx.free(DevicePage { dev: ctx.id(), pfn });
        }
    }
    if changed {
        // An invalidation ran meanwhile: the pages are on the device, but their mappings may
        // be stale.  Remove them and map the pages again one by one.
        for_each_run(
            &slots,
            |s| s.done,
            |i, len| ctx.unmap_va(slots[i].vpn * PAGE_SIZE, len * PAGE_SIZE),
        );
    }
    result?;
    if changed {
        for s in slots.iter().filter(|s| s.done) {
            slow.push(s.vpn, GFP_KERNEL)?;
        }
    }
    slow.sort_unstable();
    Ok((moved, slow))
}

/// Maps the host pages of the `n` pages at `start` (all in `vma`, in one chunk) in place on the
/// context's device with `prot` (`MADV_ACCESSED_BY`, or pages that thrash): one pin of the
/// present pages (mapped writable, for a writable mapping) and one notifier check for the
/// chunk, the pages staying pinned until then; nothing is claimed, as in
/// [`crate::fault::map_in_place`].  Returns how many pages
/// it mapped, and the pages it left to the per-page way, in address order: pages that are not
/// present (or not writable), on a device, parked or claimed, for a read-only mapping those
/// with a read-only copy on this device, those the device found no room for, and every page
/// if an invalidation raced with it (their mappings are removed again).
pub(crate) fn map_run_in_place(
    this: &AddressSpace,
    mm: &MmWithUser,
    ctx: &dyn DeviceOps,
    start: usize,
    n: usize,
    prot: c_uint,
) -> Result<(usize, KVec<usize>)> {
    let first = start / PAGE_SIZE;
    let window = this.window(start)?;
    let writable = prot & bindings::GM_PROT_WRITE != 0;
    // A page the device has a read-only copy of is read through the copy: mapping the host
    // page over it would replace a mapping the device's TLB may cache (and leave the copy
    // recorded but unmapped).  Those go the per-page way, which maps the copy again.  A write
    // drops the copies (pinning for a write faults on the CPU's read-only mapping).
    let (mut slots, mut slow) = if writable {
        host_slots(this, first, n)?
    } else {
        uncopied_host_slots(this, first, n, ctx.id())?
    };
    // Recorded before any mapping is made: an invalidation after `read_begin` removes them.
    this.mapping_in_place(ctx.id());
    let seq = window.read_begin();
    pin_slots(mm, &mut slots, writable, |_| Ok(()))?;
    // Checked, then mapped, under the lock invalidations take (see `map_in_place_since`).
    let mapped = this
        .map_in_place_since(&seq, || {
            let mut mapped = 0;
            for s in slots.iter_mut() {
                let Some(host) = &s.host else {
                    continue;
                };
                // No room (the device's window on host memory is full): the rest go the
                // per-page way, which moves the pages that faulted instead.
                if ctx.map_host(s.vpn * PAGE_SIZE, host.page(), prot).is_err() {
                    break;
                }
                s.done = true;
                mapped += 1;
            }
            mapped
        })
        .unwrap_or(0);
    for_each_run(
        &slots,
        |s| s.done,
        |i, len| trace::map_in_place(ctx.id(), slots[i].vpn * PAGE_SIZE, len, writable),
    );
    // The device holds no reference to the pages: they stay pinned until they are mapped,
    // and the CPU page table's reference keeps them afterwards (an invalidation removes the
    // device's mappings before the CPU's goes).
    for s in slots.iter_mut() {
        s.host = None;
    }
    for s in slots.iter().filter(|s| !s.done) {
        // Cannot fail: `slow` has room for the whole chunk.
        let _ = slow.push_within_capacity(s.vpn);
    }
    slow.sort_unstable();
    Ok((mapped, slow))
}

/// Write-protects the CPU's mappings of `len` bytes at `va` in `vma`: their next write faults,
/// and drops the pages' read-only copies first (`gm_cpu_write_collapse()`).
pub(crate) fn write_protect(vma: &VmaRef, va: usize, len: usize) {
    // SAFETY: the caller holds the mmap lock (it has `vma`), as `gm_wrprotect_range()` needs;
    // the range is within `vma`.
    unsafe { bindings::gm_wrprotect_range(vma.as_ptr(), va as c_ulong, (va + len) as c_ulong) };
}

/// Gives the context's device read-only copies of the `n` read-mostly pages of one chunk at
/// `start` (all in `vma`) and maps them there, the pages staying in host memory (see
/// "Read-only copies" in `crate::lpt`, and `crate::fault::read_copy`, the per-page way): one
/// pin, one write protection and one device call per run of pages, one notifier check for the
/// chunk.  Returns how many pages were copied, and the pages left to the per-page way, in
/// address order: pages not present in host memory, on a device, parked or busy, pages with a
/// claimed copy or a copy on this device already, and pages an invalidation raced with.
pub(crate) fn copy_run(
    this: &AddressSpace,
    mm: &MmWithUser,
    ctx: &dyn DeviceOps,
    vma: &VmaRef,
    start: usize,
    n: usize,
) -> Result<(usize, KVec<usize>)> {
    let first = start / PAGE_SIZE;
    let window = this.window(start)?;
    let dev = ctx.id();
    // A page with a copy here already is mapped again the per-page way.
    let (mut slots, mut slow) = uncopied_host_slots(this, first, n, dev)?;
    // Pin the present host pages; the others go the per-page way, which faults them in.
    let pinned_at = window.read_begin();
    pin_slots(mm, &mut slots, false, |_| Ok(()))?;
    let mut moves = KVec::with_capacity(slots.len(), GFP_KERNEL)?;
    // Device pages, before any claim (allocating may evict and sleep).
    for s in slots.iter_mut().filter(|s| s.host.is_some()) {
        match ctx.alloc_page() {
            Ok(pfn) => s.pfn = Some(pfn),
            Err(_) => break,
        }
    }

    // The page's claim, then a claimed entry for its copy.  Copies that are not claimed have
    // lived through no invalidation, so the CPU maps the page read-only; a claimed one may
    // have (its holder drops it): such a page goes the per-page way, which waits.
    for s in slots.iter_mut() {
        if s.pfn.is_some() {
            let still_mapped = || {
                s.host
                    .as_ref()
                    .is_some_and(|h| h.still_mapped(mm, s.vpn * PAGE_SIZE))
            };
            if let Some(home) = this
                .claim_since(s.vpn, s.seen, &pinned_at, still_mapped)
                .ok()
                .flatten()
            {
                if let Ok(Some((copy, held))) = this.lpt.claim_new_copy(s.vpn, dev) {
                    (s.claim, s.copy, s.held) = (Some(home), Some(copy), held);
                } else {
                    this.lpt.end_claim(home, Residency::Host);
                }
            }
        }
        if s.copy.is_none() {
            if let Some(pfn) = s.pfn.take() {
                ctx.free(DevicePage { dev, pfn });
            }
            s.host = None;
            // Cannot fail: `slow` has room for the whole chunk.
            let _ = slow.push_within_capacity(s.vpn);
        }
    }

    // The first copy of a page write-protects it: one protection change per run.
    for_each_run(
        &slots,
        |s| s.copy.is_some() && s.held == 0,
        |i, len| write_protect(vma, slots[i].vpn * PAGE_SIZE, len * PAGE_SIZE),
    );
    let seq = window.read_begin();
    let mut result = Ok(());
    let mut at = 0;
    while let Some((i, len)) = next_run(&slots, at, |s| s.copy.is_some()) {
        at = i + len;
        fill_moves(&slots[i..i + len], &mut moves);
        if let Err(e) = ctx.place_run(slots[i].vpn * PAGE_SIZE, &moves, bindings::GM_PROT_READ) {
            // Nothing of the run is mapped: its copies go, and their pages stay home.
            for s in &mut slots[i..i + len] {
                if let Some(copy) = s.copy.take() {
                    this.lpt.erase_claimed(copy);
                }
                if let Some(home) = s.claim.take() {
                    this.lpt.end_claim(home, Residency::Host);
                }
                if let Some(pfn) = s.pfn.take() {
                    ctx.free(DevicePage { dev, pfn });
                }
            }
            result = Err(e);
        }
    }
    for s in slots.iter_mut() {
        s.host = None;
    }

    // Record the copies, with one notifier check for the chunk.
    let space = ptr::from_ref(this) as usize;
    for s in slots.iter().filter(|s| s.copy.is_some()) {
        if let Some(pfn) = s.pfn {
            ctx.moved(DevicePage { dev, pfn }, space, s.vpn);
        }
    }
    let mut copied = 0;
    {
        let mut guard = this.lpt.lock();
        let changed = this.changed(&guard, &seq);
        for s in slots.iter_mut() {
            let (Some(copy), Some(pfn)) = (s.copy.take(), s.pfn) else {
                continue;
            };
            let page = DevicePage { dev, pfn };
            // A page dropped meanwhile (`MADV_DONTNEED`) keeps no copy.
            let home_kept = s.claim.take().is_some_and(|home| {
                LogicalPageTable::end_claim_locked(&mut guard, home, Residency::Host)
            });
            s.done = if changed || !home_kept {
                this.lpt.erase_claimed_locked(&mut guard, copy);
                false
            } else {
                LogicalPageTable::end_claim_locked(&mut guard, copy, Residency::Device(page))
            };
            copied += usize::from(s.done);
        }
    }
    this.lpt.wake();
    for_each_run(
        &slots,
        |s| s.done,
        |i, len| trace::copy(dev, slots[i].vpn * PAGE_SIZE, len, true),
    );
    for s in slots.iter_mut().filter(|s| !s.done) {
        if let Some(pfn) = s.pfn.take() {
            // An invalidation ran meanwhile: copied again one by one.
            ctx.unmap_va(s.vpn * PAGE_SIZE, PAGE_SIZE);
            ctx.free(DevicePage { dev, pfn });
            slow.push(s.vpn, GFP_KERNEL)?;
        }
    }
    result?;
    slow.sort_unstable();
    Ok((copied, slow))
}

/// Ends `claim` after a failed move: the page lives `now` (where its data still is).  If the
/// entry was dropped meanwhile, what `now` names is nobody's and goes.
pub(crate) fn end_failed(this: &AddressSpace, claim: Claim, va: usize, now: Residency) {
    if this.lpt.end_claim(claim, now) {
        return;
    }
    match now {
        // SAFETY: the entry is gone and never recorded the parked page: it is ours.
        Residency::Parked(raw) => drop(unsafe { ParkedPage::from_raw(raw) }),
        Residency::Device(page) => this.devices.batch().push(va, page),
        _ => {}
    }
}

/// Where a page whose CPU mapping was removed for a move lives after the move failed: parked
/// in the host page that was mapped (`host`), which still holds the data.
pub(crate) fn host_after_failure(host: Option<&Page>) -> Residency {
    host.map_or(Residency::Nowhere, |page| {
        Residency::Parked(ParkedPage::new_ref(page).into_raw())
    })
}

/// Pages of one page table: [`map_home`] maps at most this many with one lock.
const PMD_PAGES: usize = bindings::PTRS_PER_PTE as usize;

/// What the page table lock's holder needs to end the claims of [`map_home`].
struct Commit<'a> {
    lpt: &'a LogicalPageTable,
    claims: &'a mut [Option<Claim>],
}

/// `gm_map_anon_folios()`'s callback: ends the claim of page `i` of the run, under the page
/// table lock, with the page in host memory.  `false` (do not map) if the entry was dropped.
///
/// # Safety
///
/// `arg` is the [`Commit`] that [`map_home`] passed, alive and not otherwise used during the
/// call.
unsafe extern "C" fn commit_home(arg: *mut c_void, i: c_uint) -> bool {
    // SAFETY: by the safety requirements.
    let commit = unsafe { &mut *arg.cast::<Commit<'_>>() };
    match commit.claims.get_mut(i as usize).and_then(Option::take) {
        Some(claim) => commit.lpt.end_claim(claim, Residency::Host),
        None => false,
    }
}

/// Maps host pages that came home in the CPU page table, as ordinary anonymous pages, one page
/// table (and one lock) at a time.  `pages[k]`, filled and charged to the mm's memory cgroup,
/// holds the data of virtual page `first + k`, claimed by `claims[k]`; every page lies in
/// `vma`, whose mmap lock the caller holds.
///
/// A mapped page leaves both its slots empty: its reference went to the page table, its claim
/// ended with the page in host memory.  A page whose entry was dropped meanwhile leaves its
/// claim slot empty and its page to the caller, who frees it.  A page that could not be mapped
/// (no memory for a page table) keeps both: the caller still owns it.
fn map_home(
    lpt: &LogicalPageTable,
    vma: &VmaRef,
    first: usize,
    pages: &mut [Option<ParkedPage>],
    claims: &mut [Option<Claim>],
) {
    let Ok(mut folios) = KVec::with_capacity(pages.len().min(PMD_PAGES), GFP_KERNEL) else {
        return;
    };
    let mut start = 0;
    while start < pages.len() {
        let vpn = first + start;
        let len = (PMD_PAGES - vpn % PMD_PAGES).min(pages.len() - start);
        folios.clear();
        for page in &pages[start..start + len] {
            let folio = page.as_ref().map_or(ptr::null_mut(), |p| p.folio());
            // Cannot fail: the capacity is there.
            let _ = folios.push_within_capacity(folio);
        }
        let mut commit = Commit {
            lpt,
            claims: &mut claims[start..start + len],
        };
        // SAFETY: the caller holds the mmap lock of `vma`, which holds the run; the folios are
        // new, ours and charged; `commit` lives for the call and `commit_home` takes it.
        let mapped = to_result(unsafe {
            bindings::gm_map_anon_folios(
                vma.as_ptr(),
                (vpn * PAGE_SIZE) as c_ulong,
                folios.as_mut_ptr(),
                len as c_uint,
                Some(commit_home),
                (&raw mut commit).cast(),
            )
        });
        if mapped.is_ok() {
            for (k, folio) in folios.iter().enumerate() {
                if folio.is_null() {
                    // Mapped (or never there): the page table holds its reference now.
                    if let Some(page) = pages[start + k].take() {
                        let _ = page.into_raw();
                    }
                }
            }
        }
        start += len;
    }
}

/// Brings the device pages of `first..last` home: a run of consecutive pages of one device at
/// a time, at most a chunk, with [`park_run_home`].  With the mmap lock (`mmap`), the pages are
/// mapped in the CPU page table; without, the CPU faults them in afterwards.
pub(crate) fn park_home(
    this: &AddressSpace,
    mmap: Option<&MmapReadGuard<'_>>,
    first: usize,
    last: usize,
) -> Result {
    let mut pages: KVec<(usize, DevicePage)> = KVec::new();
    let mut start = first;
    let mut parked = 0;
    while start < last {
        let end = (start / CHUNK_PAGES + 1)
            .saturating_mul(CHUNK_PAGES)
            .min(last);
        pages.clear();
        let mut pushed = Ok(());
        this.lpt.for_each_device_page(start, end, |vpn, page| {
            if pushed.is_ok() {
                pushed = pages.push((vpn, page), GFP_KERNEL);
            }
        });
        pushed?;
        let mut i = 0;
        while i < pages.len() {
            let (vpn, page) = pages[i];
            let len = pages[i..]
                .iter()
                .enumerate()
                .take_while(|&(k, &(v, p))| v == vpn + k && p.dev == page.dev)
                .count();
            // A page can only live on an attached device.
            let dev = this.devices.get(page.dev).ok_or(EIO)?;
            parked += park_run_home(this, &*dev, &pages[i..i + len], mmap)?;
            i += len;
        }
        // After some progress, like a device prefetch (see `crate::fault`).
        if parked > 0 && start + CHUNK_PAGES < last && kernel::current!().signal_pending() {
            return Err(ERESTARTSYS);
        }
        start = end;
    }
    Ok(())
}

/// [`map_home`] for a run of pages from virtual page `first` that may span several VMAs (each
/// page of an address space lies in a peer-shared VMA of its mm).
pub(crate) fn map_run_home(
    this: &AddressSpace,
    mmap: &MmapReadGuard<'_>,
    first: usize,
    pages: &mut [Option<ParkedPage>],
    claims: &mut [Option<Claim>],
) {
    let mut k = 0;
    while k < pages.len() {
        let vma = mmap
            .vma_lookup((first + k) * PAGE_SIZE)
            .filter(|vma| vma.flags() & flags::PEER_SHARED != 0);
        let Some(vma) = vma else {
            k += 1;
            continue;
        };
        let len = (vma.end() / PAGE_SIZE - (first + k)).min(pages.len() - k);
        map_home(
            &this.lpt,
            vma,
            first + k,
            &mut pages[k..k + len],
            &mut claims[k..k + len],
        );
        k += len;
    }
}

/// Brings the run `run` of pages of the device `dev` home (`run[i]` is the page of virtual
/// page `run[0].0 + i`): claims them, unmaps and copies them out with one `peer_unmap` per run
/// of claimed pages, frees them and maps the host copies in the CPU page table
/// ([`map_home`]) if the caller holds the mmap lock (`mmap`), or parks them in the logical
/// page table.  Pages someone else is moving are left alone.  Returns how many pages came
/// home.
pub(crate) fn park_run_home(
    this: &AddressSpace,
    dev: &dyn DeviceOps,
    run: &[(usize, DevicePage)],
    mmap: Option<&MmapReadGuard<'_>>,
) -> Result<usize> {
    // Everything is allocated before the first claim, so that every claim is ended.
    let mut hosts = KVec::with_capacity(run.len(), GFP_KERNEL)?;
    for _ in run {
        hosts.push(Some(Page::alloc_page(GFP_KERNEL)?), GFP_KERNEL)?;
    }
    let mut claimed: KVec<Option<Claim>> = KVec::with_capacity(run.len(), GFP_KERNEL)?;
    for &(vpn, page) in run {
        let _ =
            claimed.push_within_capacity(this.lpt.claim_if(vpn, Residency::Device(page), |_| {}));
    }
    let mut parked = 0;
    let mut result = Ok(());
    let mut i = 0;
    while i < run.len() {
        let len = claimed[i..].iter().take_while(|c| c.is_some()).count();
        if len == 0 {
            i += 1;
            continue;
        }
        // A failed allocation is a failed copy: the pages stay on the device.
        let copied = KVec::with_capacity(len, GFP_KERNEL)
            .map_err(Error::from)
            .and_then(|mut pairs| {
                for k in i..i + len {
                    if let Some(host) = &hosts[k] {
                        let _ = pairs.push_within_capacity((run[k].1, host));
                    }
                }
                dev.copy_run_home(run[i].0 * PAGE_SIZE, &pairs)
            });
        // Charged to the process, which asked for its pages to come home.
        let mut charged: KVec<Option<ParkedPage>> = KVec::with_capacity(len, GFP_KERNEL)?;
        for k in i..i + len {
            let host = match (&copied, hosts[k].take()) {
                (Ok(()), Some(host)) => ParkedPage::charged(host, this.mm(), true).ok(),
                _ => None,
            };
            let _ = charged.push_within_capacity(host);
        }
        if let (Ok(()), Some(mmap)) = (&copied, mmap) {
            map_run_home(this, mmap, run[i].0, &mut charged, &mut claimed[i..i + len]);
        }
        for k in i..i + len {
            let (_, page) = run[k];
            let Some(claim) = claimed[k].take() else {
                if copied.is_ok() {
                    // Mapped in the CPU page table, or dropped meanwhile (then the copy,
                    // left in `charged`, goes below): the device page is nobody's.
                    dev.free(page);
                    parked += usize::from(charged[k - i].is_none());
                }
                continue;
            };
            let now = match charged[k - i].take() {
                Some(parked) => {
                    dev.free(page);
                    Residency::Parked(parked.into_raw())
                }
                // The device pages are intact: they stay (the device faults them in again).
                None => Residency::Device(page),
            };
            if this.lpt.end_claim(claim, now) {
                parked += usize::from(matches!(now, Residency::Parked(_)));
                continue;
            }
            // Unmapped meanwhile: what we hold is nobody's.
            match now {
                // SAFETY: the parked page was never recorded: it is ours.
                Residency::Parked(raw) => drop(unsafe { ParkedPage::from_raw(raw) }),
                Residency::Device(page) => dev.free(page),
                _ => {}
            }
        }
        if let Err(e) = copied {
            result = Err(e);
        }
        i += len;
    }
    result.map(|()| parked)
}

#[cfg(CONFIG_GMEM_KUNIT_TEST)]
#[kunit_tests(gmem_migrate)]
mod tests {
    use super::*;
    use crate::device::fake::{FakeDevice, Op};
    use kernel::sync::Arc;

    fn slot(vpn: usize, done: bool) -> Slot {
        Slot {
            done,
            ..Slot::new(vpn, None)
        }
    }

    #[test]
    fn runs_are_consecutive_picked_pages() -> Result {
        // Pages 1, 2, 3 (3 not picked), 5, 6, 8.
        let slots = [
            slot(1, true),
            slot(2, true),
            slot(3, false),
            slot(5, true),
            slot(6, true),
            slot(8, true),
        ];
        let mut runs = KVec::new();
        for_each_run(
            &slots,
            |s| s.done,
            |i, len| {
                let _ = runs.push((i, len), GFP_KERNEL);
            },
        );
        assert_eq!(&runs[..], &[(0, 2), (3, 2), (5, 1)]);
        assert_eq!(next_run(&slots, 6, |s| s.done), None);
        assert_eq!(next_run(&slots, 0, |s| !s.done), Some((2, 1)));
        Ok(())
    }

    const DEV: DeviceId = 4;

    /// An address space with pages 10..13 on the fake device (pfn = vpn), 13 on the host and
    /// 14 on the device again.
    fn setup(failing_pfn: u64) -> Result<(Pin<KBox<AddressSpace>>, Arc<FakeDevice>)> {
        let this = AddressSpace::new(core::ptr::null_mut(), false)?;
        let fake = FakeDevice::new(DEV, failing_pfn)?;
        this.devices.attach(fake.clone())?;
        for vpn in [10, 11, 12, 14] {
            let page = DevicePage {
                dev: DEV,
                pfn: vpn as u64,
            };
            this.lpt.insert(vpn, Residency::Device(page))?;
        }
        this.lpt.insert(13, Residency::Host)?;
        Ok((this, fake))
    }

    #[test]
    fn park_home_moves_runs_and_parks_them() -> Result {
        let (this, fake) = setup(u64::MAX)?;
        park_home(&this, None, 10, 15)?;
        // One run of three pages: all unmapped before the first copy, then freed.
        let va = |vpn: usize| vpn * PAGE_SIZE;
        assert_eq!(
            &fake.take_ops()[..],
            &[
                Op::Unmap(va(10), 10),
                Op::Unmap(va(11), 11),
                Op::Unmap(va(12), 12),
                Op::CopyToHost(10),
                Op::CopyToHost(11),
                Op::CopyToHost(12),
                Op::Free(10),
                Op::Free(11),
                Op::Free(12),
                Op::Unmap(va(14), 14),
                Op::CopyToHost(14),
                Op::Free(14),
            ]
        );
        for vpn in [10, 11, 12, 14] {
            let Some(Residency::Parked(raw)) = this.lpt.residency(vpn) else {
                panic!("page {vpn} is not parked");
            };
            // SAFETY: the entry keeps the parked page; it is only borrowed here.
            let parked = core::mem::ManuallyDrop::new(unsafe { ParkedPage::from_raw(raw) });
            let mut b = 0u8;
            // SAFETY: `b` is valid for a one-byte write.
            unsafe { parked.page().read_raw(&mut b, PAGE_SIZE - 1, 1)? };
            assert_eq!(b, vpn as u8);
        }
        assert_eq!(this.lpt.residency(13), Some(Residency::Host));
        Ok(())
    }

    #[test]
    fn a_failed_copy_keeps_the_device_pages() -> Result {
        let (this, fake) = setup(11)?;
        assert_eq!(park_home(&this, None, 10, 13), Err(EIO));
        let ops = fake.take_ops();
        assert!(!ops.iter().any(|op| matches!(op, Op::Free(_))));
        for vpn in [10, 11, 12] {
            let page = DevicePage {
                dev: DEV,
                pfn: vpn as u64,
            };
            assert_eq!(this.lpt.residency(vpn), Some(Residency::Device(page)));
            // Not left busy: a second claim works.
            let claim = this.lpt.claim_if(vpn, Residency::Device(page), |_| {});
            assert!(claim.is_some());
            assert!(claim.is_some_and(|c| this.lpt.end_claim(c, Residency::Device(page))));
        }
        Ok(())
    }
}
