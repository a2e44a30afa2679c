// SPDX-License-Identifier: GPL-2.0

//! GMEM: shared virtual memory for accelerator drivers.
//!
//! A driver implements its hardware's MMU operations ([`GmMmu`]), registers its device
//! ([`Device`]) and its memory, and attaches the device to a process's address space
//! ([`AddressSpace::attach`]) when the process asks for it.  GMEM then decides where each page
//! of the process's `MAP_PEER_SHARED` ranges lives, moves pages between host and device memory
//! as the CPU and the device touch them, and calls the [`GmMmu`] operations to map them on the
//! device.  The driver reports device translation misses with [`Context::fault`] (or prefaults
//! a job's whole range with [`Context::fault_range`] if the device cannot fault).
//!
//! C header: [`include/linux/gmem.h`](srctree/include/linux/gmem.h).
//! Documentation: [`Documentation/mm/gmem.rst`](srctree/Documentation/mm/gmem.rst).
//!
//! # Examples
//!
//! A device whose "memory" is a few host pages (a real driver would map its DRAM):
//!
//! ```
//! use kernel::{gmem, page::{Page, PAGE_SIZE}, prelude::*, sync::{Arc, Mutex}, new_mutex};
//!
//! #[pin_data]
//! struct RamDevice {
//!     #[pin]
//!     pages: Mutex<KVec<Page>>,
//! }
//!
//! #[vtable]
//! impl gmem::GmMmu for RamDevice {
//!     type Pmap = ();
//!
//!     fn prepare_page(&self, pfn: u64, src: Option<&Page>) -> Result {
//!         let pages = self.pages.lock();
//!         let page = pages.get(pfn as usize).ok_or(EINVAL)?;
//!         let mut buf = [0u8; 64];
//!         for offset in (0..PAGE_SIZE).step_by(buf.len()) {
//!             if let Some(src) = src {
//!                 // SAFETY: `buf` is valid for writes of its length.
//!                 unsafe { src.read_raw(buf.as_mut_ptr(), offset, buf.len())? };
//!             }
//!             // SAFETY: `buf` is valid for reads of its length.
//!             unsafe { page.write_raw(buf.as_ptr(), offset, buf.len())? };
//!         }
//!         Ok(())
//!     }
//!
//!     fn copy_to_host(&self, pfn: u64, dst: &Page) -> Result {
//!         let pages = self.pages.lock();
//!         let page = pages.get(pfn as usize).ok_or(EINVAL)?;
//!         let mut buf = [0u8; 64];
//!         for offset in (0..PAGE_SIZE).step_by(buf.len()) {
//!             // SAFETY: `buf` is valid for reads and writes of its length.
//!             unsafe {
//!                 page.read_raw(buf.as_mut_ptr(), offset, buf.len())?;
//!                 dst.write_raw(buf.as_ptr(), offset, buf.len())?;
//!             }
//!         }
//!         Ok(())
//!     }
//!
//!     fn pmap_create(&self) -> Result<()> {
//!         Ok(())
//!     }
//!
//!     fn pmap_enter(&self, _: &(), _va: usize, _pfn: u64, _prot: gmem::Prot) -> Result {
//!         Ok(())
//!     }
//!
//!     fn pmap_release(&self, _: &(), _va: usize, _len: usize) {}
//!
//!     fn tlb_invl(&self, _: &(), _va: usize, _len: usize) {}
//! }
//!
//! let mut pages = KVec::new();
//! for _ in 0..4 {
//!     pages.push(Page::alloc_page(GFP_KERNEL)?, GFP_KERNEL)?;
//! }
//! let ram = Arc::pin_init(pin_init!(RamDevice { pages <- new_mutex!(pages) }), GFP_KERNEL)?;
//! let dev = gmem::Device::new(ram, gmem::Caps::FAULT, c"ram")?;
//! // Device node ids come after the host's NUMA node ids.
//! // SAFETY: `nr_node_ids` does not change after boot.
//! assert!(dev.hnid() >= unsafe { kernel::bindings::nr_node_ids });
//! dev.register_physmem(0, 4 * PAGE_SIZE as u64)?;
//! // Memory is registered once.
//! assert_eq!(dev.register_physmem(0, 4 * PAGE_SIZE as u64), Err(EBUSY));
//! let stats = dev.stats();
//! assert_eq!((stats.dram_pages, stats.resident_pages), (4, 0));
//! # Ok::<(), Error>(())
//! ```

use crate::{
    bindings,
    error::{from_err_ptr, to_result, VTABLE_DEFAULT_ERROR},
    ffi::{c_int, c_uint, c_ulong, c_void},
    page::{BorrowedPage, Page},
    prelude::*,
    str::CStr,
    sync::Arc,
    task::CurrentTask,
    types::{ForeignOwnable, Opaque},
};
use core::{marker::PhantomData, ptr::NonNull};

/// Rights of a device mapping (`GM_PROT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prot(u32);

impl Prot {
    /// The device may read the page.
    pub const READ: Self = Self(bindings::GM_PROT_READ);
    /// The device may write the page.
    pub const WRITE: Self = Self(bindings::GM_PROT_WRITE);

    /// Whether the device may write the page.
    pub fn writable(self) -> bool {
        self.0 & bindings::GM_PROT_WRITE != 0
    }
}

/// What a device access needs (`GM_ACCESS_*`), for [`Context::fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access(u32);

impl Access {
    /// A read.
    pub const READ: Self = Self(bindings::GM_ACCESS_READ);
    /// A write (or a read and a write).
    pub const WRITE: Self = Self(bindings::GM_ACCESS_READ | bindings::GM_ACCESS_WRITE);
}

/// A device translation fault, for [`Context::fault_batch`] (`struct gm_fault`).
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct Fault(bindings::gm_fault);

impl Fault {
    /// A fault at `va` (any byte of the page) by an access that needs `access`.
    pub fn new(va: usize, access: Access) -> Self {
        Self(bindings::gm_fault {
            va: va as c_ulong,
            access: access.0,
            status: 0,
        })
    }

    /// The faulting address.
    pub fn va(&self) -> usize {
        self.0.va
    }

    /// What became of the fault in the last [`Context::fault_batch`] that had it: `Ok` once its
    /// page is mapped on the device.
    pub fn status(&self) -> Result {
        to_result(self.0.status)
    }
}

/// Most faults one [`Context::fault_batch`] takes.
pub const FAULT_BATCH_MAX: usize = bindings::GM_FAULT_BATCH_MAX as usize;

/// Device capabilities (`GM_DEV_CAP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps(u32);

impl Caps {
    /// None: the driver makes every range resident before the device uses it.
    pub const NONE: Self = Self(0);
    /// The device raises translation faults, which the driver reports with [`Context::fault`].
    pub const FAULT: Self = Self(bindings::GM_DEV_CAP_FAULT);
}

/// A range of device virtual addresses.
pub type VaRange = bindings::gm_va_range;

/// One page of a batched move ([`GmMmu::peer_map`], [`GmMmu::peer_unmap`]): a device page and
/// the host page it is filled from or copied into.
///
/// # Invariants
///
/// The host page is NULL or a page that stays valid for `'a`.
#[repr(transparent)]
pub struct Move<'a>(bindings::gm_move, PhantomData<&'a Page>);

impl<'a> Move<'a> {
    /// A move of device page `pfn` from or to `page`.
    pub fn new(pfn: u64, page: Option<&'a Page>) -> Self {
        let page = page.map_or(core::ptr::null_mut(), |p| p.as_ptr());
        // INVARIANT: `page` is NULL or borrowed for `'a`.
        Self(bindings::gm_move { pfn, page }, PhantomData)
    }

    /// The device page.
    pub fn pfn(&self) -> u64 {
        self.0.pfn
    }

    /// The host page: the source of [`GmMmu::peer_map`] (`None`: fill with zeroes), the
    /// destination of [`GmMmu::peer_unmap`] (`None`: no copy).
    pub fn page(&self) -> Option<BorrowedPage<'a>> {
        // SAFETY: by the type invariant the page is valid for `'a`.
        NonNull::new(self.0.page).map(|p| unsafe { BorrowedPage::from_raw(p) })
    }
}

/// The hardware-specific MMU operations of a device.
///
/// GMEM calls them with no spinlock held; they may sleep, except that `pmap_release`,
/// `tlb_invl`, `tlb_invl_coalesced` and `free_page` are also called from MMU notifier
/// callbacks and so must not allocate memory that may reclaim.  GMEM may call them
/// concurrently, also for one page table.  Device memory is addressed by page frame number
/// (`pfn`): the byte address in the device's memory divided by `PAGE_SIZE`.
///
/// The optional operations are documented with `struct gm_mmu` in `include/linux/gmem.h`;
/// GMEM composes the wrappers (`peer_map`, `peer_unmap`) from the basic operations when a
/// driver does not implement them.
#[vtable]
pub trait GmMmu: Send + Sync + Sized + 'static {
    /// A device page table: one per attached address space ([`Context`]).
    type Pmap: Send + Sync;

    /// Reserves `[va, va + len)` in the device's address space, once per context, for the
    /// process's whole user address range, or the part of it the device can address (the
    /// device cannot map the rest).  `ERANGE` if it can address none of it.
    fn peer_va_alloc_fixed(&self, _pmap: &Self::Pmap, _va: usize, _len: usize) -> Result {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Gives back what [`GmMmu::peer_va_alloc_fixed`] reserved.
    fn peer_va_free(&self, _pmap: &Self::Pmap, _va: usize, _len: usize) {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Allocates a device page, for a driver that manages its memory itself instead of
    /// registering it with [`Device::register_physmem`].
    fn alloc_page(&self) -> Result<u64> {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Frees a page from [`GmMmu::alloc_page`].  Required with it.
    fn free_page(&self, _pfn: u64) {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Fills device page `pfn` with the contents of `src`, or with zeroes.  GMEM never maps a
    /// page that was not prepared, so a process never sees another's data.
    fn prepare_page(&self, pfn: u64, src: Option<&Page>) -> Result;

    /// Copies device page `pfn` into `dst`.
    fn copy_to_host(&self, pfn: u64, dst: &Page) -> Result;

    /// Creates an empty device page table for a new context.
    fn pmap_create(&self) -> Result<Self::Pmap>;

    /// Destroys a page table that maps nothing any more.
    fn pmap_destroy(&self, pmap: Self::Pmap) {
        drop(pmap);
    }

    /// Maps `va` to device page `pfn` with `prot`, replacing any mapping of `va`.  `EFAULT` for
    /// an address the device cannot reach (beyond its address bits): the device fault fails
    /// with it, as for an address outside the process's mappings.
    fn pmap_enter(&self, pmap: &Self::Pmap, va: usize, pfn: u64, prot: Prot) -> Result;

    /// Removes the mappings of `[va, va + len)`; the TLB is invalidated separately.
    fn pmap_release(&self, pmap: &Self::Pmap, va: usize, len: usize);

    /// Changes the rights of the mappings of `[va, va + len)`.
    fn pmap_protect(&self, _pmap: &Self::Pmap, _va: usize, _len: usize, _prot: Prot) -> Result {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Tests and clears the accessed bit of the mapping of `va`: whether the device used the
    /// page since the last call (or since it was mapped).  Eviction asks before it takes a
    /// page, so pages the device keeps using stay in its memory.  The device must set the bit
    /// again on its next use (drop a cached translation if it only sets the bit when it fills
    /// its TLB).  Without it, only GMEM's own record (device faults, new mappings) protects a
    /// page.
    fn pmap_clear_young(&self, _pmap: &Self::Pmap, _va: usize) -> bool {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Maps `va` to host page `page` with `prot`, replacing any mapping of `va`: a device
    /// that reaches host memory in place (`MADV_ACCESSED_BY`).  The device keeps no reference
    /// to `page` beyond the mapping, which GMEM removes (with [`Self::pmap_release`] and
    /// [`Self::tlb_invl`]) before the CPU page table stops mapping the page.  Called under the
    /// lock with which MMU notifier invalidations remove in-place mappings, so that no mapping
    /// of a page the CPU has replaced is ever made: it must not allocate memory that may
    /// reclaim.  Without it, the device always gets the pages migrated.
    fn pmap_enter_host(&self, _pmap: &Self::Pmap, _va: usize, _page: &Page, _prot: Prot) -> Result {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Invalidates the device TLB for `[va, va + len)`: when this returns, the device no
    /// longer uses a stale translation.
    fn tlb_invl(&self, pmap: &Self::Pmap, va: usize, len: usize);

    /// Invalidates the device TLB for several ranges at once.
    fn tlb_invl_coalesced(&self, _pmap: &Self::Pmap, _ranges: &[VaRange]) {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Fills the device pages of `moves` (from their host pages, or with zeroes) and maps
    /// them at `va`, `va + PAGE_SIZE`, ... with `prot`, in one device operation.  GMEM moves up
    /// to 512 pages at a time.  On an error GMEM removes the whole run's mappings.
    fn peer_map(&self, _pmap: &Self::Pmap, _va: usize, _moves: &[Move<'_>], _prot: Prot) -> Result {
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Removes the mappings of the run of `moves.len()` pages at `va`, invalidates the TLB
    /// for the run once, then copies each device page into its host page (if it has one).
    /// GMEM frees the device pages afterwards.
    fn peer_unmap(&self, _pmap: &Self::Pmap, _va: usize, _moves: &[Move<'_>]) -> Result {
        build_error!(VTABLE_DEFAULT_ERROR)
    }
}

/// The C operations table of a [`GmMmu`] implementation.
struct MmuVtable<T: GmMmu>(PhantomData<T>);

impl<T: GmMmu> MmuVtable<T> {
    /// The driver data of a device created by [`Device::new`].
    ///
    /// # Safety
    ///
    /// `dev` is a live device created by [`Device::new`] with `T`.
    unsafe fn data<'a>(dev: *mut bindings::gm_dev) -> &'a T {
        // SAFETY: the private data is `Arc::into_raw` of an `Arc<T>` (see `Device::new`),
        // released only by `release`, after the last operation.
        unsafe { &*bindings::gm_dev_priv(dev).cast::<T>() }
    }

    /// A page table created by `pmap_create`.
    ///
    /// # Safety
    ///
    /// `pmap` came from `pmap_create` of this vtable and is not destroyed yet.
    unsafe fn pmap<'a>(pmap: *mut c_void) -> &'a T::Pmap {
        // SAFETY: by the safety requirements `pmap` is a live `KBox<T::Pmap>`.
        unsafe { <KBox<T::Pmap> as ForeignOwnable>::borrow(pmap) }
    }

    /// A page GMEM passes in, or `None` for NULL.
    ///
    /// # Safety
    ///
    /// `page` is NULL or a page valid for the duration of the call.
    unsafe fn page<'a>(page: *mut bindings::page) -> Option<BorrowedPage<'a>> {
        // SAFETY: by the safety requirements.
        NonNull::new(page).map(|p| unsafe { BorrowedPage::from_raw(p) })
    }

    /// The `nr` moves at `moves`.
    ///
    /// # Safety
    ///
    /// `moves` points to `nr` valid `struct gm_move` whose pages GMEM holds for `'a`.
    unsafe fn moves<'a>(moves: *const bindings::gm_move, nr: c_uint) -> &'a [Move<'a>] {
        if nr == 0 {
            return &[];
        }
        // SAFETY: by the safety requirements; `Move` is a transparent `gm_move` whose
        // invariant the requirements give.
        unsafe { core::slice::from_raw_parts(moves.cast::<Move<'a>>(), nr as usize) }
    }

    fn ret(r: Result) -> c_int {
        match r {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }

    /// # Safety
    ///
    /// Called by GMEM only, through [`Self::OPS`], with a device created by [`Device::new`]
    /// with `T` and the arguments `struct gm_mmu` documents.
    unsafe extern "C" fn peer_va_alloc_fixed(
        dev: *mut bindings::gm_dev,
        pmap: *mut c_void,
        va: c_ulong,
        len: c_ulong,
    ) -> c_int {
        // SAFETY: GMEM passes a live device and page table of this vtable.
        let (data, pmap) = unsafe { (Self::data(dev), Self::pmap(pmap)) };
        Self::ret(data.peer_va_alloc_fixed(pmap, va, len))
    }

    /// # Safety
    ///
    /// Called by GMEM only, through [`Self::OPS`], with a device created by [`Device::new`]
    /// with `T` and the arguments `struct gm_mmu` documents.
    unsafe extern "C" fn peer_va_free(
        dev: *mut bindings::gm_dev,
        pmap: *mut c_void,
        va: c_ulong,
        len: c_ulong,
    ) {
        // SAFETY: GMEM passes a live device and page table of this vtable.
        let (data, pmap) = unsafe { (Self::data(dev), Self::pmap(pmap)) };
        data.peer_va_free(pmap, va, len);
    }

    /// # Safety
    ///
    /// Called by GMEM only, through [`Self::OPS`], with a device created by [`Device::new`]
    /// with `T` and the arguments `struct gm_mmu` documents.
    unsafe extern "C" fn alloc_page(dev: *mut bindings::gm_dev, pfn: *mut u64) -> c_int {
        // SAFETY: GMEM passes a live device of this vtable.
        match unsafe { Self::data(dev) }.alloc_page() {
            Ok(p) => {
                // SAFETY: GMEM passes a writable `pfn`.
                unsafe { pfn.write(p) };
                0
            }
            Err(e) => e.to_errno(),
        }
    }

    /// # Safety
    ///
    /// Called by GMEM only, through [`Self::OPS`], with a device created by [`Device::new`]
    /// with `T` and the arguments `struct gm_mmu` documents.
    unsafe extern "C" fn free_page(dev: *mut bindings::gm_dev, pfn: u64) {
        // SAFETY: GMEM passes a live device of this vtable.
        unsafe { Self::data(dev) }.free_page(pfn);
    }

    /// # Safety
    ///
    /// Called by GMEM only, through [`Self::OPS`], with a device created by [`Device::new`]
    /// with `T` and the arguments `struct gm_mmu` documents.
    unsafe extern "C" fn prepare_page(
        dev: *mut bindings::gm_dev,
        pfn: u64,
        src: *mut bindings::page,
    ) -> c_int {
        // SAFETY: GMEM passes a live device and a page (or NULL) valid during the call.
        let (data, src) = unsafe { (Self::data(dev), Self::page(src)) };
        Self::ret(data.prepare_page(pfn, src.as_deref()))
    }

    /// # Safety
    ///
    /// Called by GMEM only, through [`Self::OPS`], with a device created by [`Device::new`]
    /// with `T` and the arguments `struct gm_mmu` documents.
    unsafe extern "C" fn copy_to_host(
        dev: *mut bindings::gm_dev,
        pfn: u64,
        dst: *mut bindings::page,
    ) -> c_int {
        // SAFETY: GMEM passes a live device and a page valid during the call.
        let (data, dst) = unsafe { (Self::data(dev), Self::page(dst)) };
        match dst {
            Some(dst) => Self::ret(data.copy_to_host(pfn, &dst)),
            None => EINVAL.to_errno(),
        }
    }

    /// # Safety
    ///
    /// Called by GMEM only, through [`Self::OPS`], with a device created by [`Device::new`]
    /// with `T` and the arguments `struct gm_mmu` documents.
    unsafe extern "C" fn pmap_create(dev: *mut bindings::gm_dev, pmap: *mut *mut c_void) -> c_int {
        // SAFETY: GMEM passes a live device of this vtable.
        let data = unsafe { Self::data(dev) };
        let created = data
            .pmap_create()
            .and_then(|p| KBox::new(p, GFP_KERNEL).map_err(Into::into));
        match created {
            Ok(p) => {
                // SAFETY: GMEM passes a writable `pmap`.
                unsafe { pmap.write(p.into_foreign()) };
                0
            }
            Err(e) => e.to_errno(),
        }
    }

    /// # Safety
    ///
    /// Called by GMEM only, through [`Self::OPS`], with a device created by [`Device::new`]
    /// with `T` and the arguments `struct gm_mmu` documents.
    unsafe extern "C" fn pmap_destroy(dev: *mut bindings::gm_dev, pmap: *mut c_void) {
        // SAFETY: GMEM destroys each page table of this vtable once, after its last use.
        let (data, pmap) = unsafe { (Self::data(dev), KBox::<T::Pmap>::from_foreign(pmap)) };
        data.pmap_destroy(KBox::into_inner(pmap));
    }

    /// # Safety
    ///
    /// Called by GMEM only, through [`Self::OPS`], with a device created by [`Device::new`]
    /// with `T` and the arguments `struct gm_mmu` documents.
    unsafe extern "C" fn pmap_enter(
        dev: *mut bindings::gm_dev,
        pmap: *mut c_void,
        va: c_ulong,
        pfn: u64,
        prot: c_uint,
    ) -> c_int {
        // SAFETY: GMEM passes a live device and page table of this vtable.
        let (data, pmap) = unsafe { (Self::data(dev), Self::pmap(pmap)) };
        Self::ret(data.pmap_enter(pmap, va, pfn, Prot(prot)))
    }

    /// # Safety
    ///
    /// Called by GMEM only, through [`Self::OPS`], with a device created by [`Device::new`]
    /// with `T` and the arguments `struct gm_mmu` documents.
    unsafe extern "C" fn pmap_release(
        dev: *mut bindings::gm_dev,
        pmap: *mut c_void,
        va: c_ulong,
        len: c_ulong,
    ) {
        // SAFETY: GMEM passes a live device and page table of this vtable.
        let (data, pmap) = unsafe { (Self::data(dev), Self::pmap(pmap)) };
        data.pmap_release(pmap, va, len);
    }

    /// # Safety
    ///
    /// Called by GMEM only, through [`Self::OPS`], with a device created by [`Device::new`]
    /// with `T` and the arguments `struct gm_mmu` documents.
    unsafe extern "C" fn pmap_protect(
        dev: *mut bindings::gm_dev,
        pmap: *mut c_void,
        va: c_ulong,
        len: c_ulong,
        prot: c_uint,
    ) -> c_int {
        // SAFETY: GMEM passes a live device and page table of this vtable.
        let (data, pmap) = unsafe { (Self::data(dev), Self::pmap(pmap)) };
        Self::ret(data.pmap_protect(pmap, va, len, Prot(prot)))
    }

    /// # Safety
    ///
    /// Called by GMEM only, through [`Self::OPS`], with a device created by [`Device::new`]
    /// with `T` and the arguments `struct gm_mmu` documents.
    unsafe extern "C" fn pmap_clear_young(
        dev: *mut bindings::gm_dev,
        pmap: *mut c_void,
        va: c_ulong,
    ) -> bool {
        // SAFETY: GMEM passes a live device and page table of this vtable.
        let (data, pmap) = unsafe { (Self::data(dev), Self::pmap(pmap)) };
        data.pmap_clear_young(pmap, va)
    }

    /// # Safety
    ///
    /// Called by GMEM only, through [`Self::OPS`], with a device created by [`Device::new`]
    /// with `T` and the arguments `struct gm_mmu` documents.
    unsafe extern "C" fn pmap_enter_host(
        dev: *mut bindings::gm_dev,
        pmap: *mut c_void,
        va: c_ulong,
        page: *mut bindings::page,
        prot: c_uint,
    ) -> c_int {
        let Some(page) = NonNull::new(page) else {
            return EINVAL.to_errno();
        };
        // SAFETY: GMEM passes a live device and page table of this vtable, and a page it holds
        // for the call.
        let (data, pmap, page) = unsafe {
            (
                Self::data(dev),
                Self::pmap(pmap),
                BorrowedPage::from_raw(page),
            )
        };
        Self::ret(data.pmap_enter_host(pmap, va, &page, Prot(prot)))
    }

    /// # Safety
    ///
    /// Called by GMEM only, through [`Self::OPS`], with a device created by [`Device::new`]
    /// with `T` and the arguments `struct gm_mmu` documents.
    unsafe extern "C" fn tlb_invl(
        dev: *mut bindings::gm_dev,
        pmap: *mut c_void,
        va: c_ulong,
        len: c_ulong,
    ) {
        // SAFETY: GMEM passes a live device and page table of this vtable.
        let (data, pmap) = unsafe { (Self::data(dev), Self::pmap(pmap)) };
        data.tlb_invl(pmap, va, len);
    }

    /// # Safety
    ///
    /// Called by GMEM only, through [`Self::OPS`], with a device created by [`Device::new`]
    /// with `T` and the arguments `struct gm_mmu` documents.
    unsafe extern "C" fn tlb_invl_coalesced(
        dev: *mut bindings::gm_dev,
        pmap: *mut c_void,
        ranges: *const bindings::gm_va_range,
        nr: c_uint,
    ) {
        // SAFETY: GMEM passes a live device and page table of this vtable.
        let (data, pmap) = unsafe { (Self::data(dev), Self::pmap(pmap)) };
        let ranges = if nr == 0 {
            &[]
        } else {
            // SAFETY: GMEM passes `nr` valid ranges.
            unsafe { core::slice::from_raw_parts(ranges, nr as usize) }
        };
        data.tlb_invl_coalesced(pmap, ranges);
    }

    /// # Safety
    ///
    /// Called by GMEM only, through [`Self::OPS`], with a device created by [`Device::new`]
    /// with `T` and the arguments `struct gm_mmu` documents.
    unsafe extern "C" fn peer_map(
        dev: *mut bindings::gm_dev,
        pmap: *mut c_void,
        va: c_ulong,
        moves: *const bindings::gm_move,
        nr: c_uint,
        prot: c_uint,
    ) -> c_int {
        // SAFETY: GMEM passes a live device and page table.
        let (data, pmap) = unsafe { (Self::data(dev), Self::pmap(pmap)) };
        // SAFETY: GMEM passes `nr` moves whose pages it holds for the call.
        let moves = unsafe { Self::moves(moves, nr) };
        Self::ret(data.peer_map(pmap, va, moves, Prot(prot)))
    }

    /// # Safety
    ///
    /// Called by GMEM only, through [`Self::OPS`], with a device created by [`Device::new`]
    /// with `T` and the arguments `struct gm_mmu` documents.
    unsafe extern "C" fn peer_unmap(
        dev: *mut bindings::gm_dev,
        pmap: *mut c_void,
        va: c_ulong,
        moves: *const bindings::gm_move,
        nr: c_uint,
    ) -> c_int {
        // SAFETY: GMEM passes a live device and page table.
        let (data, pmap) = unsafe { (Self::data(dev), Self::pmap(pmap)) };
        // SAFETY: GMEM passes `nr` moves whose pages it holds for the call.
        let moves = unsafe { Self::moves(moves, nr) };
        Self::ret(data.peer_unmap(pmap, va, moves))
    }

    /// # Safety
    ///
    /// Called by GMEM only, through [`Self::OPS`], with a device created by [`Device::new`]
    /// with `T` and the arguments `struct gm_mmu` documents.
    unsafe extern "C" fn release(dev: *mut bindings::gm_dev) {
        // SAFETY: the private data is `Arc::into_raw` of an `Arc<T>`; this is its last use.
        drop(unsafe { Arc::from_raw(bindings::gm_dev_priv(dev).cast::<T>()) });
    }

    const OPS: bindings::gm_mmu = bindings::gm_mmu {
        peer_va_alloc_fixed: if T::HAS_PEER_VA_ALLOC_FIXED {
            Some(Self::peer_va_alloc_fixed)
        } else {
            None
        },
        peer_va_free: if T::HAS_PEER_VA_FREE {
            Some(Self::peer_va_free)
        } else {
            None
        },
        alloc_page: if T::HAS_ALLOC_PAGE {
            Some(Self::alloc_page)
        } else {
            None
        },
        free_page: if T::HAS_FREE_PAGE {
            Some(Self::free_page)
        } else {
            None
        },
        prepare_page: Some(Self::prepare_page),
        copy_to_host: Some(Self::copy_to_host),
        pmap_create: Some(Self::pmap_create),
        pmap_destroy: Some(Self::pmap_destroy),
        pmap_enter: Some(Self::pmap_enter),
        pmap_release: Some(Self::pmap_release),
        pmap_protect: if T::HAS_PMAP_PROTECT {
            Some(Self::pmap_protect)
        } else {
            None
        },
        pmap_clear_young: if T::HAS_PMAP_CLEAR_YOUNG {
            Some(Self::pmap_clear_young)
        } else {
            None
        },
        pmap_enter_host: if T::HAS_PMAP_ENTER_HOST {
            Some(Self::pmap_enter_host)
        } else {
            None
        },
        tlb_invl: Some(Self::tlb_invl),
        tlb_invl_coalesced: if T::HAS_TLB_INVL_COALESCED {
            Some(Self::tlb_invl_coalesced)
        } else {
            None
        },
        peer_map: if T::HAS_PEER_MAP {
            Some(Self::peer_map)
        } else {
            None
        },
        peer_unmap: if T::HAS_PEER_UNMAP {
            Some(Self::peer_unmap)
        } else {
            None
        },
        release: Some(Self::release),
    };
}

/// What GMEM did with a device's memory (`struct gm_dev_stats`).
pub type Stats = bindings::gm_dev_stats;

/// A device registered with GMEM (`struct gm_dev`), unregistered on drop.
///
/// Contexts still attached keep the device's data (the `T`) alive until they are dropped.
///
/// # Invariants
///
/// `raw` is a device created by `gm_dev_create()` with `MmuVtable<T>`, whose reference this
/// object owns.
pub struct Device<T: GmMmu> {
    raw: NonNull<bindings::gm_dev>,
    _data: PhantomData<Arc<T>>,
}

// SAFETY: GMEM's device functions may be called from any thread, and `T` is `Send + Sync`.
unsafe impl<T: GmMmu> Send for Device<T> {}
// SAFETY: as above.
unsafe impl<T: GmMmu> Sync for Device<T> {}

impl<T: GmMmu> Device<T> {
    /// Registers a device whose MMU operations are `data`'s.
    pub fn new(data: Arc<T>, caps: Caps, name: &CStr) -> Result<Self> {
        let priv_ = Arc::into_raw(data).cast_mut().cast::<c_void>();
        // SAFETY: the operations table is static; `name` is NUL-terminated; `priv_` is released
        // by `MmuVtable::release`.
        let raw = unsafe {
            bindings::gm_dev_create(&MmuVtable::<T>::OPS, priv_, caps.0, name.as_char_ptr())
        };
        match from_err_ptr(raw) {
            // INVARIANT: created with `MmuVtable<T>`; the reference is ours.
            Ok(raw) => Ok(Self {
                // SAFETY: `from_err_ptr` returned a non-error pointer, which GMEM never makes
                // NULL.
                raw: unsafe { NonNull::new_unchecked(raw) },
                _data: PhantomData,
            }),
            Err(e) => {
                // SAFETY: GMEM did not keep `priv_` on failure.
                drop(unsafe { Arc::from_raw(priv_.cast::<T>()) });
                Err(e)
            }
        }
    }

    /// The driver's data.
    pub fn data(&self) -> &T {
        // SAFETY: by the type invariant the device is live and was created with `T`.
        unsafe { MmuVtable::<T>::data(self.raw.as_ptr()) }
    }

    /// Hands `size` bytes of device memory at device address `base` to GMEM.  Once per device
    /// (`EBUSY` after that); `EINVAL` if either is not page aligned, `size` is zero, or the range
    /// ends past 4 PiB (the logical page table keeps 40-bit page frame numbers).
    pub fn register_physmem(&self, base: u64, size: u64) -> Result {
        // SAFETY: by the type invariant the device is live.
        to_result(unsafe { bindings::gm_dev_register_physmem(self.raw.as_ptr(), base, size) })
    }

    /// The device's node id (`hnid`), the first argument of `hmadvise(2)`.
    pub fn hnid(&self) -> u32 {
        // SAFETY: by the type invariant the device is live.
        unsafe { bindings::gm_dev_hnid(self.raw.as_ptr()) as u32 }
    }

    /// What GMEM did with the device's memory so far.
    pub fn stats(&self) -> Stats {
        let mut stats = core::mem::MaybeUninit::<Stats>::uninit();
        // SAFETY: by the type invariant the device is live; `stats` is writable, and GMEM
        // writes all of it.
        unsafe {
            bindings::gm_dev_get_stats(self.raw.as_ptr(), stats.as_mut_ptr());
            stats.assume_init()
        }
    }
}

impl<T: GmMmu> Drop for Device<T> {
    fn drop(&mut self) {
        // SAFETY: by the type invariant the reference is ours to give up.
        unsafe { bindings::gm_dev_destroy(self.raw.as_ptr()) };
    }
}

/// The GMEM address space of a process (`struct gm_as`).
///
/// Only reachable from the process itself, for as long as a borrow of the current task lives:
/// the address space lives as long as the process's memory.
#[repr(transparent)]
pub struct AddressSpace(Opaque<bindings::gm_as>);

impl AddressSpace {
    /// The address space of the calling process, created if it has none.  `EINVAL` for a
    /// kernel thread.
    pub fn current(_task: &CurrentTask) -> Result<&AddressSpace> {
        // SAFETY: called from the current task, holding none of its mm's locks (a driver's
        // file operation or probe path).
        let raw = from_err_ptr(unsafe { bindings::gm_as_create() })?;
        // SAFETY: `raw` is the live address space of current's mm, which the borrow of the
        // current task keeps alive; `AddressSpace` is a transparent wrapper of it.
        Ok(unsafe { &*raw.cast::<AddressSpace>() })
    }

    /// Attaches `dev` to this address space.  `EEXIST` if it is attached already.
    pub fn attach<T: GmMmu>(&self, dev: &Device<T>) -> Result<Context<T>> {
        // SAFETY: `self` is current's address space (see `current`); the device is live.
        let raw = from_err_ptr(unsafe { bindings::gm_as_attach(self.0.get(), dev.raw.as_ptr()) })?;
        // INVARIANT: a context of a device created with `T`, whose reference we own.
        Ok(Context {
            // SAFETY: GMEM never returns NULL for success.
            raw: unsafe { NonNull::new_unchecked(raw) },
            _data: PhantomData,
        })
    }
}

/// A device attached to a process's address space (`struct gm_context`), detached on drop.
///
/// Detaching brings the device's pages of a still running process back to host memory.  A
/// context outlives its process safely: faults then fail with `ESRCH`.
///
/// # Invariants
///
/// `raw` is a context from `gm_as_attach()` of a device created with `T`, whose reference
/// this object owns.
pub struct Context<T: GmMmu> {
    raw: NonNull<bindings::gm_context>,
    _data: PhantomData<Arc<T>>,
}

// SAFETY: GMEM's context functions may be called from any thread.
unsafe impl<T: GmMmu> Send for Context<T> {}
// SAFETY: as above.
unsafe impl<T: GmMmu> Sync for Context<T> {}

impl<T: GmMmu> Context<T> {
    /// The device page table GMEM created for this context with [`GmMmu::pmap_create`]: what
    /// the device translates through while it works for the process.
    pub fn pmap(&self) -> &T::Pmap {
        // SAFETY: by the type invariant the context is live and its page table came from
        // `MmuVtable::<T>::pmap_create`; it is destroyed only after the context is detached,
        // which `&self` excludes.
        unsafe { MmuVtable::<T>::pmap(bindings::gm_context_pmap(self.raw.as_ptr())) }
    }

    /// Handles a device fault at `va`: when this returns `Ok`, the page is on the device and
    /// mapped there.  `EFAULT` if `va` is not in a peer-shared mapping with the rights `access`
    /// needs, `ESRCH` once the process is gone, `ENOMEM` when the device is full.
    /// A batch of one (see [`Context::fault_batch`]).
    pub fn fault(&self, va: usize, access: Access) -> Result {
        self.fault_batch(&mut [Fault::new(va, access)])
    }

    /// Handles the device faults `faults` (the contents of a device's fault buffer) at once:
    /// sorted and merged per page, each 2 MiB block with one migration, widened by density
    /// prefetch (see `gm_dev_fault_batch()`).  Returns the first error in address order;
    /// [`Fault::status`] tells each fault's.  `EINVAL` for an empty batch or one of more than
    /// [`FAULT_BATCH_MAX`], and no status is written then.
    pub fn fault_batch(&self, faults: &mut [Fault]) -> Result {
        if faults.len() > FAULT_BATCH_MAX {
            return Err(EINVAL);
        }
        // SAFETY: by the type invariant the context is live and `&self` excludes the detach;
        // `Fault` is a transparent `struct gm_fault` and `faults` is ours to write for the call.
        to_result(unsafe {
            bindings::gm_dev_fault_batch(
                self.raw.as_ptr(),
                faults.as_mut_ptr().cast(),
                faults.len() as c_uint,
            )
        })
    }

    /// Keeps eviction away from `[start, start + len)` while the returned guard lives: what a
    /// driver does for a job's pages while the job runs.  A device that cannot fault must hold
    /// a job's pages from before it makes them resident until the job ends.
    pub fn hold(&self, start: usize, len: usize) -> Result<Hold<'_, T>> {
        // SAFETY: by the type invariant the context is live and `&self` excludes the detach.
        to_result(unsafe { bindings::gm_context_hold(self.raw.as_ptr(), start, len) })?;
        Ok(Hold {
            ctx: self,
            start,
            len,
        })
    }

    /// [`Context::fault`] for every page of `[start, start + len)`, page aligned (`EINVAL`
    /// otherwise): what a driver of a device without fault support calls before a job.
    pub fn fault_range(&self, start: usize, len: usize, access: Access) -> Result {
        // SAFETY: by the type invariant the context is live; `&self` excludes the detach in
        // `drop`.
        to_result(unsafe {
            bindings::gm_dev_fault_range(
                self.raw.as_ptr(),
                start as c_ulong,
                len as c_ulong,
                access.0,
            )
        })
    }
}

impl<T: GmMmu> Drop for Context<T> {
    fn drop(&mut self) {
        // SAFETY: by the type invariant the reference is ours to give up.
        unsafe { bindings::gm_context_detach(self.raw.as_ptr()) };
    }
}

/// A range of a [`Context`] that eviction leaves alone (see [`Context::hold`]).
pub struct Hold<'a, T: GmMmu> {
    ctx: &'a Context<T>,
    start: usize,
    len: usize,
}

impl<T: GmMmu> Drop for Hold<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the context is live for `'a`; this ends the hold `Context::hold` made.
        unsafe { bindings::gm_context_unhold(self.ctx.raw.as_ptr(), self.start, self.len) };
    }
}
