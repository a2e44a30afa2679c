// SPDX-License-Identifier: GPL-2.0

//! CPU faults on peer-shared ranges.
//!
//! core MM handles a CPU fault on a page that is not present in a peer-shared VMA as an
//! anonymous fault, with two calls into GMEM around it (see `do_anonymous_page()`):
//!
//! - [`cpu_fault_begin`], after the new host page is allocated and before the page table lock
//!   is taken (it may sleep).  It claims the page's entry in the logical page table and, if the
//!   page lives on a device, stops the device's access to it, copies it into the new host page
//!   and frees the device page.  If someone else holds the claim, it sleeps until the claim
//!   ends (see "Claims" in `crate::lpt`), then claims the page itself: the fault neither
//!   returns to retry nor allocates its page again.
//! - [`cpu_fault_end`], under the page table lock before the PTE is set, ends the claim:
//!   records the page as host-resident, or tells core MM not to install the page if the entry
//!   was dropped meanwhile (`MADV_DONTNEED`: the copy is stale).  If core MM gives up, the copy
//!   is parked in the entry: no data is lost.
//!
//! # Device faults
//!
//! [`dev_fault`] is the other direction, for `gm_dev_fault()`: a device needs a page.  It
//! moves a range in chunks of up to 2 MiB (`crate::migrate`); a page the chunk cannot take
//! with the others goes through [`fault_page`].  With the mmap lock held for reading, that
//! claims the page's entry the same way and then either
//!
//! - re-maps a page that is already on this device,
//! - moves a page from another device here (through a host bounce page),
//! - moves a host page here: pins it, removes the CPU mapping (with the TLB flush), copies it
//!   to the device and lets it go, or
//! - zero-fills a device page for a page nobody touched yet.
//!
//! The device mapping is made last and checked against the MMU notifier sequence, like an HMM
//! mirror does: if an invalidation ran meanwhile, the mapping is removed and the page faulted
//! again.  A move that fails after the CPU mapping is gone leaves the data in the host page
//! that was mapped, parked in the entry: the next CPU access maps it again.

use crate::{
    address_space::{AddressSpace, Seq},
    device::{DeviceList, DeviceOps},
    lpt::{Claim, DevicePage, LogicalPageTable, ParkedPage, Residency},
    migrate::{
        copy_run, end_failed, host_after_failure, map_run_in_place, to_device, write_protect,
        PinnedPage, CHUNK_PAGES,
    },
    thrash, trace,
};
use kernel::{
    bindings,
    bitmap::Bitmap,
    ffi::{c_int, c_uint},
    mm::{
        virt::{flags, VmaRef},
        MmWithUser,
    },
    page::{Page, PAGE_SIZE},
    prelude::*,
};

/// What a CPU fault's new page holds, from [`cpu_fault_begin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Zeroes: the page was never touched, or its data was dropped.
    Zero,
    /// Zeroes, and the entry said the page is in host memory: the CPU page table maps it, or
    /// did until `MADV_DONTNEED`.  (Another fault on the same page may have just mapped it.)
    ZeroWasHost,
    /// The page's data, copied from a parked page.
    Data,
    /// The page's data, copied from a device: the page bounced (see `crate::thrash`).
    DeviceData,
}

impl Fill {
    /// As a number C keeps (see [`Claim::into_token`]): two bits.
    pub(crate) fn to_bits(self) -> u32 {
        match self {
            Fill::Zero => 0,
            Fill::ZeroWasHost => 1,
            Fill::Data => 2,
            Fill::DeviceData => 3,
        }
    }

    /// Back from [`Fill::to_bits`].
    pub(crate) fn from_bits(bits: u32) -> Self {
        match bits & 3 {
            1 => Fill::ZeroWasHost,
            2 => Fill::Data,
            3 => Fill::DeviceData,
            _ => Fill::Zero,
        }
    }
}

/// Claims page `vpn` (virtual address `va`) for a CPU fault that installs `dst`, and fills
/// `dst`, which core MM did not zero: with the page's data if it lives on a device or is
/// parked, with zeros otherwise.  Sleeps while someone else holds the page's claim.  Returns
/// the claim and what `dst` holds.
pub(crate) fn cpu_fault_begin(
    lpt: &LogicalPageTable,
    devices: &DeviceList,
    vpn: usize,
    va: usize,
    dst: &Page,
) -> Result<(Claim, Fill)> {
    loop {
        let Some((claim, was)) = lpt.claim_any(vpn)? else {
            lpt.wait_unclaimed(vpn);
            continue;
        };
        return match was {
            Residency::Device(page) => match bring_home(devices, va, page, dst) {
                Ok(()) => {
                    trace::cpu_fault(va, page.dev.into(), &Ok(()));
                    Ok((claim, Fill::DeviceData))
                }
                Err(e) => {
                    trace::cpu_fault(va, page.dev.into(), &Err(e));
                    // The device copy is still good: give the entry its page back.
                    if !lpt.end_claim(claim, Residency::Device(page)) {
                        // Dropped meanwhile: nobody else knows the device page.
                        devices.batch().push(va, page);
                    }
                    Err(e)
                }
            },
            Residency::Parked(raw) => {
                // SAFETY: the claim took the parked page out of the entry: it is ours.
                let parked = unsafe { ParkedPage::from_raw(raw) };
                copy_page(&parked.page(), dst);
                trace::cpu_fault(va, trace::NO_NODE, &Ok(()));
                Ok((claim, Fill::Data))
            }
            Residency::Host => zero(dst).map(|()| (claim, Fill::ZeroWasHost)),
            Residency::Nowhere => zero(dst).map(|()| (claim, Fill::Zero)),
        };
    }
}

/// Ends the CPU fault that holds `claim`.  With `install`, called under the page table lock
/// before the PTE of `page` is set: records the page as host-resident, or returns `false` if
/// its entry was dropped meanwhile (`MADV_DONTNEED`, munmap), and then the fault must not
/// install what it copied.  Without, the fault gave up, and the entry is as it was: a `page`
/// that holds the data (`fill`) is parked in it, so that nothing is lost.
pub(crate) fn cpu_fault_end(
    lpt: &LogicalPageTable,
    claim: Claim,
    page: &Page,
    fill: Fill,
    install: bool,
) -> bool {
    if install {
        if fill == Fill::DeviceData {
            return lpt.end_claim_bounced(claim, thrash::window());
        }
        return lpt.end_claim(claim, Residency::Host);
    }
    let now = match fill {
        Fill::Data | Fill::DeviceData => Residency::Parked(ParkedPage::new_ref(page).into_raw()),
        Fill::ZeroWasHost => Residency::Host,
        Fill::Zero => Residency::Nowhere,
    };
    if !lpt.end_claim(claim, now) {
        if let Residency::Parked(raw) = now {
            // SAFETY: the entry is gone and never recorded the parked page: it is ours.
            drop(unsafe { ParkedPage::from_raw(raw) });
        }
    }
    false
}

/// Zeroes the new page `dst` of a CPU fault (an anonymous fault's page, the data of no page on
/// a device).
fn zero(dst: &Page) -> Result {
    // SAFETY: the fault's new page is ours alone until it is mapped.
    unsafe { dst.fill_zero_raw(0, PAGE_SIZE) }
}

/// Copies host page `src` into host page `dst`, in one go: both are mapped at once, as
/// `copy_highpage()` does.  (Through a bounce buffer, 256 bytes at a time, the copy took a
/// quarter of a prefetch to a host node.)
pub(crate) fn copy_page(src: &Page, dst: &Page) {
    // SAFETY: both pages are valid for the duration of the call (the caller holds them); the
    // local mappings are undone below in reverse order, on this CPU, before returning.
    unsafe {
        let from = bindings::kmap_local_page(src.as_ptr());
        let to = bindings::kmap_local_page(dst.as_ptr());
        // SAFETY: each mapping covers a whole page; `dst` is not `src` (a parked page is
        // never the page the fault installs), so the ranges do not overlap.
        core::ptr::copy_nonoverlapping(from.cast::<u8>(), to.cast::<u8>(), PAGE_SIZE);
        bindings::kunmap_local(to);
        bindings::kunmap_local(from);
    }
}

/// Stops the device's access to `page`, copies it into `dst` and frees it.
fn bring_home(devices: &DeviceList, va: usize, page: DevicePage, dst: &Page) -> Result {
    // A page can only live on an attached device; a detached device took its pages with it.
    devices.get(page.dev).ok_or(EIO)?.move_home(va, page, dst)
}

/// Pages a device fault of a range moves before it checks for a pending signal.
const SIGNAL_CHECK: usize = 16;

/// Bytes of a chunk (see `crate::migrate`).
const CHUNK_BYTES: usize = CHUNK_PAGES * PAGE_SIZE;

/// Checks the arguments of a device fault of `len` bytes at `start` with `access`, and returns
/// the range's end: `EINVAL` for an unaligned or empty range or unknown `access` bits,
/// `EFAULT` for a range past the top of the address space.
pub(crate) fn check_fault(start: usize, len: usize, access: c_uint) -> Result<usize> {
    let known = bindings::GM_ACCESS_READ | bindings::GM_ACCESS_WRITE;
    if start % PAGE_SIZE != 0 || len == 0 || len % PAGE_SIZE != 0 {
        return Err(EINVAL);
    }
    if access == 0 || access & !known != 0 {
        return Err(EINVAL);
    }
    // A range that reaches past the top of the address space is outside every mapping.
    start.checked_add(len).ok_or(EFAULT)
}

/// Makes `start..end` of address space `this` (of `mm`, which has a user) resident on `ctx`'s
/// device and mapped there, with the rights `access` asks for; the range was checked with
/// [`check_fault`].  `EFAULT` for an address outside the process's peer-shared mappings or
/// without the rights `access` asks for, `ENOMEM` when the device is full.  Pages before the
/// failing one stay done.  With `in_place`, host pages the device accesses in place
/// (`MADV_ACCESSED_BY`) are mapped there instead.
pub(crate) fn dev_fault(
    this: &AddressSpace,
    mm: &MmWithUser,
    ctx: &dyn DeviceOps,
    start: usize,
    end: usize,
    access: c_uint,
    in_place: bool,
) -> Result {
    // Only as far as the peer-shared mappings reach from `start`: what lies beyond fails
    // with `EFAULT` anyway, and a notifier window for each 64 MiB of a range as long as the
    // address space would take memory until there is none.
    let reach = {
        let guard = mm.mmap_read_lock();
        let mut va = start;
        while let Some(vma) = guard.vma_lookup(va).filter(|_| va < end) {
            if vma.flags() & flags::PEER_SHARED == 0 {
                break;
            }
            va = vma.end();
        }
        va.min(end)
    };
    if reach == start {
        return Err(EFAULT);
    }
    // The range's windows have notifiers before any of its pages is mapped on the device
    // (a range that mmap() made has them; one that mremap() grew in place may not).
    // SAFETY: `mm` has a user and no mmap lock is held.
    unsafe { this.cover(start, reach, false) }?;
    let guard = mm.mmap_read_lock();
    // A mapping made past `reach` meanwhile has no notifier here yet: the range ends there.
    let (end, beyond) = (reach, reach < end);
    let mut va = start;
    let mut moved = 0;
    while va < end {
        let vma = guard.vma_lookup(va).ok_or(EFAULT)?;
        let vm_flags = vma.flags();
        if vm_flags & flags::PEER_SHARED == 0 || vm_flags & flags::READ == 0 {
            return Err(EFAULT);
        }
        let writable = vm_flags & flags::WRITE != 0;
        if access & bindings::GM_ACCESS_WRITE != 0 && !writable {
            return Err(EFAULT);
        }
        let prot = bindings::GM_PROT_READ | if writable { bindings::GM_PROT_WRITE } else { 0 };
        let vma_end = vma.end().min(end);
        while va < vma_end {
            // A long prefetch stops for a signal; restarting it redoes what is left.  It
            // checks once `SIGNAL_CHECK` pages moved: a restarted call, which first maps
            // again what is there already, always makes progress however often signals
            // come.
            if moved >= SIGNAL_CHECK && kernel::current!().signal_pending() {
                return Err(ERESTARTSYS);
            }
            // A chunk ends at a 2 MiB boundary (or the VMA's end).
            let chunk_end = (va / CHUNK_BYTES + 1)
                .checked_mul(CHUNK_BYTES)
                .map_or(vma_end, |e| e.min(vma_end));
            let n = (chunk_end - va) / PAGE_SIZE;
            let first = va / PAGE_SIZE;
            let mut mapped = if in_place && ctx.maps_host() {
                BlockPages(this.policy.accessed_in_place(first, n, ctx.id()))
            } else {
                BlockPages::default()
            };
            let hot = thrashing_pages(this, first, n).and_not(mapped);
            if in_place && hot.count() > 0 {
                trace::thrashing(ctx.id(), va, hot.count(), ctx.maps_host());
                if ctx.maps_host() {
                    thrash::mapped_in_place(hot.count());
                    mapped = mapped.or(hot);
                }
            }
            // A read of read-mostly pages copies them; they stay home.
            let copied = if access & bindings::GM_ACCESS_WRITE == 0 {
                BlockPages(this.policy.read_mostly(first, n)).and_not(mapped)
            } else {
                BlockPages::default()
            };
            let mut movable = BlockPages::default();
            movable.set_range(0, n);
            for (off, len) in movable.and_not(mapped).and_not(copied).runs() {
                let (done, slow) = to_device(this, mm, ctx, vma, va + off * PAGE_SIZE, len, prot)?;
                moved += done;
                for vpn in slow {
                    if fault_page(this, mm, ctx, vma, vpn * PAGE_SIZE, prot)? {
                        moved += 1;
                    }
                }
            }
            for (off, len) in mapped.runs() {
                let (_, slow) = map_run_in_place(this, mm, ctx, va + off * PAGE_SIZE, len, prot)?;
                for vpn in slow {
                    if map_in_place(this, mm, ctx, vma, vpn * PAGE_SIZE, prot)? {
                        moved += 1;
                    }
                }
            }
            for (off, len) in copied.runs() {
                let (done, slow) = copy_run(this, mm, ctx, vma, va + off * PAGE_SIZE, len)?;
                moved += done;
                for vpn in slow {
                    if read_copy(this, mm, ctx, vma, vpn * PAGE_SIZE)? {
                        moved += 1;
                    }
                }
            }
            ctx.count_faults(n);
            va = chunk_end;
        }
    }
    if beyond {
        return Err(EFAULT);
    }
    Ok(())
}

/// Smallest block density prefetch widens a fault to, in pages (64 KiB).
const PREFETCH_MIN: usize = 16;

/// A set of pages of one 2 MiB block (a chunk): bit `i` for the block's page `i`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BlockPages(pub(crate) [u64; CHUNK_PAGES / 64]);

impl BlockPages {
    /// Adds page `i`.
    pub(crate) fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    /// Whether page `i` is in the set.
    pub(crate) fn has(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    /// The bits of word `w` for pages `from..to`.
    fn mask(w: usize, from: usize, to: usize) -> u64 {
        let lo = from.clamp(w * 64, w * 64 + 64) - w * 64;
        let hi = to.clamp(w * 64, w * 64 + 64) - w * 64;
        match hi - lo {
            0 => 0,
            64 => u64::MAX,
            n => ((1u64 << n) - 1) << lo,
        }
    }

    /// The words that hold pages `from..to`.
    fn words(from: usize, to: usize) -> core::ops::Range<usize> {
        from / 64..to.div_ceil(64)
    }

    /// Adds pages `from..to`.
    fn set_range(&mut self, from: usize, to: usize) {
        for w in Self::words(from, to) {
            self.0[w] |= Self::mask(w, from, to);
        }
    }

    /// How many of pages `from..to` are in the set.
    fn count_range(&self, from: usize, to: usize) -> usize {
        Self::words(from, to)
            .map(|w| (self.0[w] & Self::mask(w, from, to)).count_ones() as usize)
            .sum()
    }

    /// How many pages are in the set.
    pub(crate) fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The pages in `self` or in `other`.
    fn or(self, other: Self) -> Self {
        Self(core::array::from_fn(|i| self.0[i] | other.0[i]))
    }

    /// The pages in both `self` and `other`.
    fn and(self, other: Self) -> Self {
        Self(core::array::from_fn(|i| self.0[i] & other.0[i]))
    }

    /// The pages in `self` and not in `other`.
    fn and_not(self, other: Self) -> Self {
        Self(core::array::from_fn(|i| self.0[i] & !other.0[i]))
    }

    /// The pages of the set, in order.
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &bits)| {
            let mut left = bits;
            core::iter::from_fn(move || {
                let bit = left.trailing_zeros() as usize;
                (left != 0).then(|| {
                    left &= left - 1;
                    w * 64 + bit
                })
            })
        })
    }

    /// The set as the kernel's bitmap, for its searches (a block's runs are looked for on
    /// every device fault, however few pages it moves: a word at a time, not a bit).
    fn bitmap(&self) -> &Bitmap {
        // SAFETY: `self.0` holds `CHUNK_PAGES` initialized bits in `unsigned long` words (GMEM
        // builds for 64-bit machines only), borrowed for as long as the result, and only read.
        unsafe { Bitmap::from_raw(self.0.as_ptr().cast(), CHUNK_PAGES) }
    }

    /// The runs of consecutive pages of the set, in order: (first page, length).
    pub(crate) fn runs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let bits = self.bitmap();
        let mut at = 0;
        core::iter::from_fn(move || {
            if at >= CHUNK_PAGES {
                return None;
            }
            let first = bits.next_bit(at)?;
            at = bits.next_zero_bit(first).unwrap_or(CHUNK_PAGES);
            Some((first, at - first))
        })
    }
}

/// Which pages of a block a batch of device faults moves: the pages that fault (`faulted`),
/// widened by density prefetch, as NVIDIA UVM does.  Each faulting page brings along the
/// largest naturally aligned sub-block of [`PREFETCH_MIN`] to [`CHUNK_PAGES`] pages around it
/// of which more than `threshold` percent is resident on the device (`resident`) or faulting,
/// clipped to pages `lo..hi` of the block (the faulting pages' VMA); resident pages do not move
/// again.  If more pages than the device has free (`room`) would move beyond the faulting
/// ones, the largest sub-block size is halved until they do not: prefetch never evicts.
/// `threshold` 0 turns prefetch off.
pub(crate) fn plan_block(
    faulted: BlockPages,
    resident: BlockPages,
    threshold: u32,
    lo: usize,
    hi: usize,
    room: usize,
) -> BlockPages {
    if threshold == 0 {
        return faulted;
    }
    let populated = faulted.or(resident);
    let mut cap = CHUNK_PAGES;
    while cap >= PREFETCH_MIN {
        let mut serve = faulted;
        for p in faulted.iter() {
            let mut size = cap;
            while size >= PREFETCH_MIN {
                let node = p & !(size - 1);
                let dense =
                    populated.count_range(node, node + size) * 100 > threshold as usize * size;
                if dense {
                    serve.set_range(node.max(lo), (node + size).min(hi));
                    break;
                }
                size /= 2;
            }
        }
        let serve = serve.and_not(resident.and_not(faulted));
        if serve.and_not(faulted).count() <= room {
            return serve;
        }
        cap /= 2;
    }
    faulted
}

/// A page that a batch of device faults asks for.
struct Wanted {
    vpn: usize,
    /// What the faults on the page need (`GM_ACCESS_*`, merged).
    access: c_uint,
    /// 0 or the errno of the fault.
    status: c_int,
}

/// Whether `access` is a valid `GM_ACCESS_*` set for a fault.
fn access_ok(access: c_uint) -> bool {
    let known = bindings::GM_ACCESS_READ | bindings::GM_ACCESS_WRITE;
    access != 0 && access & !known == 0
}

/// The pages `faults` ask for, sorted, once each with what all faults on it need; faults with
/// bad `access` bits are left out.
fn wanted_pages(faults: &[bindings::gm_fault]) -> Result<KVec<Wanted>> {
    let mut wanted = KVec::<Wanted>::with_capacity(faults.len(), GFP_KERNEL)?;
    for f in faults.iter().filter(|f| access_ok(f.access)) {
        let page = Wanted {
            vpn: f.va / PAGE_SIZE,
            access: f.access,
            status: 0,
        };
        // Cannot fail: there is room for every fault.
        let _ = wanted.push_within_capacity(page);
    }
    wanted.sort_unstable_by_key(|w| w.vpn);
    let mut kept = 0;
    for i in 0..wanted.len() {
        if kept > 0 && wanted[kept - 1].vpn == wanted[i].vpn {
            wanted[kept - 1].access |= wanted[i].access;
        } else {
            wanted.swap(kept, i);
            kept += 1;
        }
    }
    wanted.truncate(kept);
    Ok(wanted)
}

/// Serves a batch of device faults of the context `ctx` in address space `this` (of `mm`):
/// see `gm_dev_fault_batch()`.  Writes each fault's status and returns the first error, in
/// address order.  `faults` holds 1 to `GM_FAULT_BATCH_MAX` faults.
pub(crate) fn dev_fault_batch(
    this: &AddressSpace,
    mm: &MmWithUser,
    ctx: &dyn DeviceOps,
    faults: &mut [bindings::gm_fault],
) -> Result {
    let Ok(mut wanted) = wanted_pages(faults) else {
        faults.iter_mut().for_each(|f| f.status = ENOMEM.to_errno());
        return Err(ENOMEM);
    };

    // Every block's window has its notifier before any page of it is mapped on the device.
    for w in wanted.iter_mut() {
        let start = w.vpn / CHUNK_PAGES * CHUNK_BYTES;
        // SAFETY: `mm` has a user and no mmap lock is held.
        if let Err(e) = unsafe { this.cover(start, start.saturating_add(CHUNK_BYTES), false) } {
            w.status = e.to_errno();
        }
    }

    let guard = mm.mmap_read_lock();
    let threshold = ctx.prefetch_threshold();
    let (mut served, mut prefetched) = (0, 0);
    let mut i = 0;
    while i < wanted.len() {
        if wanted[i].status != 0 {
            i += 1;
            continue;
        }
        // A long batch stops for a signal between blocks; the driver replays what is left.
        if served > 0 && kernel::current!().signal_pending() {
            for w in &mut wanted[i..] {
                w.status = ERESTARTSYS.to_errno();
            }
            break;
        }
        let vpn = wanted[i].vpn;
        let vma = guard.vma_lookup(vpn * PAGE_SIZE).filter(|vma| {
            let vm_flags = vma.flags();
            vm_flags & flags::PEER_SHARED != 0 && vm_flags & flags::READ != 0
        });
        let Some(vma) = vma else {
            wanted[i].status = EFAULT.to_errno();
            i += 1;
            continue;
        };
        let writable = vma.flags() & flags::WRITE != 0;
        let prot = bindings::GM_PROT_READ | if writable { bindings::GM_PROT_WRITE } else { 0 };
        // The block's pages in this VMA: `lo..hi`.
        let base = vpn / CHUNK_PAGES * CHUNK_PAGES;
        let lo = (vma.start() / PAGE_SIZE).max(base);
        let hi = (vma.end() / PAGE_SIZE).min(base + CHUNK_PAGES);
        let n = wanted[i..].iter().take_while(|w| w.vpn < hi).count();
        let group = &mut wanted[i..i + n];
        i += n;
        let mut faulted = BlockPages::default();
        for w in group.iter_mut().filter(|w| w.status == 0) {
            if w.access & bindings::GM_ACCESS_WRITE != 0 && !writable {
                w.status = EFAULT.to_errno();
            } else {
                faulted.set(w.vpn - base);
            }
        }
        let room = if threshold == 0 { 0 } else { ctx.free_pages() };
        // No room (a device at its limit evicts for every page): no look at the block.
        let serve = if room == 0 {
            faulted
        } else {
            let resident = BlockPages(this.lpt.on_device(base, CHUNK_PAGES, ctx.id()));
            let planned = plan_block(faulted, resident, threshold, lo - base, hi - base, room);
            // Prefetch leaves the pages that prefer another node where they are.
            let elsewhere = BlockPages(this.policy.preferring_other(base, CHUNK_PAGES, ctx.id()));
            planned.and_not(elsewhere.and_not(faulted))
        };
        // Pages the device accesses in place are mapped where they are, not moved; so are
        // the pages that thrash, on a device that can (another one moves them as before).
        let accessed = if ctx.maps_host() {
            BlockPages(this.policy.accessed_in_place(base, CHUNK_PAGES, ctx.id()))
        } else {
            BlockPages::default()
        };
        let mut in_place = accessed;
        let thrashing = thrashing_pages(this, base, CHUNK_PAGES);
        let hot = thrashing.and(faulted).and_not(in_place);
        if hot.count() > 0 {
            trace::thrashing(ctx.id(), base * PAGE_SIZE, hot.count(), ctx.maps_host());
            if ctx.maps_host() {
                thrash::mapped_in_place(hot.count());
                in_place = in_place.or(hot);
            }
        }
        // Reads of read-mostly pages get copies; the pages stay home.  Prefetch leaves
        // read-mostly pages alone, and thrashing ones.
        let mut reads = BlockPages::default();
        for w in group.iter().filter(|w| w.status == 0) {
            if w.access & bindings::GM_ACCESS_WRITE == 0 {
                reads.set(w.vpn - base);
            }
        }
        let read_mostly = BlockPages(this.policy.read_mostly(base, CHUNK_PAGES));
        let copied = read_mostly.and(reads).and(faulted).and_not(in_place);
        // Density prefetch widens copies as it widens moves, over the read-mostly pages that
        // have no copy here yet.
        let copy_plan = if room == 0 || copied.count() == 0 {
            copied
        } else {
            let here = BlockPages(this.lpt.copies_on(base, CHUNK_PAGES, ctx.id()))
                .or(BlockPages(this.lpt.on_device(base, CHUNK_PAGES, ctx.id())));
            plan_block(copied, here, threshold, lo - base, hi - base, room)
                .and(read_mostly)
                .and_not(in_place)
                .and_not(thrashing.and_not(faulted))
        };
        let serve = serve
            .and_not(in_place)
            .and_not(copied)
            .and_not(read_mostly.and_not(faulted))
            .and_not(thrashing.and_not(faulted));
        let extra = serve.and_not(faulted).count() + copy_plan.and_not(copied).count();
        if extra > 0 {
            trace::prefetch(ctx.id(), base * PAGE_SIZE, faulted.count(), extra);
        }
        served += faulted.count();
        prefetched += extra;
        // A fault on a page the device accesses in place is widened by density prefetch to
        // all such pages of the block, where the CPU maps them, and the ones that thrash.
        let map_plan = if threshold == 0 || in_place.and(faulted).count() == 0 {
            in_place.and(faulted)
        } else {
            let mut widen = accessed;
            if ctx.maps_host() {
                widen = widen.or(thrashing);
            }
            let mut vma_pages = BlockPages::default();
            vma_pages.set_range(lo - base, hi - base);
            in_place.and(faulted).or(widen.and(vma_pages))
        };
        serve_runs(
            base,
            map_plan,
            in_place.and(faulted),
            group,
            |va, len| map_run_in_place(this, mm, ctx, va, len, prot),
            |va| map_in_place(this, mm, ctx, vma, va, prot),
        );
        serve_runs(
            base,
            copy_plan,
            copied,
            group,
            |va, len| copy_run(this, mm, ctx, vma, va, len),
            |va| read_copy(this, mm, ctx, vma, va),
        );
        let faulted = faulted.and_not(in_place).and_not(copied);
        serve_block(this, mm, ctx, vma, base, serve, faulted, group, prot);
    }
    drop(guard);
    ctx.count_faults(served);
    ctx.count_batch(prefetched);

    // Each fault's status, and the first error in address order.
    let mut first: Option<(usize, c_int)> = None;
    for f in faults.iter_mut() {
        f.status = if access_ok(f.access) {
            let vpn = f.va / PAGE_SIZE;
            wanted
                .binary_search_by_key(&vpn, |w| w.vpn)
                .map_or(EINVAL.to_errno(), |k| wanted[k].status)
        } else {
            EINVAL.to_errno()
        };
        if f.status != 0 && first.is_none_or(|(va, _)| f.va < va) {
            first = Some((f.va, f.status));
        }
    }
    let ret = match first {
        Some((_, errno)) => Err(Error::from_errno(errno)),
        None => Ok(()),
    };
    let lowest = wanted.first().map_or(0, |w| w.vpn * PAGE_SIZE);
    trace::dev_fault(ctx.id(), lowest, faults.len(), served, prefetched, &ret);
    ret
}

/// Moves the pages `serve` of the block at page `base` (all in `vma`) to the context's device
/// and maps them with `prot`, and records in `group` (the block's faulting pages, sorted) the
/// result for each page of `faulted`.  A prefetched page that cannot move stays where it is.
#[expect(clippy::too_many_arguments)]
fn serve_block(
    this: &AddressSpace,
    mm: &MmWithUser,
    ctx: &dyn DeviceOps,
    vma: &VmaRef,
    base: usize,
    serve: BlockPages,
    faulted: BlockPages,
    group: &mut [Wanted],
    prot: c_uint,
) {
    let mut record = |vpn: usize, result: Result<bool>| {
        if let Ok(k) = group.binary_search_by_key(&vpn, |w| w.vpn) {
            group[k].status = result.err().map_or(0, |e| e.to_errno());
        }
    };
    let one = |vpn: usize, record: &mut dyn FnMut(usize, Result<bool>)| {
        let result = fault_page(this, mm, ctx, vma, vpn * PAGE_SIZE, prot);
        if faulted.has(vpn - base) {
            record(vpn, result);
        }
    };
    for (first, len) in serve.runs() {
        match to_device(this, mm, ctx, vma, (base + first) * PAGE_SIZE, len, prot) {
            Ok((_, slow)) => slow.into_iter().for_each(|vpn| one(vpn, &mut record)),
            // Nothing of the run moved: the faulting pages one by one (which may evict).
            Err(_) => (base + first..base + first + len)
                .filter(|vpn| faulted.has(vpn - base))
                .for_each(|vpn| one(vpn, &mut record)),
        }
    }
}

/// Serves the pages `plan` of the block at page `base` a run at a time with `run(va, len)`,
/// which returns the pages it left to the per-page way, and those of them that are in
/// `faulted` (every page of `faulted` in a run that failed) with `page(va)`; records in `group`
/// (the block's faulting pages, sorted) the result for each page of `faulted`.  A prefetched
/// page that `run` left alone stays so.
fn serve_runs(
    base: usize,
    plan: BlockPages,
    faulted: BlockPages,
    group: &mut [Wanted],
    mut run: impl FnMut(usize, usize) -> Result<(usize, KVec<usize>)>,
    mut page: impl FnMut(usize) -> Result<bool>,
) {
    let mut one = |vpn: usize| {
        if faulted.has(vpn - base) {
            let result = page(vpn * PAGE_SIZE);
            if let Ok(k) = group.binary_search_by_key(&vpn, |w| w.vpn) {
                group[k].status = result.err().map_or(0, |e| e.to_errno());
            }
        }
    };
    for (first, len) in plan.runs() {
        match run((base + first) * PAGE_SIZE, len) {
            Ok((_, slow)) => slow.into_iter().for_each(&mut one),
            Err(_) => (base + first..base + first + len).for_each(&mut one),
        }
    }
}

/// The pages of the `n` (at most 512) from `first` on that thrash (see `crate::thrash`).
fn thrashing_pages(this: &AddressSpace, first: usize, n: usize) -> BlockPages {
    match thrash::threshold() {
        0 => BlockPages::default(),
        t => BlockPages(this.lpt.thrashing(first, n, thrash::window(), t)),
    }
}

/// Maps the page at `va` on the context's device where it is, in host memory
/// (`MADV_ACCESSED_BY`), with `prot`; a page that is not there yet is faulted in on the host.
/// A page on a device or parked, or one the device cannot map, is moved as [`fault_page`]
/// does; for a read, a page the device has a read-only copy of is read through the copy, as
/// [`read_copy`] maps it.  Returns whether a page moved (or was copied).
///
/// The mapping follows the CPU's: an invalidation of the range after `read_begin` removes it
/// (`AddressSpace::unmap_in_place`), and the fault tries again.
pub(crate) fn map_in_place(
    this: &AddressSpace,
    mm: &MmWithUser,
    ctx: &dyn DeviceOps,
    vma: &VmaRef,
    va: usize,
    prot: c_uint,
) -> Result<bool> {
    let vpn = va / PAGE_SIZE;
    let window = this.window(va)?;
    loop {
        let seen = this.lpt.peek(vpn);
        match seen {
            Some((_, true)) => {
                this.lpt.wait_unclaimed(vpn);
                continue;
            }
            Some((Residency::Device(_) | Residency::Parked(_), _)) => {
                return fault_page(this, mm, ctx, vma, va, prot);
            }
            _ => {}
        }
        let write = prot & bindings::GM_PROT_WRITE != 0;
        // A read of a page the device has a read-only copy of maps the copy again, as
        // `map_run_in_place` leaves it to do: the host page is not mapped over it.
        if !write && this.lpt.copies_on(vpn, 1, ctx.id())[0] != 0 {
            return read_copy(this, mm, ctx, vma, va);
        }
        this.mapping_in_place(ctx.id());
        let seq = window.read_begin();
        let host = PinnedPage::fault_in(mm, va, write)?;
        match this.map_in_place_since(&seq, || ctx.map_host(va, host.page(), prot)) {
            Some(Ok(())) => {
                trace::map_in_place(ctx.id(), va, 1, write);
                return Ok(false);
            }
            // No room to map it (the device's window on host memory is full): moved instead.
            Some(Err(_)) => {
                drop(host);
                return fault_page(this, mm, ctx, vma, va, prot);
            }
            // The CPU page table changed since the page was pinned: looked at again.
            None => {}
        }
    }
}

/// Ends the claim `copy` of the read-only copy `page` of the page at `va`, mapped on the
/// context's device since `seq`, and the page's own claim `home` if the caller holds it (the
/// page stays in host memory): the copy is kept if no invalidation ran meanwhile, otherwise
/// (or without `seq`: the copy failed) it is unmapped and freed.  Returns whether it is kept.
fn end_copy(
    this: &AddressSpace,
    ctx: &dyn DeviceOps,
    va: usize,
    copy: Claim,
    page: DevicePage,
    seq: Option<Seq<'_>>,
    home: Option<Claim>,
) -> bool {
    let kept = {
        let mut guard = this.lpt.lock();
        // A page dropped meanwhile (`MADV_DONTNEED`) keeps no copy: its next CPU access
        // faults in a new page, with no write-protect fault to drop the copy.
        let home_kept = home.is_none_or(|home| {
            LogicalPageTable::end_claim_locked(&mut guard, home, Residency::Host)
        });
        let fresh = home_kept && seq.is_some_and(|seq| !this.changed(&guard, &seq));
        if fresh {
            LogicalPageTable::end_claim_locked(&mut guard, copy, Residency::Device(page))
        } else {
            this.lpt.erase_claimed_locked(&mut guard, copy);
            false
        }
    };
    this.lpt.wake();
    if kept {
        trace::copy(ctx.id(), va, 1, true);
    } else {
        ctx.unmap(va, page);
        ctx.free(page);
    }
    kept
}

/// Gives the context's device a read-only copy of the page at `va`, of a read-mostly range
/// (`MADV_READ_MOSTLY`), and maps it there: the page stays in host memory, which the CPU maps
/// read-only until a write drops every copy (see "Read-only copies" in `crate::lpt`).  A page
/// on a device or parked comes home first; one already on this device is mapped again.
/// Returns whether a page was copied.
///
/// The first copy write-protects the CPU's mapping.  A copy is made under the claims of both
/// the page and the copy's entry, made before the write protection: a CPU write that faults
/// meanwhile finds the entry and waits.
pub(crate) fn read_copy(
    this: &AddressSpace,
    mm: &MmWithUser,
    ctx: &dyn DeviceOps,
    vma: &VmaRef,
    va: usize,
) -> Result<bool> {
    let vpn = va / PAGE_SIZE;
    let window = this.window(va)?;
    let prot = bindings::GM_PROT_READ;
    loop {
        match this.lpt.peek(vpn) {
            Some((_, true)) => {
                this.lpt.wait_unclaimed(vpn);
                continue;
            }
            Some((Residency::Device(page), _)) if page.dev == ctx.id() => {
                return fault_page(this, mm, ctx, vma, va, prot);
            }
            _ => {}
        }
        // A copy the device has already: mapped again.  The sequence is read first: an
        // invalidation that drops copies while this one is claimed leaves it to this fault.
        let seq = window.read_begin();
        if let Some((copy, page)) = this.lpt.claim_copy(vpn, ctx.id(), None) {
            warn_unless_owned(this, ctx, page, vpn);
            let mapped = ctx.map(va, page.pfn, prot);
            let seq = mapped.is_ok().then_some(seq);
            if end_copy(this, ctx, va, copy, page, seq, None) {
                return Ok(false);
            }
            mapped?;
            continue;
        }
        // A new copy, of the host page (faulted in, which brings a page home from a device).
        let pinned = window.read_begin();
        let host = PinnedPage::fault_in(mm, va, false)?;
        // A page a forked child has from its parent has no entry, and one whose fault gave
        // up is nowhere: host pages all the same, now that the CPU maps them.
        let seen = this.lpt.residency(vpn);
        if !matches!(seen, None | Some(Residency::Host | Residency::Nowhere)) {
            // Moved meanwhile.
            continue;
        }
        let pfn = ctx.alloc_page()?;
        let page = DevicePage { dev: ctx.id(), pfn };
        let still_mapped = || host.still_mapped(mm, va);
        let home = match this.claim_since(vpn, seen, &pinned, still_mapped) {
            Ok(Some(home)) => home,
            Ok(None) => {
                ctx.free(page);
                this.wait_discarded(vpn);
                continue;
            }
            Err(e) => {
                ctx.free(page);
                return Err(e);
            }
        };
        // Copies that are not claimed have lived through no invalidation: the CPU maps the
        // page read-only.  A claimed one may have (its holder drops it): wait for it.
        let (copy, held) = match this.lpt.claim_new_copy(vpn, ctx.id()) {
            Ok(Some(made)) => made,
            Ok(None) => {
                this.lpt.end_claim(home, Residency::Host);
                ctx.free(page);
                this.lpt.wait_copies_unclaimed(vpn);
                continue;
            }
            Err(e) => {
                this.lpt.end_claim(home, Residency::Host);
                ctx.free(page);
                return Err(e);
            }
        };
        // Only if it is writable: the protection change is an invalidation of the whole
        // window, which sends the other copies being made there back to start again (this
        // page's own, dropped by one, comes here with the page read-only already).
        if held == 0 && PinnedPage::writable(mm, va) {
            write_protect(vma, va, PAGE_SIZE);
        }
        let seq = window.read_begin();
        if let Err(e) = ctx.place(va, pfn, Some(host.page()), prot) {
            end_copy(this, ctx, va, copy, page, None, Some(home));
            return Err(e);
        }
        drop(host);
        // Eviction may take the copy from now on (it is simply dropped).
        ctx.moved(page, core::ptr::from_ref(this) as usize, vpn);
        if end_copy(this, ctx, va, copy, page, Some(seq), Some(home)) {
            return Ok(true);
        }
    }
}

/// Warns if device page `page`, about to be mapped again at page `vpn`, is not the one the
/// device memory records there: the logical page table names a page that was freed (and
/// maybe given to someone else), and the device would see data that is not the page's.
/// Checked with `CONFIG_DEBUG_VM` only, as `VM_WARN_ON()` is: it takes the device memory's
/// lock on the fault path.
fn warn_unless_owned(this: &AddressSpace, ctx: &dyn DeviceOps, page: DevicePage, vpn: usize) {
    if cfg!(CONFIG_DEBUG_VM) && !ctx.owned_by(page, core::ptr::from_ref(this) as usize, vpn) {
        pr_err!(
            "device {} page {:#x} at {:#x} is not the address space's\n",
            page.dev,
            page.pfn,
            vpn * PAGE_SIZE
        );
        kernel::warn_on!(true);
    }
}

/// Records device page `pfn`, now mapped at `va`, as where the page of `claim` lives, and ends
/// the claim.  `false` if the entry was dropped meanwhile (the page is freed) or an
/// invalidation ran since `seq` (the device mapping is removed again): the fault is retried.
fn complete(
    this: &AddressSpace,
    ctx: &dyn DeviceOps,
    claim: Claim,
    va: usize,
    pfn: u64,
    seq: Seq<'_>,
) -> bool {
    let page = DevicePage { dev: ctx.id(), pfn };
    ctx.moved(page, core::ptr::from_ref(this) as usize, claim.vpn());
    let (ended, changed) = {
        let mut guard = this.lpt.lock();
        let ended = LogicalPageTable::end_claim_locked(&mut guard, claim, Residency::Device(page));
        (ended, ended && this.changed(&guard, &seq))
    };
    this.lpt.wake();
    if !ended {
        // Dropped meanwhile: nobody else knows the page.
        ctx.unmap_va(va, PAGE_SIZE);
        ctx.free(DevicePage { dev: ctx.id(), pfn });
        return false;
    }
    if changed {
        ctx.unmap_va(va, PAGE_SIZE);
        return false;
    }
    true
}

/// Makes the page at `va` resident on the context's device and maps it with `prot`.  Returns
/// whether a page moved (`false`: it was on the device already and is mapped again).
///
/// Sleeps while someone else holds the page's claim (a CPU fault, a migration or an
/// eviction: none of them waits for anything this thread holds).  A move that fails leaves
/// the data where it was: on the other device, or parked in host memory.
pub(crate) fn fault_page(
    this: &AddressSpace,
    mm: &MmWithUser,
    ctx: &dyn DeviceOps,
    vma: &VmaRef,
    va: usize,
    prot: c_uint,
) -> Result<bool> {
    let vpn = va / PAGE_SIZE;
    let window = this.window(va)?;
    loop {
        let seen = this.lpt.peek(vpn);
        let (seen, busy) = match seen {
            Some((r, busy)) => (Some(r), busy),
            None => (None, false),
        };
        if busy {
            this.lpt.wait_unclaimed(vpn);
            continue;
        }
        match seen {
            Some(Residency::Device(page)) if page.dev == ctx.id() => {
                // Mapped again under a claim: a move that took the page meanwhile (a prefetch
                // home, an eviction) would free it while the device maps it, and a job running
                // on another thread could write into the freed page through that mapping.
                let Some(claim) = this.lpt.claim(vpn, seen)? else {
                    continue;
                };
                warn_unless_owned(this, ctx, page, vpn);
                let seq = window.read_begin();
                if let Err(e) = ctx.map(va, page.pfn, prot) {
                    end_failed(this, claim, va, Residency::Device(page));
                    return Err(e);
                }
                // `complete()` records the page's owner again, which marks it used.
                if complete(this, ctx, claim, va, page.pfn, seq) {
                    return Ok(false);
                }
            }
            Some(Residency::Parked(raw)) => {
                let pfn = ctx.alloc_page()?;
                let Some(claim) = this.lpt.claim(vpn, seen)? else {
                    ctx.free(DevicePage { dev: ctx.id(), pfn });
                    continue;
                };
                // SAFETY: the claim took the parked page out of the entry: it is ours.
                let parked = unsafe { ParkedPage::from_raw(raw) };
                let seq = window.read_begin();
                if let Err(e) = ctx.place(va, pfn, Some(&parked.page()), prot) {
                    ctx.free(DevicePage { dev: ctx.id(), pfn });
                    end_failed(this, claim, va, Residency::Parked(parked.into_raw()));
                    return Err(e);
                }
                drop(parked);
                if complete(this, ctx, claim, va, pfn, seq) {
                    return Ok(true);
                }
            }
            Some(Residency::Device(page)) => {
                // A page can only live on an attached device.
                let peer = this.devices.get(page.dev).ok_or(EIO)?;
                let bounce = Page::alloc_page(GFP_KERNEL)?;
                let pfn = ctx.alloc_page()?;
                let Some(claim) = this.lpt.claim(vpn, seen)? else {
                    ctx.free(DevicePage { dev: ctx.id(), pfn });
                    continue;
                };
                if let Err(e) = peer.move_home(va, page, &bounce) {
                    ctx.free(DevicePage { dev: ctx.id(), pfn });
                    end_failed(this, claim, va, Residency::Device(page));
                    return Err(e);
                }
                let seq = window.read_begin();
                if let Err(e) = ctx.place(va, pfn, Some(&bounce), prot) {
                    ctx.free(DevicePage { dev: ctx.id(), pfn });
                    // The data is in the bounce page now.
                    let parked = ParkedPage::new(bounce);
                    end_failed(this, claim, va, Residency::Parked(parked.into_raw()));
                    return Err(e);
                }
                if complete(this, ctx, claim, va, pfn, seq) {
                    return Ok(true);
                }
            }
            _ => {
                // A page the CPU touched, or any page of a forked process, may be swapped
                // out: fault it in.  Otherwise only a present page counts.
                let maybe_host = matches!(seen, Some(Residency::Host)) || this.inherited();
                let pinned = window.read_begin();
                let host = match PinnedPage::get(mm, va, false)? {
                    Some(page) => Some(page),
                    None if maybe_host => PinnedPage::get(mm, va, true)?,
                    None => None,
                };
                let pfn = ctx.alloc_page()?;
                // After the fault-in above, a present page has a `Host` entry.
                let seen = if host.is_some() && seen.is_none() && maybe_host {
                    this.lpt.residency(vpn)
                } else {
                    seen
                };
                let still_mapped = || host.as_ref().is_none_or(|h| h.still_mapped(mm, va));
                let Some(claim) = this.claim_since(vpn, seen, &pinned, still_mapped)? else {
                    ctx.free(DevicePage { dev: ctx.id(), pfn });
                    // A discard of the page (`MADV_DONTNEED`) keeps moves out until it ends.
                    this.wait_discarded(vpn);
                    continue;
                };
                if host.is_some() {
                    // From here on a CPU access faults and sleeps until the page is on the
                    // device; the pin keeps the page for the copy.
                    vma.zap_vma_range(va, PAGE_SIZE);
                }
                let seq = window.read_begin();
                let host_page = host.as_ref().map(PinnedPage::page);
                if let Err(e) = ctx.place(va, pfn, host_page, prot) {
                    ctx.free(DevicePage { dev: ctx.id(), pfn });
                    end_failed(this, claim, va, host_after_failure(host_page));
                    return Err(e);
                }
                drop(host);
                if complete(this, ctx, claim, va, pfn, seq) {
                    return Ok(true);
                }
            }
        }
    }
}

#[cfg(CONFIG_GMEM_KUNIT_TEST)]
#[kunit_tests(gmem_fault)]
mod tests {
    use super::*;
    use crate::device::fake::{FakeDevice, Op};
    use kernel::{page::PAGE_SIZE, sync::Arc};

    struct Setup {
        lpt: Pin<KBox<LogicalPageTable>>,
        devices: Pin<KBox<DeviceList>>,
        fake: Arc<FakeDevice>,
        page: Page,
    }

    fn setup(failing_pfn: u64) -> Result<Setup> {
        let devices = KBox::pin_init(DeviceList::new(), GFP_KERNEL)?;
        let fake = FakeDevice::new(7, failing_pfn)?;
        devices.attach(fake.clone())?;
        Ok(Setup {
            lpt: KBox::pin_init(LogicalPageTable::new(), GFP_KERNEL)?,
            devices,
            fake,
            page: Page::alloc_page(GFP_KERNEL | __GFP_ZERO)?,
        })
    }

    fn byte_at(page: &Page, offset: usize) -> Result<u8> {
        let mut b = 0u8;
        // SAFETY: `b` is valid for a one-byte write and `offset` is within the page.
        unsafe { page.read_raw(&mut b, offset, 1)? };
        Ok(b)
    }

    const VA: usize = 0x7f00_0000_0000;
    const VPN: usize = VA / PAGE_SIZE;

    #[test]
    fn first_touch_records_host() -> Result {
        let s = setup(u64::MAX)?;
        let (claim, fill) = cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page)?;
        assert_eq!(fill, Fill::Zero);
        assert_eq!(s.lpt.residency(VPN), Some(Residency::Nowhere));
        assert!(cpu_fault_end(&s.lpt, claim, &s.page, fill, true));
        assert_eq!(s.lpt.residency(VPN), Some(Residency::Host));
        assert_eq!(s.fake.take_ops().len(), 0);
        Ok(())
    }

    #[test]
    fn a_claimed_page_is_not_claimed_twice() -> Result {
        let s = setup(u64::MAX)?;
        let (claim, fill) = cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page)?;
        // A second fault on the same page while the first is under way would sleep.
        assert!(s.lpt.claim_any(VPN)?.is_none());
        assert!(!cpu_fault_end(&s.lpt, claim, &s.page, fill, false));
        // The first fault gave up: the page is still nowhere, and free to claim again.
        assert_eq!(s.lpt.residency(VPN), Some(Residency::Nowhere));
        let (claim, fill) = cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page)?;
        assert!(cpu_fault_end(&s.lpt, claim, &s.page, fill, true));
        // A fault that woke up after another one mapped the page claims a host page and gives
        // up (the PTE is there): the page stays host-resident.
        let (claim, fill) = cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page)?;
        assert_eq!(fill, Fill::ZeroWasHost);
        assert!(!cpu_fault_end(&s.lpt, claim, &s.page, fill, false));
        assert_eq!(s.lpt.residency(VPN), Some(Residency::Host));
        Ok(())
    }

    #[test]
    fn device_page_comes_home() -> Result {
        let s = setup(u64::MAX)?;
        let page = DevicePage { dev: 7, pfn: 0x42 };
        s.lpt.insert(VPN, Residency::Device(page))?;
        let (claim, fill) = cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page)?;
        assert_eq!(fill, Fill::DeviceData);
        // The device stopped accessing the page before it was copied, then freed it.
        assert_eq!(
            s.fake.take_ops(),
            [Op::Unmap(VA, 0x42), Op::CopyToHost(0x42), Op::Free(0x42)]
        );
        assert_eq!(byte_at(&s.page, 0)?, 0x42);
        assert_eq!(byte_at(&s.page, PAGE_SIZE - 1)?, 0x42);
        assert!(cpu_fault_end(&s.lpt, claim, &s.page, fill, true));
        assert_eq!(s.lpt.residency(VPN), Some(Residency::Host));
        // The trip home counts as a bounce.
        let window = thrash::window();
        assert_eq!(s.lpt.thrashing(VPN, 1, window, 1), [1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(s.lpt.thrashing(VPN, 1, window, 2), [0; 8]);
        Ok(())
    }

    /// A fault that gives up after the page came home keeps the data: the next one finds it.
    #[test]
    fn a_fault_that_gives_up_keeps_the_data() -> Result {
        let s = setup(u64::MAX)?;
        let page = DevicePage { dev: 7, pfn: 0x42 };
        s.lpt.insert(VPN, Residency::Device(page))?;
        let (claim, fill) = cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page)?;
        assert!(!cpu_fault_end(&s.lpt, claim, &s.page, fill, false));
        assert!(matches!(s.lpt.residency(VPN), Some(Residency::Parked(_))));
        let again = Page::alloc_page(GFP_KERNEL | __GFP_ZERO)?;
        let (claim, fill) = cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &again)?;
        assert_eq!(fill, Fill::Data);
        assert_eq!(byte_at(&again, PAGE_SIZE - 1)?, 0x42);
        assert!(cpu_fault_end(&s.lpt, claim, &again, fill, true));
        Ok(())
    }

    /// MADV_DONTNEED while a CPU fault copies the page home: the copy is stale and must not be
    /// installed.
    #[test]
    fn a_page_dropped_during_the_fault_is_not_installed() -> Result {
        let s = setup(u64::MAX)?;
        let page = DevicePage { dev: 7, pfn: 0x42 };
        s.lpt.insert(VPN, Residency::Device(page))?;
        let (claim, fill) = cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page)?;
        s.lpt.erase_range(VPN, VPN + 1, |_| true, |_| {});
        assert!(!cpu_fault_end(&s.lpt, claim, &s.page, fill, true));
        assert_eq!(s.lpt.residency(VPN), None);
        Ok(())
    }

    #[test]
    fn failed_copy_keeps_the_device_page() -> Result {
        let s = setup(0x42)?;
        let page = DevicePage { dev: 7, pfn: 0x42 };
        s.lpt.insert(VPN, Residency::Device(page))?;
        assert_eq!(
            cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page),
            Err(EIO)
        );
        assert_eq!(s.lpt.residency(VPN), Some(Residency::Device(page)));
        // Nothing was freed; the entry is not left busy.
        assert_eq!(
            s.fake.take_ops(),
            [Op::Unmap(VA, 0x42), Op::CopyToHost(0x42)]
        );
        let guard = s.lpt.lock();
        assert!(!guard.get(VPN).map(|m| m.busy()).unwrap_or(true));
        Ok(())
    }

    fn pages(ranges: &[(usize, usize)]) -> BlockPages {
        let mut b = BlockPages::default();
        for &(from, to) in ranges {
            b.set_range(from, to);
        }
        b
    }

    #[test]
    fn block_pages_runs() {
        let mut b = pages(&[(1, 4)]);
        b.set(7);
        b.set(511);
        let mut runs = b.runs();
        assert_eq!(runs.next(), Some((1, 3)));
        assert_eq!(runs.next(), Some((7, 1)));
        assert_eq!(runs.next(), Some((511, 1)));
        assert_eq!(runs.next(), None);
        assert_eq!(b.count(), 5);
    }

    #[test]
    fn block_pages_runs_cross_words() {
        let b = pages(&[(60, 130), (511, 512)]);
        let mut runs = b.runs();
        assert_eq!(runs.next(), Some((60, 70)));
        assert_eq!(runs.next(), Some((511, 1)));
        assert_eq!(runs.next(), None);
        assert_eq!(pages(&[(0, 512)]).runs().next(), Some((0, 512)));
        assert_eq!(BlockPages::default().runs().next(), None);
        // Any set: the runs are exactly its pages, each as long as it can be.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..64 {
            let mut b = BlockPages::default();
            for w in b.0.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Sparse, dense, empty and full words.
                *w = match state % 4 {
                    0 => 0,
                    1 => u64::MAX,
                    _ => state & (state >> 3),
                };
            }
            let (mut seen, mut end) = (BlockPages::default(), 0);
            for (first, len) in b.runs() {
                assert!(len > 0 && first >= end && first + len <= CHUNK_PAGES);
                assert!(first == 0 || !b.has(first - 1));
                assert!(first + len == CHUNK_PAGES || !b.has(first + len));
                seen.set_range(first, first + len);
                end = first + len;
            }
            assert_eq!(seen, b);
        }
    }

    #[test]
    fn block_pages_ranges_across_words() {
        let b = pages(&[(60, 130), (511, 512)]);
        assert_eq!(b.count(), 71);
        assert_eq!(b.count_range(0, 64), 4);
        assert_eq!(b.count_range(64, 128), 64);
        assert_eq!(b.count_range(100, 512), 31);
        assert_eq!(b.count_range(0, 0), 0);
        assert!(b.has(129) && !b.has(130) && !b.has(59));
        let mut it = b.iter();
        assert_eq!(it.next(), Some(60));
        assert_eq!(it.nth(69), Some(511));
        assert_eq!(it.next(), None);
    }

    fn fault(va: usize, access: u32) -> bindings::gm_fault {
        bindings::gm_fault {
            va,
            access,
            status: 0,
        }
    }

    /// A batch is sorted and merged per page: a write on a page read elsewhere in the batch
    /// wins, a byte address counts for its page, bad access bits leave a fault out.
    #[test]
    fn a_batch_is_sorted_and_merged_per_page() -> Result {
        let (r, w) = (bindings::GM_ACCESS_READ, bindings::GM_ACCESS_WRITE);
        let faults = [
            fault(VA + 5 * PAGE_SIZE + 12, r),
            fault(VA, r),
            fault(VA + 5 * PAGE_SIZE, w),
            fault(VA + 2 * PAGE_SIZE, 0),
            fault(VA + 3 * PAGE_SIZE, 1 << 7),
            fault(VA + PAGE_SIZE - 1, r),
        ];
        let wanted = wanted_pages(&faults)?;
        assert_eq!(wanted.len(), 2);
        assert_eq!((wanted[0].vpn, wanted[0].access), (VPN, r));
        assert_eq!((wanted[1].vpn, wanted[1].access), (VPN + 5, r | w));
        Ok(())
    }

    #[test]
    fn prefetch_off_serves_only_the_faults() {
        let faulted = pages(&[(8, 9)]);
        let resident = pages(&[(0, 8)]);
        assert_eq!(plan_block(faulted, resident, 0, 0, 512, 512), faulted);
    }

    #[test]
    fn a_lone_fault_is_not_widened() {
        let faulted = pages(&[(40, 41)]);
        let none = BlockPages::default();
        assert_eq!(plan_block(faulted, none, 51, 0, 512, 512), faulted);
    }

    /// 9 of 16 pages (56%) resident or faulting: the 64 KiB block moves, but not what is on
    /// the device already.
    #[test]
    fn a_dense_64k_block_comes_along() {
        let faulted = pages(&[(8, 9)]);
        let resident = pages(&[(0, 8)]);
        assert_eq!(
            plan_block(faulted, resident, 51, 0, 512, 512),
            pages(&[(8, 16)])
        );
        // 8 of 16 is not more than half.
        let faulted = pages(&[(7, 8)]);
        let resident = pages(&[(0, 7)]);
        assert_eq!(plan_block(faulted, resident, 51, 0, 512, 512), faulted);
    }

    /// The largest dense block wins: 301 of 512 pages make the whole 2 MiB move.
    #[test]
    fn the_largest_dense_block_moves() {
        let faulted = pages(&[(300, 301)]);
        let resident = pages(&[(0, 300)]);
        assert_eq!(
            plan_block(faulted, resident, 51, 0, 512, 512),
            pages(&[(300, 512)])
        );
        // A higher threshold stops at a smaller block: 45 of 64 (256..320) is 70%.
        assert_eq!(
            plan_block(faulted, resident, 70, 0, 512, 512),
            pages(&[(300, 320)])
        );
    }

    #[test]
    fn prefetch_stops_at_the_vma() {
        let faulted = pages(&[(300, 301)]);
        let resident = pages(&[(0, 300)]);
        assert_eq!(
            plan_block(faulted, resident, 51, 0, 400, 512),
            pages(&[(300, 400)])
        );
    }

    /// Never more than the device has free: 211 pages would move with the fault at 2 MiB,
    /// the next smaller dense block is 256..320.
    #[test]
    fn prefetch_stops_at_free_memory() {
        let faulted = pages(&[(300, 301)]);
        let resident = pages(&[(0, 300)]);
        assert_eq!(
            plan_block(faulted, resident, 51, 0, 512, 211),
            pages(&[(300, 512)])
        );
        assert_eq!(
            plan_block(faulted, resident, 51, 0, 512, 210),
            pages(&[(300, 320)])
        );
        assert_eq!(plan_block(faulted, resident, 51, 0, 512, 0), faulted);
    }

    /// Faults of several engines count together: two faults in a 16-page block with 7 pages
    /// resident make 9 of 16.
    #[test]
    fn faults_of_one_batch_add_up() {
        let faulted = pages(&[(7, 9)]);
        let resident = pages(&[(0, 7)]);
        assert_eq!(
            plan_block(faulted, resident, 51, 0, 512, 512),
            pages(&[(7, 16)])
        );
    }

    #[test]
    fn on_device_names_the_pages_of_one_device() -> Result {
        let s = setup(u64::MAX)?;
        let base = VPN / CHUNK_PAGES * CHUNK_PAGES;
        s.lpt
            .insert(base + 3, Residency::Device(DevicePage { dev: 7, pfn: 1 }))?;
        s.lpt
            .insert(base + 5, Residency::Device(DevicePage { dev: 8, pfn: 2 }))?;
        s.lpt.insert(base + 6, Residency::Host)?;
        s.lpt
            .insert(base + 511, Residency::Device(DevicePage { dev: 7, pfn: 3 }))?;
        s.lpt
            .insert(base + 512, Residency::Device(DevicePage { dev: 7, pfn: 4 }))?;
        let mut want = pages(&[(3, 4)]);
        want.set(511);
        assert_eq!(BlockPages(s.lpt.on_device(base, CHUNK_PAGES, 7)), want);
        // The table owns no device memory: take the entries out again.
        s.lpt.erase_range(base, base + 513, |_| true, |_| {});
        Ok(())
    }

    #[test]
    fn page_of_a_detached_device_is_an_error() -> Result {
        let s = setup(u64::MAX)?;
        s.lpt
            .insert(VPN, Residency::Device(DevicePage { dev: 9, pfn: 1 }))?;
        assert_eq!(
            cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page),
            Err(EIO)
        );
        assert_eq!(s.fake.take_ops().len(), 0);
        Ok(())
    }
}
