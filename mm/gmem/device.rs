// SPDX-License-Identifier: GPL-2.0

//! Devices: what a driver registers (`gm_dev`), and the operations the core needs from a device
//! that holds pages of an address space.
//!
//! A driver creates a [`Device`] with `gm_dev_create()`: its `struct gm_mmu` operations, its
//! capabilities, a name and, with `gm_dev_register_physmem()`, its memory.  Each device gets a
//! node id (`hnid`) above the host's NUMA node ids, shown in sysfs as
//! `/sys/kernel/mm/gmem/node<hnid>/`.  A device lives as long as the driver's reference and
//! every context attached with it (see [`crate::context`]); when the last goes, the driver's
//! `release` operation frees its private data.
//!
//! [`DeviceOps`] is the part of a device the core needs to keep the logical page table true:
//! stop the device's access to a page, copy a page home and free device memory.  (A change of
//! access rights, mprotect, also just stops the device's access: the device faults again and
//! gets a mapping with the new rights.)  A context implements it; the core only ever reaches a
//! device through the [`DeviceList`] of the address space the device is attached to, so a page
//! can only live on a device that is attached.

use crate::{
    devmem::{reserve, DeviceMemory, DmemCgroup, Refused},
    lpt::{DeviceId, DevicePage},
};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use kernel::{
    alloc::KVec,
    bindings,
    error::from_err_ptr,
    ffi::{c_int, c_uint, c_void},
    new_spinlock,
    page::{Page, PAGE_SIZE},
    prelude::*,
    str::{CStr, CString},
    sync::{Arc, SetOnce, SpinLock},
    workqueue::{impl_has_work, new_work, Work},
};

/// The density prefetch threshold a device starts with, in percent: NVIDIA UVM's default.
const PREFETCH_THRESHOLD: u32 = 51;

/// Device node ids in use, as bits above the first device id (at most 64 devices).
static HNIDS: AtomicU64 = AtomicU64::new(0);

/// The first device node id: the first id that no host NUMA node can have.
fn first_hnid() -> u32 {
    // SAFETY: `nr_node_ids` is set during early boot and never changes afterwards.
    unsafe { bindings::nr_node_ids }
}

/// Whether `hnid` is the node id of a registered device.
pub(crate) fn hnid_registered(hnid: c_int) -> bool {
    let Some(bit) = u32::try_from(hnid)
        .ok()
        .and_then(|n| n.checked_sub(first_hnid()))
    else {
        return false;
    };
    bit < 64 && HNIDS.load(Ordering::Acquire) & (1 << bit) != 0
}

/// Counters of what GMEM did with a device's memory (see `struct gm_dev_stats`).
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) faults: AtomicU64,
    pub(crate) fault_batches: AtomicU64,
    pub(crate) prefetched: AtomicU64,
    pub(crate) zero_fills: AtomicU64,
    pub(crate) migrations_to_dev: AtomicU64,
    pub(crate) migrations_to_host: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) resident: AtomicU64,
}

impl Stats {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A device registered with GMEM (`struct gm_dev`).
///
/// # Invariants
///
/// `mmu` points to the driver's operations, valid until `release` is called (in `drop`); they
/// include every operation `struct gm_mmu` documents as required.  `id - first_hnid()` is a bit
/// this device owns in [`HNIDS`].
#[pin_data(PinnedDrop)]
pub(crate) struct Device {
    pub(crate) id: DeviceId,
    mmu: *const bindings::gm_mmu,
    priv_: *mut c_void,
    caps: u32,
    name: CString,
    memory: SetOnce<Pin<KBox<DeviceMemory>>>,
    pub(crate) stats: Stats,
    /// Density prefetch threshold, percent (sysfs `prefetch_threshold`; 0: off).
    prefetch_threshold: AtomicU32,
    sysfs: AtomicPtr<c_void>,
    /// Pages processes pinned here (`MADV_PIN`): never more than the memory's limit, which
    /// may not go below it.
    #[pin]
    pinned: SpinLock<u64>,
    /// Refills the free reserve in the background (see [`reserve`] and `crate::evict`).
    #[pin]
    reclaim: Work<Device>,
}

impl_has_work! {
    impl HasWork<Self> for Device { self.reclaim }
}

// SAFETY: the driver's operations and private data may be used from any thread (documented for
// `struct gm_mmu`); the rest is immutable or synchronised.
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

impl Device {
    /// The driver's operations.
    pub(crate) fn mmu(&self) -> &bindings::gm_mmu {
        // SAFETY: by the type invariant `mmu` is valid while `self` is.
        unsafe { &*self.mmu }
    }

    /// `self` as the C handle the driver holds.
    pub(crate) fn as_raw(&self) -> *mut bindings::gm_dev {
        core::ptr::from_ref(self).cast_mut().cast()
    }

    /// The device's memory, once registered.
    pub(crate) fn memory(&self) -> Option<&DeviceMemory> {
        self.memory.as_ref().map(|m| &**m)
    }

    /// Allocates a device page, from the driver's allocator if it has one; GMEM's charges it to
    /// dmem cgroup `cgroup` (see [`DmemCgroup`]).  Does not make room: a full memory, or a
    /// cgroup at its limit, is [`Refused`] (see `crate::evict::alloc_page`).
    pub(crate) fn try_alloc_page(&self, cgroup: Option<&DmemCgroup>) -> Result<u64, Refused> {
        let pfn = match self.mmu().alloc_page {
            Some(alloc) => {
                let mut pfn = 0u64;
                // SAFETY: `alloc` is the driver's operation for this device; `pfn` is writable.
                kernel::error::to_result(unsafe { alloc(self.as_raw(), &mut pfn) })
                    .map_err(Refused::Error)?;
                pfn
            }
            None => self
                .memory()
                .ok_or(Refused::Error(ENOMEM))?
                .alloc_charged(cgroup)?,
        };
        Stats::inc(&self.stats.resident);
        Ok(pfn)
    }

    /// Frees a device page from [`Device::try_alloc_page`].  Never sleeps with GMEM's allocator.
    pub(crate) fn free_page(&self, pfn: u64) {
        match (self.mmu().alloc_page, self.mmu().free_page) {
            // SAFETY: `free` is the driver's operation; `pfn` came from its `alloc_page`.
            (Some(_), Some(free)) => unsafe { free(self.as_raw(), pfn) },
            (Some(_), None) => {}
            (None, _) => {
                if let Some(memory) = self.memory() {
                    memory.free(pfn);
                }
            }
        }
        self.stats.resident.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Device {
    /// Creates a device with the driver's operations `mmu`, private data `priv_`, capabilities
    /// `caps` and name `name`, gives it the first free host node id and its sysfs node, and
    /// returns it as the handle the driver holds (see `gm_dev_create()`).  `EINVAL` for
    /// operations without a required one or unknown capabilities, `ENOSPC` when every node id
    /// is taken.
    ///
    /// # Safety
    ///
    /// `mmu` points to operations valid until `mmu->release` is called, or for ever if it has
    /// none.
    pub(crate) unsafe fn create(
        mmu: *const bindings::gm_mmu,
        priv_: *mut c_void,
        caps: c_uint,
        name: &CStr,
    ) -> Result<*mut bindings::gm_dev> {
        // SAFETY: by the safety requirements `mmu` is valid or NULL.
        let ops = unsafe { mmu.as_ref() }.ok_or(EINVAL)?;
        let required = ops.prepare_page.is_some()
            && ops.copy_to_host.is_some()
            && ops.pmap_create.is_some()
            && ops.pmap_destroy.is_some()
            && ops.pmap_enter.is_some()
            && ops.pmap_release.is_some()
            && ops.tlb_invl.is_some()
            && (ops.alloc_page.is_none() || ops.free_page.is_some());
        if !required || caps & !bindings::GM_DEV_CAP_FAULT != 0 {
            return Err(EINVAL);
        }
        let name = CString::try_from(name).map_err(|_| ENOMEM)?;
        let mut used = HNIDS.load(Ordering::Acquire);
        let bit = loop {
            if used == u64::MAX {
                return Err(ENOSPC);
            }
            let bit = used.trailing_ones();
            match HNIDS.compare_exchange(
                used,
                used | (1 << bit),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break bit,
                Err(now) => used = now,
            }
        };
        let Ok(id) = DeviceId::try_from(first_hnid() + bit) else {
            HNIDS.fetch_and(!(1u64 << bit), Ordering::AcqRel);
            return Err(ENOSPC);
        };
        // INVARIANT: `mmu` is valid and complete (checked above); `bit` is ours.
        let dev = Arc::pin_init(
            pin_init!(Device {
                id,
                mmu,
                priv_,
                caps,
                name,
                memory: SetOnce::new(),
                stats: Stats::default(),
                prefetch_threshold: AtomicU32::new(PREFETCH_THRESHOLD),
                sysfs: AtomicPtr::new(core::ptr::null_mut()),
                pinned <- new_spinlock!(0, "gm_dev::pinned"),
                reclaim <- new_work!("gmem_reclaim"),
            }),
            GFP_KERNEL,
        )
        .inspect_err(|_| {
            HNIDS.fetch_and(!(1u64 << bit), Ordering::AcqRel);
        })
        .map_err(|_| ENOMEM)?;
        let raw = Arc::into_raw(dev).cast_mut();
        // SAFETY: `raw` is a live device; the sysfs node goes before the device does.
        let node = unsafe { bindings::gm_sysfs_add_node(raw.cast(), c_int::from(id)) };
        // A device without its sysfs node works all the same.
        // SAFETY: `raw` is live: we hold its reference.
        unsafe {
            (*raw).sysfs.store(
                from_err_ptr(node).unwrap_or(core::ptr::null_mut()),
                Ordering::Release,
            )
        };
        Ok(raw.cast())
    }

    /// Removes the sysfs node of the device behind `dev` and drops the driver's reference (see
    /// `gm_dev_destroy()`).
    ///
    /// # Safety
    ///
    /// `dev` is a handle from [`Device::create`], which the caller gives up.
    pub(crate) unsafe fn destroy(dev: *mut bindings::gm_dev) {
        // SAFETY: by the safety requirements `dev` is live.
        let node = unsafe { device_ref(dev) }
            .sysfs
            .swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !node.is_null() {
            // SAFETY: `node` came from `gm_sysfs_add_node()` and is removed once (it was
            // swapped out above).
            unsafe { bindings::gm_sysfs_remove_node(node) };
        }
        // SAFETY: the handle is `Arc::into_raw` of the device; the caller gives it up.
        drop(unsafe { Arc::from_raw(dev.cast_const().cast::<Device>()) });
    }

    /// Gives the device `size` bytes of memory at device physical address `base`, managed by
    /// GMEM and charged to dmem cgroups.  `EBUSY` if it has memory already.
    pub(crate) fn register_physmem(&self, base: u64, size: u64) -> Result {
        let mut memory = DeviceMemory::new(base, size, self.mmu().pmap_clear_young.is_some())?;
        memory.as_mut().register_cgroup(&self.name)?;
        if !self.memory.populate(memory) {
            return Err(EBUSY);
        }
        Ok(())
    }

    /// The driver's private data.
    pub(crate) fn priv_data(&self) -> *mut c_void {
        self.priv_
    }

    /// The device's name.
    pub(crate) fn name(&self) -> &CStr {
        &self.name
    }

    /// The device's capabilities (`GM_DEV_CAP_*`).
    pub(crate) fn caps(&self) -> c_uint {
        self.caps
    }

    /// The density prefetch threshold, in percent (0: no prefetch).
    pub(crate) fn prefetch_threshold(&self) -> u32 {
        self.prefetch_threshold.load(Ordering::Relaxed)
    }

    /// Sets the density prefetch threshold: 0 (off) to 100 percent, `EINVAL` above.
    pub(crate) fn set_prefetch_threshold(&self, percent: u32) -> Result {
        if percent > 100 {
            return Err(EINVAL);
        }
        self.prefetch_threshold.store(percent, Ordering::Relaxed);
        Ok(())
    }

    /// Pages the device may still allocate without evicting: free within its limit, less the
    /// free reserve (below which the background worker evicts).  Unbounded for a driver with
    /// its own allocator, which says when it is full.
    pub(crate) fn free_pages(&self) -> usize {
        self.memory().map_or(usize::MAX, |m| {
            m.free_pages().saturating_sub(reserve(m.limit()).0) as usize
        })
    }

    /// A snapshot of the device's counters.
    pub(crate) fn stats(&self) -> bindings::gm_dev_stats {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        bindings::gm_dev_stats {
            faults: get(&s.faults),
            fault_batches: get(&s.fault_batches),
            prefetched: get(&s.prefetched),
            zero_fills: get(&s.zero_fills),
            migrations_to_dev: get(&s.migrations_to_dev),
            migrations_to_host: get(&s.migrations_to_host),
            evictions: get(&s.evictions),
            resident_pages: get(&s.resident),
            dram_pages: self.memory().map_or(0, |m| m.usage().pages),
            limit_pages: self.memory().map_or(0, |m| m.limit()),
            reserve_low_pages: self.memory().map_or(0, |m| reserve(m.limit()).0),
            reserve_high_pages: self.memory().map_or(0, |m| reserve(m.limit()).1),
            pinned_pages: *self.pinned.lock(),
        }
    }

    /// Counts `pages` more pinned pages: `ENOSPC` past the memory's limit (or without memory).
    pub(crate) fn pin(&self, pages: usize) -> Result {
        let limit = self.memory().map_or(0, |m| m.limit());
        let mut pinned = self.pinned.lock();
        *pinned = pinned
            .checked_add(pages as u64)
            .filter(|&n| n <= limit)
            .ok_or(ENOSPC)?;
        Ok(())
    }

    /// Counts `pages` pinned pages fewer.
    pub(crate) fn unpin(&self, pages: usize) {
        let mut pinned = self.pinned.lock();
        debug_assert!(*pinned >= pages as u64);
        *pinned = pinned.saturating_sub(pages as u64);
    }

    /// Sets how many pages of the memory may be used: `ENODEV` without memory, `EBUSY` below
    /// the pinned pages.
    ///
    /// The pinned count's lock is taken last of all GMEM's locks (a pin is charged under the
    /// policy lock, which eviction takes under the device memory's): nothing here takes the
    /// device memory's lock under it.
    pub(crate) fn set_limit(&self, pages: u64) -> Result {
        let memory = self.memory().ok_or(ENODEV)?;
        let pinned = self.pinned.lock();
        if pages.min(memory.pages()) < *pinned {
            return Err(EBUSY);
        }
        memory.set_limit(pages);
        Ok(())
    }
}

#[pinned_drop]
impl PinnedDrop for Device {
    fn drop(self: Pin<&mut Self>) {
        if let Some(release) = self.mmu().release {
            // SAFETY: this is the last reference: the driver may free its data now.
            unsafe { release(self.as_raw()) };
        }
        let bit = u32::from(self.id) - first_hnid();
        // INVARIANT: the bit is given back with the device.
        HNIDS.fetch_and(!(1u64 << bit), Ordering::AcqRel);
    }
}

/// Borrows the device behind a driver's handle.
///
/// # Safety
///
/// `dev` is a handle from `gm_dev_create()` that the caller (or a context it holds) keeps alive.
pub(crate) unsafe fn device_ref<'a>(dev: *const bindings::gm_dev) -> &'a Device {
    // SAFETY: by the safety requirements `dev` is `Arc::into_raw` of a live `Device`.
    unsafe { &*dev.cast::<Device>() }
}

/// A new reference to the device behind a driver's handle.
///
/// # Safety
///
/// Same as [`device_ref`].
pub(crate) unsafe fn device_arc(dev: *const bindings::gm_dev) -> Arc<Device> {
    // SAFETY: `dev` came from `Arc::into_raw` and is alive, so the count is not zero; the
    // `ManuallyDrop` keeps the caller's reference.
    let borrowed = core::mem::ManuallyDrop::new(unsafe { Arc::from_raw(dev.cast::<Device>()) });
    (*borrowed).clone()
}

/// The operations the core needs from a device.
///
/// They may sleep; the core never calls them with a spinlock held.
pub(crate) trait DeviceOps: Send + Sync {
    /// The device's node id (`hnid`).
    fn id(&self) -> DeviceId;

    /// Allocates a page of the device's memory for this address space, making room when the
    /// memory is full (see `crate::evict::alloc_page`).
    fn alloc_page(&self) -> Result<u64>;

    /// Removes the device's mappings of `len` bytes at `va` and invalidates its TLB for them.
    fn unmap_va(&self, va: usize, len: usize);

    /// Maps device page `pfn` at `va` with `prot` (`GM_PROT_*`).
    fn map(&self, va: usize, pfn: u64, prot: c_uint) -> Result;

    /// Whether the device can map host pages in place (`pmap_enter_host`).
    fn maps_host(&self) -> bool {
        false
    }

    /// Maps host page `page` at `va` with `prot`, in place (`MADV_ACCESSED_BY`).
    fn map_host(&self, _va: usize, _page: &Page, _prot: c_uint) -> Result {
        Err(EINVAL)
    }

    /// Fills the device pages of `moves` from their host pages (zeroes where there is none)
    /// and maps them at `va`, `va + PAGE_SIZE`, ...  On an error no page of the run stays
    /// mapped.
    fn place_run(&self, va: usize, moves: &[bindings::gm_move], prot: c_uint) -> Result;

    /// Fills device page `pfn` from `src` (zeroes if `None`) and maps it at `va`.
    fn place(&self, va: usize, pfn: u64, src: Option<&Page>, prot: c_uint) -> Result {
        let page = src.map_or(core::ptr::null_mut(), |p| p.as_ptr());
        self.place_run(va, &[bindings::gm_move { pfn, page }], prot)
    }

    /// Counts `n` pages of device faults served, in the device's statistics.
    fn count_faults(&self, _n: usize) {}

    /// Counts a batch of device faults served, which moved `prefetched` pages beyond the
    /// faulting ones.
    fn count_batch(&self, _prefetched: usize) {}

    /// The density prefetch threshold, in percent; 0 (no prefetch) for a device without one.
    fn prefetch_threshold(&self) -> u32 {
        0
    }

    /// Pages the device may allocate without evicting.
    fn free_pages(&self) -> usize {
        0
    }

    /// Removes the device's mapping of `va` (which maps `page`) and invalidates the device
    /// TLB for it.  When this returns, the device no longer reads or writes the page.
    fn unmap(&self, va: usize, page: DevicePage);

    /// Copies the device page into the host page `dst`.
    fn copy_to_host(&self, page: DevicePage, dst: &Page) -> Result;

    /// Returns a device page to the device's allocator.
    fn free(&self, page: DevicePage);

    /// Moves a page home: stops the device's access, copies it into `dst` and frees it.  The
    /// device page is still intact if this fails.
    fn move_home(&self, va: usize, page: DevicePage, dst: &Page) -> Result {
        // The device must not write after the copy, or the write is lost.
        self.unmap(va, page);
        self.copy_to_host(page, dst)?;
        self.free(page);
        Ok(())
    }

    /// Moves the run of pages at `va`, `va + PAGE_SIZE`, ... home: stops the device's access
    /// to all of them (one TLB invalidation where the device allows), then copies each into
    /// its host page.  The device pages stay allocated; if this fails, the device's mappings
    /// are gone but its pages are intact.
    fn copy_run_home(&self, va: usize, run: &[(DevicePage, &Page)]) -> Result {
        for (i, &(page, _)) in run.iter().enumerate() {
            self.unmap(va + i * kernel::page::PAGE_SIZE, page);
        }
        run.iter()
            .try_for_each(|&(page, dst)| self.copy_to_host(page, dst))
    }

    /// The address space the device is attached to is going away (its process exited); every
    /// page of the device in it was released already.
    fn address_space_gone(&self) {}

    /// The page moved to virtual page `vpn` of address space `space` (an address, as the
    /// device memory's reverse map records it) by mremap.
    fn moved(&self, _page: DevicePage, _space: usize, _vpn: usize) {}

    /// Whether the page is allocated and recorded as virtual page `vpn` of address space
    /// `space` (see [`DeviceOps::moved`]): what a page must be before it is mapped again.
    /// `true` for a device that manages its memory itself.
    fn owned_by(&self, _page: DevicePage, _space: usize, _vpn: usize) -> bool {
        true
    }

    /// Whether the device is using the page at `va` right now (a job holds it): eviction
    /// leaves it alone.
    fn held(&self, _va: usize) -> bool {
        false
    }

    /// Whether the device used its mapping of `va` since the last call (its accessed bit, which
    /// this clears).  `false` for a device that does not track accesses.
    fn clear_young(&self, _va: usize) -> bool {
        false
    }

    /// Removes the device's mappings of `pages`, each at its address, with one device TLB
    /// invalidation for all of them.  Must not sleep for memory (MMU notifier callbacks).
    fn unmap_many(&self, pages: &[(usize, DevicePage)]) {
        for &(va, page) in pages {
            self.unmap(va, page);
        }
    }

    /// Gives pages back: [`DeviceOps::unmap_many`], then frees them.
    fn release_many(&self, pages: &[(usize, DevicePage)]) {
        self.unmap_many(pages);
        for &(_, page) in pages {
            self.free(page);
        }
    }

    /// Counts `pages` more pages pinned on the device (`MADV_PIN`): `ENOSPC` past its limit.
    fn pin(&self, _pages: usize) -> Result {
        Err(ENOSPC)
    }

    /// Counts `pages` pinned pages of the device fewer (see [`DeviceOps::pin`]).
    fn unpin(&self, _pages: usize) {}

    /// Makes `start..end` resident on the device (`hmadvise(MADV_PREFETCH)`).  Called without
    /// the mmap lock.
    fn prefetch(&self, _start: usize, _end: usize) -> Result {
        Err(EINVAL)
    }
}

/// The devices attached to one address space.
///
/// A spinlock, not a mutex: the MMU notifier looks devices up, and notifiers run from reclaim,
/// so nothing that allocates with reclaim may hold this lock (attach allocates atomically).
#[pin_data]
pub(crate) struct DeviceList {
    #[pin]
    devices: SpinLock<KVec<Arc<dyn DeviceOps>>>,
}

impl DeviceList {
    /// An empty list.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            devices <- new_spinlock!(KVec::new(), "gmem_device_list"),
        })
    }

    /// Attaches a device.  Fails with `EEXIST` if one with the same id is attached.
    pub(crate) fn attach(&self, device: Arc<dyn DeviceOps>) -> Result {
        let mut devices = self.devices.lock();
        if devices.iter().any(|d| d.id() == device.id()) {
            return Err(EEXIST);
        }
        devices.push(device, GFP_ATOMIC)?;
        Ok(())
    }

    /// Detaches the device `id`; returns whether it was attached.
    pub(crate) fn detach(&self, id: DeviceId) -> bool {
        let removed = {
            let mut devices = self.devices.lock();
            let i = devices.iter().position(|d| d.id() == id);
            i.and_then(|i| devices.remove(i).ok())
        };
        // Dropped outside the lock: it may be the last reference, and contexts sleep in drop.
        removed.is_some()
    }

    /// Detaches every device.
    pub(crate) fn take_all(&self) -> KVec<Arc<dyn DeviceOps>> {
        core::mem::take(&mut *self.devices.lock())
    }

    /// The attached device `id`, if `pred` accepts it.  `pred` runs under the list's lock, so
    /// a device it refuses is never the last reference dropped by the caller (dropping a
    /// context may sleep).
    pub(crate) fn get_if(
        &self,
        id: DeviceId,
        pred: impl FnOnce(&dyn DeviceOps) -> bool,
    ) -> Option<Arc<dyn DeviceOps>> {
        let devices = self.devices.lock();
        let device = devices.iter().find(|d| d.id() == id)?;
        pred(&**device).then(|| device.clone())
    }

    /// The attached device `id`.
    pub(crate) fn get(&self, id: DeviceId) -> Option<Arc<dyn DeviceOps>> {
        self.devices.lock().iter().find(|d| d.id() == id).cloned()
    }

    /// Calls `f(device, run)` for each run of `pages` (`(address, page)` pairs) of one
    /// attached device: a range's pages are almost always one device's.  The pages of a
    /// device that is no longer attached are skipped: they were freed when it detached.
    fn each_device(
        &self,
        pages: &[(usize, DevicePage)],
        mut f: impl FnMut(&dyn DeviceOps, &[(usize, DevicePage)]),
    ) {
        let mut start = 0;
        while start < pages.len() {
            let dev = pages[start].1.dev;
            let len = pages[start..].iter().take_while(|p| p.1.dev == dev).count();
            if let Some(device) = self.get(dev) {
                f(&*device, &pages[start..start + len]);
            }
            start += len;
        }
    }

    /// Removes `pages` (`(address, page)` pairs) from their devices' page tables.
    pub(crate) fn unmap_pages(&self, pages: &[(usize, DevicePage)]) {
        self.each_device(pages, |device, run| device.unmap_many(run));
    }

    /// Frees `pages` (`(address, page)` pairs), unmapped already.
    pub(crate) fn free_pages(&self, pages: &[(usize, DevicePage)]) {
        self.each_device(pages, |device, run| {
            run.iter().for_each(|&(_, p)| device.free(p))
        });
    }

    /// Gives device pages back to their devices, batched (see [`ReleaseBatch`]).
    pub(crate) fn batch(&self) -> ReleaseBatch<'_> {
        ReleaseBatch {
            list: self,
            pages: [(0, DevicePage { dev: 0, pfn: 0 }); RELEASE_BATCH],
            count: 0,
        }
    }
}

/// Device pages released together: one device TLB invalidation per device and batch.
const RELEASE_BATCH: usize = 64;

/// Device pages on their way back to their devices.  Pages are given back when the batch is
/// full and when it is dropped.  A page of a device that is no longer attached was freed when
/// the device detached.
pub(crate) struct ReleaseBatch<'a> {
    list: &'a DeviceList,
    pages: [(usize, DevicePage); RELEASE_BATCH],
    count: usize,
}

impl ReleaseBatch<'_> {
    /// Adds device page `page`, mapped at `va`.
    pub(crate) fn push(&mut self, va: usize, page: DevicePage) {
        if self.count == RELEASE_BATCH {
            self.flush();
        }
        self.pages[self.count] = (va, page);
        self.count += 1;
    }

    fn flush(&mut self) {
        self.list
            .each_device(&self.pages[..self.count], |device, run| {
                device.release_many(run)
            });
        self.count = 0;
    }
}

impl Drop for ReleaseBatch<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A device for KUnit: records every operation it receives and keeps page contents in host
/// pages, so that copies can be checked.
#[cfg(CONFIG_GMEM_KUNIT_TEST)]
pub(crate) mod fake {
    use super::*;
    use kernel::{new_mutex, sync::Mutex};

    /// What a [`FakeDevice`] calls at each unmap: `f(arg)`.
    pub(crate) type Probe = (fn(usize), usize);

    /// One operation a [`FakeDevice`] received.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Op {
        Unmap(usize, u64),
        CopyToHost(u64),
        Free(u64),
    }

    /// A device whose page `pfn` holds the byte `pfn as u8` everywhere.
    #[pin_data]
    pub(crate) struct FakeDevice {
        pub(crate) id: DeviceId,
        /// Fail copies of this pfn (`u64::MAX`: none).
        pub(crate) failing_pfn: u64,
        #[pin]
        ops: Mutex<KVec<Op>>,
        /// Called with its argument at each unmap, as the unmap begins: what another thread
        /// does meanwhile (see [`FakeDevice::set_probe`]).
        #[pin]
        probe: Mutex<Option<Probe>>,
    }

    impl FakeDevice {
        pub(crate) fn new(id: DeviceId, failing_pfn: u64) -> Result<Arc<Self>> {
            Arc::pin_init(
                pin_init!(Self {
                    id,
                    failing_pfn,
                    ops <- new_mutex!(KVec::new(), "gmem_fake_device"),
                    probe <- new_mutex!(None, "gmem_fake_device_probe"),
                }),
                GFP_KERNEL,
            )
        }

        /// Records `op`.  Atomically: unmaps come from invalidations, under whose locks a
        /// device may not allocate memory that reclaims, as it may not in `pmap_release`.
        fn record(&self, op: Op) {
            let _ = self.ops.lock().push(op, GFP_ATOMIC);
        }

        /// Makes each unmap call `f(arg)` first (`None`: nothing).
        pub(crate) fn set_probe(&self, probe: Option<Probe>) {
            *self.probe.lock() = probe;
        }

        fn probe(&self) {
            let probe = *self.probe.lock();
            if let Some((f, arg)) = probe {
                f(arg);
            }
        }

        /// Takes the operations received so far.
        pub(crate) fn take_ops(&self) -> KVec<Op> {
            core::mem::take(&mut *self.ops.lock())
        }
    }

    impl DeviceOps for FakeDevice {
        /// The fake device has no memory to give: only pages the tests put there exist.
        fn alloc_page(&self) -> Result<u64> {
            Err(ENOMEM)
        }

        fn unmap_va(&self, va: usize, len: usize) {
            self.probe();
            let mut ops = self.ops.lock();
            for k in 0..len / PAGE_SIZE {
                let va = va + k * PAGE_SIZE;
                // Cannot fail in the tests: a few entries.
                let _ = ops.push(Op::Unmap(va, (va / PAGE_SIZE) as u64), GFP_ATOMIC);
            }
        }

        /// Nothing is mapped on the fake device: the tests move pages home only.
        fn map(&self, _va: usize, _pfn: u64, _prot: c_uint) -> Result {
            Err(ENODEV)
        }

        /// As [`FakeDevice::map`].
        fn place_run(&self, _va: usize, _moves: &[bindings::gm_move], _prot: c_uint) -> Result {
            Err(ENODEV)
        }

        fn id(&self) -> DeviceId {
            self.id
        }

        fn unmap(&self, va: usize, page: DevicePage) {
            self.probe();
            self.record(Op::Unmap(va, page.pfn));
        }

        fn copy_to_host(&self, page: DevicePage, dst: &Page) -> Result {
            self.record(Op::CopyToHost(page.pfn));
            if page.pfn == self.failing_pfn {
                return Err(EIO);
            }
            let bytes = [page.pfn as u8; 64];
            for offset in (0..kernel::page::PAGE_SIZE).step_by(bytes.len()) {
                // SAFETY: `bytes` is valid for reads of its length, and the destination range is
                // within the page.
                unsafe { dst.write_raw(bytes.as_ptr(), offset, bytes.len())? };
            }
            Ok(())
        }

        fn free(&self, page: DevicePage) {
            self.record(Op::Free(page.pfn));
        }
    }
}
