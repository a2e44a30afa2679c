// SPDX-License-Identifier: GPL-2.0

//! Contexts (`gm_context`): one device attached to one process's address space.
//!
//! A driver attaches a device to the calling process with `gm_as_create()` and
//! `gm_as_attach()`, typically from an ioctl, and gets a context: the device's page table for
//! the process (`pmap_create`), a reservation of the process's virtual address range on the
//! device (`peer_va_alloc_fixed`), and a place in the address space's device list, through which
//! the core reaches the device to unmap, copy and free its pages.
//!
//! The driver's handle keeps the context, and the context keeps its device and (only the
//! memory of) the process's `mm_struct`.  A context ends in one of two ways:
//!
//! - the driver detaches it (`gm_context_detach()`): the device's pages of a process that still
//!   runs are brought home first, so the process keeps its data;
//! - the process goes away: exit releases the device's pages with the rest of the address space
//!   and then tells the context (`address_space_gone`); device faults on it fail with `ESRCH`
//!   and detach has nothing left to do.
//!
//! The context's mutex orders the two: whoever holds it sees the address space alive or knows
//! it is gone, because the address space waits for the mutex before it is freed.

use crate::{
    address_space::{cpu_fault_in, AddressSpace},
    device::{Device, DeviceOps, Stats},
    devmem::DmemCgroup,
    fault::{check_fault, dev_fault, dev_fault_batch},
    lpt::{DeviceId, DevicePage, Residency},
    policy::device_bit,
    trace,
};
use core::{
    ptr::NonNull,
    sync::atomic::{AtomicBool, Ordering},
};
use kernel::{
    bindings,
    error::to_result,
    ffi::{c_uint, c_ulong, c_void},
    mm::{Mm, MmWithUser},
    new_mutex, new_spinlock,
    page::{BorrowedPage, Page, PAGE_SIZE},
    prelude::*,
    sync::{aref::ARef, Arc, Mutex, SpinLock},
};

/// A device attached to an address space.
///
/// # Invariants
///
/// `pmap` is the device page table `pmap_create` returned for this context, destroyed in
/// `drop`.  While `attached` holds `Some(as)`, `as` is the live address space of `mm` and this
/// context is (or was just) in its device list.
#[pin_data(PinnedDrop)]
pub(crate) struct Context {
    pub(crate) dev: Arc<Device>,
    pmap: *mut c_void,
    mm: ARef<Mm>,
    /// The range reserved with `peer_va_alloc_fixed` (empty if the device has no such op).
    va_range: (usize, usize),
    #[pin]
    attached: Mutex<Option<NonNull<AddressSpace>>>,
    /// Ranges a running job holds (`gm_context_hold()`): never evicted.
    #[pin]
    holds: SpinLock<KVec<(usize, usize)>>,
    /// Set by `detach`: no page of the context is evicted any more.
    detaching: AtomicBool,
    /// The dmem cgroup of the task that attached the device: it pays for the device memory
    /// the context's faults and prefetches allocate, whichever thread runs them.
    dmem: Option<DmemCgroup>,
}

// SAFETY: the driver's operations may be called from any thread (`struct gm_mmu`); the address
// space pointer is only used under the mutex.
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}

impl Context {
    fn raw_dev(&self) -> *mut bindings::gm_dev {
        self.dev.as_raw()
    }

    /// Invalidates the device TLB for `len` bytes at `va`.
    fn unmap_tlb(&self, va: usize, len: usize) {
        if let Some(invl) = self.dev.mmu().tlb_invl {
            // SAFETY: `tlb_invl` is required; `pmap` is this context's page table.
            unsafe { invl(self.raw_dev(), self.pmap, va as c_ulong, len as c_ulong) };
        }
    }

    /// Records that a job of the driver uses `[start, start + len)`: eviction leaves its
    /// pages alone until [`Context::unhold`] (see `gm_context_hold()`).  Never sleeps.
    pub(crate) fn hold(&self, start: usize, len: usize) -> Result {
        self.holds
            .lock()
            .push((start, len), GFP_ATOMIC)
            .map_err(|_| ENOMEM)
    }

    /// Ends one [`Context::hold`] of the same range.
    pub(crate) fn unhold(&self, start: usize, len: usize) {
        let mut holds = self.holds.lock();
        if let Some(i) = holds.iter().position(|&h| h == (start, len)) {
            let _ = holds.remove(i);
        }
    }

    /// The driver's page table of this context.
    pub(crate) fn pmap(&self) -> *mut c_void {
        self.pmap
    }

    /// Makes `len` bytes at `start` resident on the device and mapped there, with the rights
    /// `access` asks for (see [`check_fault`] and [`dev_fault`] for the errors); `ESRCH` once
    /// the process is gone.  Host pages the device accesses in place (`MADV_ACCESSED_BY`) are
    /// mapped where they are.
    pub(crate) fn fault(&self, start: usize, len: usize, access: c_uint) -> Result {
        self.fault_or_move(start, len, access, true)
    }

    /// [`Context::fault`], or with `in_place` false a move of every page (`MADV_PREFETCH`).
    fn fault_or_move(&self, start: usize, len: usize, access: c_uint, in_place: bool) -> Result {
        let end = check_fault(start, len, access)?;
        self.with_address_space(|this, mm| dev_fault(this, mm, self, start, end, access, in_place))
    }

    /// Serves a batch of device faults (see `gm_dev_fault_batch()`): `EINVAL` for an empty
    /// batch or one of more than `GM_FAULT_BATCH_MAX`, and nothing is written then; otherwise
    /// each fault's status is written and the first error (in address order) returned.
    pub(crate) fn fault_batch(&self, faults: &mut [bindings::gm_fault]) -> Result {
        if faults.is_empty() || faults.len() > bindings::GM_FAULT_BATCH_MAX as usize {
            return Err(EINVAL);
        }
        let mut started = false;
        let result = self.with_address_space(|this, mm| {
            started = true;
            dev_fault_batch(this, mm, self, faults)
        });
        if let (false, Err(e)) = (started, result) {
            // The process is gone.
            faults.iter_mut().for_each(|f| f.status = e.to_errno());
        }
        result
    }

    /// Runs `f` on the address space this context is attached to, with a user of its mm.
    ///
    /// Fails with `ESRCH` once the process is gone.
    pub(crate) fn with_address_space<R>(
        &self,
        f: impl FnOnce(&AddressSpace, &MmWithUser) -> Result<R>,
    ) -> Result<R> {
        let attached = self.attached.lock();
        let this = attached.ok_or(ESRCH)?;
        // Dropped with `mmput_async()`: if the process exited meanwhile this may be the last
        // user, and the exit of the mm (`gm_as_exit()`) takes `attached`, held here.
        let mm = self
            .mm
            .mmget_not_zero()
            .map(MmWithUser::into_mmput_async)
            .ok_or(ESRCH)?;
        // SAFETY: by the type invariant `this` is alive while it is in `attached`, and it
        // cannot go while we hold the mutex (see the module documentation).
        f(unsafe { this.as_ref() }, &mm)
    }

    /// Brings the device's pages home and leaves the address space.
    pub(crate) fn detach(&self) {
        let mut attached = self.attached.lock();
        let Some(this) = attached.take() else {
            return;
        };
        // SAFETY: as in `with_address_space`.
        let this = unsafe { this.as_ref() };
        // An eviction that claimed a page before it saw the flag may still give the page
        // back to the device (a second chance) after a look at the logical page table: so
        // look again until a pass finds nothing of the device, with no eviction under way.
        self.detaching.store(true, Ordering::Release);
        // Host pages mapped in place are unmapped (where the attributes allow it, best effort:
        // a failed allocation leaves them to `pmap_destroy`).  Then the attributes that name
        // the device go, and its pins with them.  A pin that comes later is refused (`pin`
        // looks at the flag under the same lock as this).
        let bit = device_bit(self.dev.id);
        let _ = this.policy.for_each_run(0, usize::MAX / PAGE_SIZE, |run| {
            if run.attrs.accessed_by & bit != 0 {
                self.unmap_va(run.first * PAGE_SIZE, (run.end - run.first) * PAGE_SIZE);
            }
            Ok(())
        });
        this.policy
            .forget(self.dev.id, |_, pages| self.dev.unpin(pages));
        // Dropped with `mmput_async()`, as in `with_address_space`: the exit of the mm would
        // drop the address space under this detach, and wait for `attached`.
        if let Some(mm) = self.mm.mmget_not_zero().map(MmWithUser::into_mmput_async) {
            let _lock = mm.mmap_read_lock();
            for _ in 0..DETACH_PASSES {
                this.wait_moves();
                let mut home = KVec::new();
                this.lpt
                    .for_each_device_page(0, usize::MAX / PAGE_SIZE + 1, |vpn, page| {
                        if page.dev == self.dev.id {
                            // Best effort: a page that cannot come home is released below.
                            let _ = home.push(vpn * PAGE_SIZE, GFP_KERNEL);
                        }
                    });
                if home.is_empty() {
                    break;
                }
                for addr in home {
                    // SAFETY: the mmap lock is held and `mm` has a user.
                    let _ = unsafe { cpu_fault_in(mm.as_raw(), addr) };
                }
            }
        }
        // An eviction under way ends (parking its page, or giving it back) before the device's
        // pages are taken: without a user of the mm too.
        this.wait_moves();
        // What could not come home (no memory, or no VMA) is lost with the device.
        let id = self.dev.id;
        this.lpt.erase_range(
            0,
            usize::MAX / PAGE_SIZE + 1,
            |r| matches!(r, Residency::Device(p) if p.dev == id),
            |pages| {
                for &(vpn, r) in pages {
                    if let Residency::Device(page) = r {
                        self.unmap(vpn * PAGE_SIZE, page);
                        self.free(page);
                    }
                }
            },
        );
        // So are its read-only copies (the host holds the data).  Evictions are over, and a
        // copy being made now is one of the device's own faults, which its driver stopped;
        // but another thread may be dropping some (a CPU write, an invalidation): it frees
        // them through the device list before its claims end, so wait for those first.
        while this.lpt.erase_copies(
            0,
            usize::MAX / PAGE_SIZE + 1,
            Some(id),
            |pages| self.unmap_many(pages),
            |pages| pages.iter().for_each(|&(_, page)| self.free(page)),
        ) != 0
        {
            this.lpt.wait_device_copies_unclaimed(id);
        }
        this.devices.detach(id);
    }
}

/// Passes of `detach` over the logical page table, at most: a page can only come back to the
/// device through an eviction that was under way when the detach began.
const DETACH_PASSES: usize = 8;

impl DeviceOps for Context {
    fn id(&self) -> DeviceId {
        self.dev.id
    }

    fn pin(&self, pages: usize) -> Result {
        // Leaving the address space: its pins are forgotten (see `detach`).
        if self.detaching.load(Ordering::Acquire) {
            return Err(EINVAL);
        }
        self.dev.pin(pages)
    }

    fn unpin(&self, pages: usize) {
        self.dev.unpin(pages)
    }

    /// Allocates a device page for this context, charged to its dmem cgroup.
    fn alloc_page(&self) -> Result<u64> {
        crate::evict::alloc_page(&self.dev, self.dmem.as_ref())
    }

    /// Removes the device's mappings of `len` bytes at `va` and invalidates its TLB for them.
    fn unmap_va(&self, va: usize, len: usize) {
        if let Some(release) = self.dev.mmu().pmap_release {
            // SAFETY: `pmap_release` is required (checked at `gm_dev_create()`); `pmap` is this
            // context's page table.
            unsafe { release(self.raw_dev(), self.pmap, va as c_ulong, len as c_ulong) };
        }
        self.unmap_tlb(va, len);
        trace::device_unmap(self.dev.id, va, len);
    }

    /// Maps device page `pfn` at `va`.
    fn map(&self, va: usize, pfn: u64, prot: c_uint) -> Result {
        let enter = self.dev.mmu().pmap_enter.ok_or(EINVAL)?;
        // SAFETY: `pmap` is this context's page table; the driver checks `pfn` is its own.
        to_result(unsafe { enter(self.raw_dev(), self.pmap, va as c_ulong, pfn, prot) })
    }

    fn maps_host(&self) -> bool {
        self.dev.mmu().pmap_enter_host.is_some()
    }

    /// Maps host page `page` at `va`, in place.
    fn map_host(&self, va: usize, page: &Page, prot: c_uint) -> Result {
        let enter = self.dev.mmu().pmap_enter_host.ok_or(EINVAL)?;
        // SAFETY: `pmap` is this context's page table; the caller holds `page` for the call,
        // and removes the mapping before the CPU page table stops mapping it.
        to_result(unsafe {
            enter(
                self.raw_dev(),
                self.pmap,
                va as c_ulong,
                page.as_ptr(),
                prot,
            )
        })
    }

    /// Fills the device pages of `moves` from their host pages (zeroes where there is none)
    /// and maps them at `va`, `va + PAGE_SIZE`, ...: one `peer_map` for the run, or
    /// `prepare_page` and `pmap_enter` per page.  On an error no page of the run stays mapped.
    fn place_run(&self, va: usize, moves: &[bindings::gm_move], prot: c_uint) -> Result {
        let mmu = self.dev.mmu();
        let placed = if let Some(peer_map) = mmu.peer_map {
            // SAFETY: `pmap` is this context's page table; the pages of `moves` are held by
            // the caller for the duration of the call.
            to_result(unsafe {
                peer_map(
                    self.raw_dev(),
                    self.pmap,
                    va as c_ulong,
                    moves.as_ptr(),
                    moves.len() as c_uint,
                    prot,
                )
            })
        } else {
            let prepare = mmu.prepare_page.ok_or(EINVAL)?;
            moves.iter().enumerate().try_for_each(|(i, m)| {
                // SAFETY: as above; `m.pfn` was allocated for this move.
                to_result(unsafe { prepare(self.raw_dev(), m.pfn, m.page) })?;
                self.map(va + i * PAGE_SIZE, m.pfn, prot)
            })
        };
        if let Err(e) = placed {
            self.unmap_va(va, moves.len() * PAGE_SIZE);
            return Err(e);
        }
        let zeroed = moves.iter().filter(|m| m.page.is_null()).count();
        Stats::add(&self.dev.stats.zero_fills, zeroed);
        Stats::add(&self.dev.stats.migrations_to_dev, moves.len() - zeroed);
        let from = moves
            .iter()
            .find_map(|m| NonNull::new(m.page))
            .map_or(trace::NO_NODE, |page| {
                // SAFETY: the caller holds the pages of `moves` for the duration of the call.
                unsafe { BorrowedPage::from_raw(page) }.nid()
            });
        trace::migrate(va, moves.len(), zeroed, from, self.dev.id.into());
        Ok(())
    }

    fn count_faults(&self, n: usize) {
        Stats::add(&self.dev.stats.faults, n);
    }

    fn count_batch(&self, prefetched: usize) {
        Stats::inc(&self.dev.stats.fault_batches);
        Stats::add(&self.dev.stats.prefetched, prefetched);
    }

    fn prefetch_threshold(&self) -> u32 {
        self.dev.prefetch_threshold()
    }

    fn free_pages(&self) -> usize {
        self.dev.free_pages()
    }

    fn unmap(&self, va: usize, _page: DevicePage) {
        self.unmap_va(va, PAGE_SIZE);
    }

    fn copy_to_host(&self, page: DevicePage, dst: &Page) -> Result {
        let copy = self.dev.mmu().copy_to_host.ok_or(EINVAL)?;
        // SAFETY: `page` is a page of this device that the caller owns; `dst` is a page the
        // caller holds.
        to_result(unsafe { copy(self.raw_dev(), page.pfn, dst.as_ptr()) })?;
        Stats::inc(&self.dev.stats.migrations_to_host);
        Ok(())
    }

    fn free(&self, page: DevicePage) {
        self.dev.free_page(page.pfn);
    }

    fn move_home(&self, va: usize, page: DevicePage, dst: &Page) -> Result {
        self.copy_run_home(va, &[(page, dst)])?;
        self.free(page);
        Ok(())
    }

    fn copy_run_home(&self, va: usize, run: &[(DevicePage, &Page)]) -> Result {
        let mmu = self.dev.mmu();
        let Some(peer_unmap) = mmu.peer_unmap else {
            // One release and one invalidation for the run, then the copies: the device must
            // not write after a copy, or the write is lost.
            self.unmap_va(va, run.len() * PAGE_SIZE);
            run.iter()
                .try_for_each(|&(page, dst)| self.copy_to_host(page, dst))?;
            if let Some((_, dst)) = run.first() {
                trace::migrate(va, run.len(), 0, self.dev.id.into(), dst.nid());
            }
            return Ok(());
        };
        let mut moves = KVec::with_capacity(run.len(), GFP_KERNEL)?;
        for &(page, dst) in run {
            moves.push(
                bindings::gm_move {
                    pfn: page.pfn,
                    page: dst.as_ptr(),
                },
                GFP_KERNEL,
            )?;
        }
        // SAFETY: `pmap` is this context's page table; the caller owns the device pages and
        // holds the host pages.
        to_result(unsafe {
            peer_unmap(
                self.raw_dev(),
                self.pmap,
                va as c_ulong,
                moves.as_ptr(),
                moves.len() as c_uint,
            )
        })?;
        trace::device_unmap(self.dev.id, va, run.len() * PAGE_SIZE);
        Stats::add(&self.dev.stats.migrations_to_host, run.len());
        if let Some((_, dst)) = run.first() {
            trace::migrate(va, run.len(), 0, self.dev.id.into(), dst.nid());
        }
        Ok(())
    }

    fn moved(&self, page: DevicePage, space: usize, vpn: usize) {
        if let Some(memory) = self.dev.memory() {
            memory.set_owner(page.pfn, space, vpn);
        }
    }

    fn owned_by(&self, page: DevicePage, space: usize, vpn: usize) -> bool {
        self.dev
            .memory()
            .is_none_or(|memory| memory.owned_by(page.pfn, space, vpn))
    }

    fn held(&self, va: usize) -> bool {
        self.detaching.load(Ordering::Acquire)
            || self
                .holds
                .lock()
                .iter()
                .any(|&(start, len)| va >= start && va - start < len)
    }

    fn clear_young(&self, va: usize) -> bool {
        match self.dev.mmu().pmap_clear_young {
            // SAFETY: `pmap` is this context's page table.
            Some(clear) => unsafe { clear(self.raw_dev(), self.pmap, va as c_ulong) },
            None => false,
        }
    }

    fn unmap_many(&self, pages: &[(usize, DevicePage)]) {
        let mmu = self.dev.mmu();
        if let Some(release) = mmu.pmap_release {
            for &(va, _) in pages {
                // SAFETY: `pmap_release` is required; `pmap` is this context's page table.
                unsafe {
                    release(
                        self.raw_dev(),
                        self.pmap,
                        va as c_ulong,
                        PAGE_SIZE as c_ulong,
                    )
                };
            }
        }
        // Contiguous pages make one range; the device invalidates a batch's ranges at once.
        const BATCH: usize = 64;
        for batch in pages.chunks(BATCH) {
            let mut ranges = [bindings::gm_va_range { start: 0, len: 0 }; BATCH];
            let mut n = 0;
            for &(va, _) in batch {
                if n > 0 && ranges[n - 1].start + ranges[n - 1].len == va {
                    ranges[n - 1].len += PAGE_SIZE;
                } else {
                    ranges[n] = bindings::gm_va_range {
                        start: va,
                        len: PAGE_SIZE,
                    };
                    n += 1;
                }
            }
            for r in &ranges[..n] {
                trace::device_unmap(self.dev.id, r.start, r.len);
            }
            match mmu.tlb_invl_coalesced {
                // SAFETY: `ranges[..n]` are valid ranges of this context's page table.
                Some(invl) => unsafe {
                    invl(self.raw_dev(), self.pmap, ranges.as_ptr(), n as c_uint)
                },
                None => {
                    for r in &ranges[..n] {
                        self.unmap_tlb(r.start, r.len);
                    }
                }
            }
        }
    }

    fn address_space_gone(&self) {
        *self.attached.lock() = None;
    }

    fn prefetch(&self, start: usize, end: usize) -> Result {
        self.fault_or_move(start, end - start, bindings::GM_ACCESS_READ, false)
    }
}

#[pinned_drop]
impl PinnedDrop for Context {
    fn drop(self: Pin<&mut Self>) {
        let mmu = self.dev.mmu();
        // SAFETY: the context maps nothing any more; by the type invariant `pmap` is this
        // context's page table, destroyed only here, after its VA reservation is given back.
        unsafe {
            if let (Some(free), true) = (mmu.peer_va_free, self.va_range.1 > 0) {
                free(
                    self.raw_dev(),
                    self.pmap,
                    self.va_range.0 as c_ulong,
                    self.va_range.1 as c_ulong,
                );
            }
            if let Some(destroy) = mmu.pmap_destroy {
                destroy(self.raw_dev(), self.pmap);
            }
        }
    }
}

pub(crate) fn attach(this: &AddressSpace, dev: Arc<Device>) -> Result<Arc<Context>> {
    let mmu = dev.mmu();
    let create = mmu.pmap_create.ok_or(EINVAL)?;
    let mut pmap: *mut c_void = core::ptr::null_mut();
    // SAFETY: `create` is the driver's operation; `pmap` is writable.
    to_result(unsafe { create(dev.as_raw(), &mut pmap) })?;
    // The whole user address range of the process: any of it may become peer-shared.
    // SAFETY: `mm` is the live mm of current (the caller's safety requirement).
    let task_size = unsafe { (*this.mm()).__bindgen_anon_1.task_size };
    // SAFETY: reading a sysctl value.
    let low = unsafe { bindings::mmap_min_addr }.max(PAGE_SIZE);
    let mut va_range = (0, 0);
    let reserved = match mmu.peer_va_alloc_fixed {
        Some(alloc) => {
            // SAFETY: `pmap` was just created for this context.
            let r = to_result(unsafe {
                alloc(
                    dev.as_raw(),
                    pmap,
                    low as c_ulong,
                    (task_size - low) as c_ulong,
                )
            });
            va_range = (low, task_size - low);
            r
        }
        None => Ok(()),
    };
    if let Err(e) = reserved {
        if let Some(destroy) = mmu.pmap_destroy {
            // SAFETY: `pmap` maps nothing and is not used again.
            unsafe { destroy(dev.as_raw(), pmap) };
        }
        return Err(e);
    }
    // SAFETY: `this.mm()` is live (current's), so `Mm::from_raw` is valid; `ARef` grabs it.
    let mm: ARef<Mm> = unsafe { Mm::from_raw(this.mm()) }.into();
    let ctx = Arc::pin_init(
        // INVARIANT: `pmap` was created above; `this` is the live address space of `mm`.
        pin_init!(Context {
            dev,
            pmap,
            mm,
            va_range,
            attached <- new_mutex!(Some(NonNull::from(this)), "gmem_context"),
            holds <- new_spinlock!(KVec::new(), "gmem_context_holds"),
            detaching: AtomicBool::new(false),
            dmem: DmemCgroup::current(),
        }),
        GFP_KERNEL,
    )?;
    this.devices.attach(ctx.clone())?;
    Ok(ctx)
}
