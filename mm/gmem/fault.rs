// SPDX-License-Identifier: GPL-2.0

//! CPU faults on peer-shared ranges.
//!
//! core MM handles a CPU fault on a page that is not present in a peer-shared VMA as an
//! anonymous fault, with two calls into GMEM around it (see `do_anonymous_page()`):
//!
//! - [`cpu_fault_begin`], after the new host page is allocated and before the page table lock
//!   is taken (it may sleep).  It claims the page's entry in the logical page table (marks it
//!   busy) and, if the page lives on a device, stops the device's access to it, copies it into
//!   the new host page and frees the device page.  If another fault or migration owns the entry
//!   it returns [`Begin::Busy`]: the fault returns without installing anything and the access
//!   is retried, so nobody waits with a lock held.
//! - [`cpu_fault_end`], under the page table lock once the PTE is installed (or when core MM
//!   gave up), records the page as host-resident and releases the entry.
//!
//! If core MM gives up after a page was copied home (which only happens when the address space
//! is being torn down), the copy is lost with the address space.
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
//! again.  A copy to the device that fails after the CPU mapping is gone loses the page's data
//! (it reads as zeroes afterwards); only a device that stopped working fails copies.

use crate::{
    address_space::AddressSpace,
    context::Context,
    device::{DeviceList, Stats},
    lpt::{DevicePage, GmMapping, LogicalPageTable, ParkedPage, Residency},
    migrate::{to_device, PinnedPage, CHUNK_PAGES},
};
use kernel::{
    bindings,
    ffi::{c_uint, c_ulong},
    mm::{
        virt::{flags, VmaRef},
        MmWithUser,
    },
    page::{Page, PAGE_SIZE},
    prelude::*,
    time::{delay::fsleep, Delta},
};

/// What [`cpu_fault_begin`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Begin {
    /// The entry is ours; install the host page, then call [`cpu_fault_end`].
    Proceed,
    /// Someone else is moving the page: return and let the access retry.
    Busy,
}

/// Claims page `vpn` (virtual address `va`) for a CPU fault that installs `dst`.
pub(crate) fn cpu_fault_begin(
    lpt: &LogicalPageTable,
    devices: &DeviceList,
    vpn: usize,
    va: usize,
    dst: &Page,
) -> Result<Begin> {
    loop {
        let from_device = {
            let mut guard = lpt.lock();
            match guard.get_mut(vpn) {
                Some(m) if m.busy() => return Ok(Begin::Busy),
                Some(m) => {
                    m.set_busy(true);
                    match m.residency() {
                        Residency::Device(page) => {
                            // The page is ours to move; until it is installed it is nowhere.
                            m.set(Residency::Nowhere);
                            Some(page)
                        }
                        Residency::Parked(raw) => {
                            m.set(Residency::Nowhere);
                            drop(guard);
                            // SAFETY: the entry gave up the parked page; it is ours.
                            let parked = unsafe { ParkedPage::from_raw(raw) };
                            copy_page(&parked.page(), dst)?;
                            return Ok(Begin::Proceed);
                        }
                        _ => None,
                    }
                }
                None => {
                    drop(guard);
                    match lpt.insert_mapping(vpn, GmMapping::claimed()) {
                        // Raced with another fault on the same page: look again.
                        Err(e) if e == EBUSY => continue,
                        Err(e) => return Err(e),
                        Ok(()) => return Ok(Begin::Proceed),
                    }
                }
            }
        };
        let Some(page) = from_device else {
            return Ok(Begin::Proceed);
        };
        return match bring_home(devices, va, page, dst) {
            Ok(()) => Ok(Begin::Proceed),
            Err(e) => {
                // The device copy is still good: give the entry its page back.
                let mut guard = lpt.lock();
                match guard.get_mut(vpn) {
                    Some(m) => {
                        m.set(Residency::Device(page));
                        m.set_busy(false);
                    }
                    // Unmapped meanwhile: nobody else knows the device page.
                    None => {
                        drop(guard);
                        devices.batch().push(va, page);
                    }
                }
                Err(e)
            }
        };
    }
}

/// Copies host page `src` into host page `dst`, in one go: both are mapped at once, as
/// `copy_highpage()` does.  (Through a bounce buffer, 256 bytes at a time, the copy took a
/// quarter of a prefetch to a host node.)
pub(crate) fn copy_page(src: &Page, dst: &Page) -> Result {
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
    Ok(())
}

/// Stops the device's access to `page`, copies it into `dst` and frees it.
fn bring_home(devices: &DeviceList, va: usize, page: DevicePage, dst: &Page) -> Result {
    // A page can only live on an attached device; a detached device took its pages with it.
    devices.get(page.dev).ok_or(EIO)?.move_home(va, page, dst)
}

/// Ends the CPU fault on page `vpn`: records it as host-resident if `installed`.
pub(crate) fn cpu_fault_end(lpt: &LogicalPageTable, vpn: usize, installed: bool) {
    let mut guard = lpt.lock();
    if let Some(m) = guard.get_mut(vpn) {
        if m.busy() {
            if installed {
                m.set(Residency::Host);
            }
            m.set_busy(false);
        }
    }
}

/// Pages a device fault of a range moves before it checks for a pending signal.
const SIGNAL_CHECK: usize = 16;

/// Bytes of a chunk (see `crate::migrate`).
const CHUNK_BYTES: usize = CHUNK_PAGES * PAGE_SIZE;

/// Makes `len` bytes at `start` resident on the context's device and mapped there.
///
/// `EINVAL` for an unaligned or empty range or unknown `access` bits, `EFAULT` for an address
/// outside the process's peer-shared mappings or without the rights `access` asks for, `ESRCH`
/// once the process is gone, `ENOMEM` when the device is full.  Pages before the failing one
/// stay done.
pub(crate) fn dev_fault(ctx: &Context, start: usize, len: usize, access: c_uint) -> Result {
    let known = bindings::GM_ACCESS_READ | bindings::GM_ACCESS_WRITE;
    if start % PAGE_SIZE != 0 || len == 0 || len % PAGE_SIZE != 0 {
        return Err(EINVAL);
    }
    if access == 0 || access & !known != 0 {
        return Err(EINVAL);
    }
    // A range that reaches past the top of the address space is outside every mapping.
    let end = start.checked_add(len).ok_or(EFAULT)?;
    ctx.with_address_space(|this, mm| {
        let guard = mm.mmap_read_lock();
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
                moved += to_device(this, mm, ctx, vma, va, n, prot)?;
                Stats::add(&ctx.dev.stats.faults, n);
                va = chunk_end;
            }
        }
        Ok(())
    })
}

/// Claims the entry of `vpn` for a move, if it still is what the caller `seen`: it becomes
/// busy and nowhere.  `false` if someone else got there first.
pub(crate) fn claim(this: &AddressSpace, vpn: usize, seen: Option<Residency>) -> Result<bool> {
    let Some(seen) = seen else {
        return match this.lpt.insert_mapping(vpn, GmMapping::claimed()) {
            Ok(()) => Ok(true),
            Err(e) if e == EBUSY => Ok(false),
            Err(e) => Err(e),
        };
    };
    Ok(this.lpt.claim_if(vpn, seen, |_| {}))
}

/// Like [`claim`], for a move whose source is the host page the caller pinned before it
/// claimed: only if that page is still the one mapped.  `seq` is from
/// [`AddressSpace::read_begin`], taken before the pin; `still_mapped` looks at the CPU page
/// table.
///
/// The entry may have been `seen` as host-resident, then left (another device took the page)
/// and come back (a CPU fault brought it home into a new page, and the CPU wrote it) while the
/// caller held the old page: the claim alone would succeed, and the old page's stale data
/// would be copied over the new one.  Leaving the CPU page table takes an invalidation, so
/// the page table is only looked at when the sequence moved: one sequence covers the whole
/// process, and a process that keeps mapping and unmapping elsewhere would otherwise never
/// get a claim through.
pub(crate) fn claim_since(
    this: &AddressSpace,
    vpn: usize,
    seen: Option<Residency>,
    seq: c_ulong,
    still_mapped: impl FnOnce() -> bool,
) -> Result<bool> {
    // The sequence is read in the claim's own critical section: a host page the fault saw
    // needs no second trip through the lock.
    let mut changed = true;
    let claimed = match seen {
        Some(seen) => this
            .lpt
            .claim_if(vpn, seen, |lpt| changed = this.changed(lpt, seq)),
        None => {
            let claimed = claim(this, vpn, None)?;
            changed = claimed && this.changed(&this.lpt.lock(), seq);
            claimed
        }
    };
    if !claimed {
        return Ok(false);
    }
    if changed && !still_mapped() {
        // Nobody else touched the entry while it was ours: put it back as it was.
        unclaim(this, vpn, seen.unwrap_or(Residency::Nowhere));
        return Ok(false);
    }
    Ok(true)
}

/// Gives up a claim, recording where the page lives now.  `false` if the entry went meanwhile
/// (the range was unmapped): then nothing recorded `now`.
pub(crate) fn unclaim(this: &AddressSpace, vpn: usize, now: Residency) -> bool {
    this.lpt.end_claim(vpn, now)
}

/// Records device page `pfn`, now mapped at `va`, as where page `vpn` lives.  `false` if an
/// invalidation ran since `seq`: the device mapping is removed again and the fault retried.
fn complete(
    this: &AddressSpace,
    ctx: &Context,
    vpn: usize,
    va: usize,
    pfn: u64,
    seq: c_ulong,
) -> bool {
    let page = DevicePage {
        dev: ctx.dev.id,
        pfn,
    };
    if let Some(memory) = ctx.dev.memory() {
        memory.set_owner(pfn, core::ptr::from_ref(this) as usize, vpn);
    }
    let mut guard = this.lpt.lock();
    let Some(m) = guard.get_mut(vpn) else {
        // Unmapped meanwhile: nobody else knows the page.
        drop(guard);
        ctx.unmap_va(va, PAGE_SIZE);
        ctx.dev.free_page(pfn);
        return false;
    };
    m.set(Residency::Device(page));
    m.set_busy(false);
    if this.changed(&guard, seq) {
        drop(guard);
        ctx.unmap_va(va, PAGE_SIZE);
        return false;
    }
    true
}

/// Makes the page at `va` resident on the context's device and maps it with `prot`.  Returns
/// whether a page moved (`false`: it was on the device already and is mapped again).
pub(crate) fn fault_page(
    this: &AddressSpace,
    mm: &MmWithUser,
    ctx: &Context,
    vma: &VmaRef,
    va: usize,
    prot: c_uint,
) -> Result<bool> {
    let vpn = va / PAGE_SIZE;
    loop {
        let seen = {
            let guard = this.lpt.lock();
            guard.get(vpn).map(|m| (m.residency(), m.busy()))
        };
        let (seen, busy) = match seen {
            Some((r, busy)) => (Some(r), busy),
            None => (None, false),
        };
        if busy {
            // A CPU fault or another device is moving the page: it finishes without waiting
            // for anything we hold.
            fsleep(Delta::from_micros(20));
            continue;
        }
        match seen {
            Some(Residency::Device(page)) if page.dev == ctx.dev.id => {
                // Mapped again under a claim: a move that took the page meanwhile (a prefetch
                // home, an eviction) would free it while the device maps it, and a job running
                // on another thread could write into the freed page through that mapping.
                if !claim(this, vpn, seen)? {
                    continue;
                }
                let seq = this.read_begin();
                if let Err(e) = ctx.map(va, page.pfn, prot) {
                    unclaim(this, vpn, Residency::Device(page));
                    return Err(e);
                }
                // `complete()` records the page's owner again, which marks it used.
                if complete(this, ctx, vpn, va, page.pfn, seq) {
                    return Ok(false);
                }
            }
            Some(Residency::Parked(raw)) => {
                let pfn = ctx.dev.alloc_page()?;
                if !claim(this, vpn, seen)? {
                    ctx.dev.free_page(pfn);
                    continue;
                }
                // SAFETY: the claim took the parked page out of the entry: it is ours.
                let parked = unsafe { ParkedPage::from_raw(raw) };
                let seq = this.read_begin();
                if let Err(e) = ctx.place(va, pfn, Some(&parked.page()), prot) {
                    ctx.dev.free_page(pfn);
                    let raw = parked.into_raw();
                    if !unclaim(this, vpn, Residency::Parked(raw)) {
                        // SAFETY: nobody recorded it: still ours.
                        drop(unsafe { ParkedPage::from_raw(raw) });
                    }
                    return Err(e);
                }
                drop(parked);
                if complete(this, ctx, vpn, va, pfn, seq) {
                    return Ok(true);
                }
            }
            Some(Residency::Device(page)) => {
                // A page can only live on an attached device.
                let peer = this.devices.get(page.dev).ok_or(EIO)?;
                let bounce = Page::alloc_page(GFP_KERNEL)?;
                let pfn = ctx.dev.alloc_page()?;
                if !claim(this, vpn, seen)? {
                    ctx.dev.free_page(pfn);
                    continue;
                }
                if let Err(e) = peer.move_home(va, page, &bounce) {
                    ctx.dev.free_page(pfn);
                    unclaim(this, vpn, Residency::Device(page));
                    return Err(e);
                }
                let seq = this.read_begin();
                if let Err(e) = ctx.place(va, pfn, Some(&bounce), prot) {
                    ctx.dev.free_page(pfn);
                    unclaim(this, vpn, Residency::Nowhere);
                    return Err(e);
                }
                if complete(this, ctx, vpn, va, pfn, seq) {
                    return Ok(true);
                }
            }
            _ => {
                // A page the CPU touched, or any page of a forked process, may be swapped
                // out: fault it in.  Otherwise only a present page counts.
                let maybe_host = matches!(seen, Some(Residency::Host)) || this.inherited();
                let pinned = this.read_begin();
                let host = match PinnedPage::get(mm, va, false)? {
                    Some(page) => Some(page),
                    None if maybe_host => PinnedPage::get(mm, va, true)?,
                    None => None,
                };
                let pfn = ctx.dev.alloc_page()?;
                // After the fault-in above, a present page has a `Host` entry.
                let seen = if host.is_some() && seen.is_none() && maybe_host {
                    this.lpt.residency(vpn)
                } else {
                    seen
                };
                let still_mapped = || host.as_ref().is_none_or(|h| h.still_mapped(mm, va));
                if !claim_since(this, vpn, seen, pinned, still_mapped)? {
                    ctx.dev.free_page(pfn);
                    continue;
                }
                if host.is_some() {
                    // From here on a CPU access faults, finds the entry busy and retries until
                    // the page is on the device; the pin keeps the page for the copy.
                    vma.zap_vma_range(va, PAGE_SIZE);
                }
                let seq = this.read_begin();
                let placed = ctx.place(va, pfn, host.as_ref().map(PinnedPage::page), prot);
                drop(host);
                if let Err(e) = placed {
                    ctx.dev.free_page(pfn);
                    unclaim(this, vpn, Residency::Nowhere);
                    return Err(e);
                }
                if complete(this, ctx, vpn, va, pfn, seq) {
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
        assert_eq!(
            cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page)?,
            Begin::Proceed
        );
        assert_eq!(s.lpt.residency(VPN), Some(Residency::Nowhere));
        cpu_fault_end(&s.lpt, VPN, true);
        assert_eq!(s.lpt.residency(VPN), Some(Residency::Host));
        assert_eq!(s.fake.take_ops().len(), 0);
        Ok(())
    }

    #[test]
    fn busy_entry_makes_the_fault_retry() -> Result {
        let s = setup(u64::MAX)?;
        assert_eq!(
            cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page)?,
            Begin::Proceed
        );
        // A second fault on the same page while the first is under way.
        assert_eq!(
            cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page)?,
            Begin::Busy
        );
        cpu_fault_end(&s.lpt, VPN, false);
        // The first fault gave up: the page is still nowhere, and free to claim again.
        assert_eq!(s.lpt.residency(VPN), Some(Residency::Nowhere));
        assert_eq!(
            cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page)?,
            Begin::Proceed
        );
        Ok(())
    }

    #[test]
    fn device_page_comes_home() -> Result {
        let s = setup(u64::MAX)?;
        let page = DevicePage { dev: 7, pfn: 0x42 };
        s.lpt.insert(VPN, Residency::Device(page))?;
        assert_eq!(
            cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page)?,
            Begin::Proceed
        );
        // The device stopped accessing the page before it was copied, then freed it.
        assert_eq!(
            s.fake.take_ops(),
            [Op::Unmap(VA, 0x42), Op::CopyToHost(0x42), Op::Free(0x42)]
        );
        assert_eq!(byte_at(&s.page, 0)?, 0x42);
        assert_eq!(byte_at(&s.page, PAGE_SIZE - 1)?, 0x42);
        cpu_fault_end(&s.lpt, VPN, true);
        assert_eq!(s.lpt.residency(VPN), Some(Residency::Host));
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
