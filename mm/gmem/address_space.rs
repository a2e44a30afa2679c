// SPDX-License-Identifier: GPL-2.0

//! The GMEM address space of a process (`gm_as`): its logical page table, the devices attached
//! to it, and how it follows what core MM does to the process's mappings.
//!
//! An [`AddressSpace`] is created the first time a process asks for `MAP_PEER_SHARED` memory
//! (or inherits some through fork), hangs off `mm_struct::gm_as`, and is freed exactly once,
//! right after `exit_mmap()`, when the last user of the mm is gone.
//!
//! It follows the process's mappings through one `mmu_interval_notifier` over the whole user
//! address range, the way HMM mirrors do, instead of hooks in every path that unmaps:
//!
//! - `MMU_NOTIFY_UNMAP` (munmap, a `MAP_FIXED` mmap over it, mremap shrinking it, brk) and
//!   `MMU_NOTIFY_RELEASE` (exit): the range's entries go, its device pages are unmapped on
//!   their device and freed;
//! - `MMU_NOTIFY_CLEAR` (`MADV_DONTNEED` and friends): device pages go the same way; host pages
//!   keep their entry (the CPU page table is the truth for them);
//! - `MMU_NOTIFY_PROTECTION_*` (mprotect): device mappings are removed, so the device faults
//!   again and gets a mapping with the new rights; the pages stay on the device.
//!
//! Only two things need hooks because a notifier cannot see them: mremap moves the entries with
//! the VMA (the notifier only sees the old range vanish), and fork brings device-resident pages
//! back to the host before the page tables are copied, so that the child sees the data too.
//! VMA split and merge need nothing: the table is indexed by address, not by VMA.
//!
//! The locking rules are in the crate documentation (`gmem.rs`).

use crate::{
    device::DeviceList,
    fault::{cpu_fault_begin, cpu_fault_end, Begin},
    lpt::{LogicalPageTable, MappingBox, ParkedPage, Residency},
};
use core::{
    fmt,
    ptr::NonNull,
    sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering},
};
use kernel::{
    bindings, c_str,
    debugfs::Dir,
    error::to_result,
    ffi::{c_int, c_ulong},
    mm::virt::VmaRef,
    page::{BorrowedPage, PAGE_SIZE},
    prelude::*,
    types::Opaque,
    xarray::Guard,
};

/// Address spaces alive (shown in debugfs).
static ADDRESS_SPACES: AtomicUsize = AtomicUsize::new(0);

/// One process's GMEM state.
///
/// # Invariants
///
/// If `registered` is true, `notifier` is registered with the mm this address space belongs to
/// and will be unregistered when it is dropped.
#[pin_data(PinnedDrop)]
pub(crate) struct AddressSpace {
    #[pin]
    pub(crate) lpt: LogicalPageTable,
    #[pin]
    pub(crate) devices: DeviceList,
    #[pin]
    notifier: Opaque<bindings::mmu_interval_notifier>,
    registered: AtomicBool,
    /// The mm this address space belongs to (not a reference: the mm owns the address space).
    mm: *mut bindings::mm_struct,
    /// Created by fork: pages the logical page table does not know may be host pages that the
    /// parent touched.
    inherited: bool,
    /// Moves under way that do not hold the mm (evictions); drop waits for them.
    moving: AtomicUsize,
    /// An mremap is moving entries: no eviction may claim one meanwhile (see `begin_move`).
    remapping: AtomicBool,
}

// SAFETY: `mm` is only an identity and is dereferenced only by paths of that mm, which keep it
// alive; everything else is synchronised by its own lock.
unsafe impl Send for AddressSpace {}
// SAFETY: as above.
unsafe impl Sync for AddressSpace {}

/// The notifier's callbacks.
static NOTIFIER_OPS: bindings::mmu_interval_notifier_ops = bindings::mmu_interval_notifier_ops {
    invalidate: Some(invalidate),
    invalidate_start: None,
    invalidate_finish: None,
};

impl AddressSpace {
    pub(crate) fn new(mm: *mut bindings::mm_struct, inherited: bool) -> Result<Pin<KBox<Self>>> {
        let this = KBox::pin_init(
            pin_init!(Self {
                lpt <- LogicalPageTable::new(),
                devices <- DeviceList::new(),
                notifier: Opaque::zeroed(),
                registered: AtomicBool::new(false),
                mm,
                inherited,
                moving: AtomicUsize::new(0),
                remapping: AtomicBool::new(false),
            }),
            GFP_KERNEL_ACCOUNT,
        )?;
        ADDRESS_SPACES.fetch_add(1, Ordering::Relaxed);
        Ok(this)
    }

    /// Registers the notifier over the whole user address range of `mm`.
    ///
    /// # Safety
    ///
    /// `mm` is a live mm that this address space is being attached to.  If `locked`, the caller
    /// holds `mm`'s mmap lock for writing; otherwise it holds no mmap lock of `mm`.
    unsafe fn register(&self, mm: *mut bindings::mm_struct, locked: bool) -> Result {
        // SAFETY: `notifier` is pinned inside `self` and stays there until it is unregistered in
        // `drop`; `mm` is live; the ops are static; the caller holds the lock `locked` says.
        // The range is all of it: [0, ULONG_MAX - 1].
        let ret = unsafe {
            if locked {
                bindings::mmu_interval_notifier_insert_locked(
                    self.notifier.get(),
                    mm,
                    0,
                    c_ulong::MAX,
                    &NOTIFIER_OPS,
                )
            } else {
                bindings::mmu_interval_notifier_insert(
                    self.notifier.get(),
                    mm,
                    0,
                    c_ulong::MAX,
                    &NOTIFIER_OPS,
                )
            }
        };
        to_result(ret)?;
        // INVARIANT: the notifier was just registered.
        self.registered.store(true, Ordering::Release);
        Ok(())
    }

    /// The address space of `mm`, if it has one.
    ///
    /// # Safety
    ///
    /// `mm` is live and the caller keeps it so (it runs in a path of that mm: a fault, a
    /// syscall, fork or teardown), which keeps its address space alive too.
    pub(crate) unsafe fn of<'a>(mm: *mut bindings::mm_struct) -> Option<&'a AddressSpace> {
        // SAFETY: by the safety requirements `mm` is valid; the field is only written with
        // atomic operations.
        let ptr = unsafe { slot(mm) }.load(Ordering::Acquire);
        // SAFETY: a non-null `gm_as` came from `KBox::into_raw` in `install` and is freed only
        // by `gm_as_exit`, after which no path of this mm runs.
        NonNull::new(ptr.cast::<AddressSpace>()).map(|p| unsafe { &*p.as_ptr() })
    }

    /// Makes `this` the address space of `mm`, unless it already has one.
    ///
    /// # Safety
    ///
    /// Same as [`AddressSpace::of`].
    unsafe fn install(mm: *mut bindings::mm_struct, this: Pin<KBox<Self>>) {
        // SAFETY: the box is never moved out of: it is freed in place by `gm_as_exit`.
        let raw = KBox::into_raw(unsafe { Pin::into_inner_unchecked(this) });
        // SAFETY: `mm` is valid by the safety requirements.
        let slot = unsafe { slot(mm) };
        if slot
            .compare_exchange(
                core::ptr::null_mut(),
                raw.cast(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            // Another thread of the process was first; ours goes.
            // SAFETY: `raw` came from `KBox::into_raw` above and was never published.
            drop(unsafe { Pin::new_unchecked(KBox::from_raw(raw)) });
        }
    }

    /// The mm this address space belongs to.
    pub(crate) fn mm(&self) -> *mut bindings::mm_struct {
        self.mm
    }

    /// Claims page `vpn` for a move by a path that holds neither the mm nor the address space
    /// (eviction), if it is `expect` and not busy: the entry becomes busy and nowhere, and the
    /// address space stays until [`AddressSpace::move_done`].
    ///
    /// Refused while an mremap moves entries: it copies an entry without its claim, and the
    /// move, finding its entry gone at the old address when it ended, would free the data.
    pub(crate) fn begin_move(&self, vpn: usize, expect: Residency) -> bool {
        // With `remap_begin`: the flag and the count are each stored, then the other read,
        // in one total order (SeqCst), so either mremap waits for this move or this move
        // sees the flag and backs out.
        if self.remapping.load(Ordering::SeqCst) {
            return false;
        }
        if !self.lpt.claim_if(vpn, expect, |_| {
            self.moving.fetch_add(1, Ordering::SeqCst);
        }) {
            return false;
        }
        if self.remapping.load(Ordering::SeqCst) {
            // Nobody else could touch the entry while it was ours: put it back.
            self.end_move(vpn, expect);
            self.move_done();
            return false;
        }
        true
    }

    /// Starts an mremap's move of entries: waits for the moves under way; no new one starts
    /// until [`AddressSpace::remap_end`].  The caller holds the mmap lock for writing, which
    /// keeps every other mover (faults, migrations) out.
    fn remap_begin(&self) {
        self.remapping.store(true, Ordering::SeqCst);
        self.wait_moves();
    }

    /// Ends what [`AddressSpace::remap_begin`] started.
    fn remap_end(&self) {
        self.remapping.store(false, Ordering::Release);
    }

    /// Records where a page claimed by [`AddressSpace::begin_move`] lives now.  `false` if its
    /// entry was dropped meanwhile: then the caller still owns `now`.
    pub(crate) fn end_move(&self, vpn: usize, now: Residency) -> bool {
        self.lpt.end_claim(vpn, now)
    }

    /// Ends a move from [`AddressSpace::begin_move`]; the caller does not use `self` again.
    pub(crate) fn move_done(&self) {
        self.moving.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether the address space was created by fork (see the field).
    pub(crate) fn inherited(&self) -> bool {
        self.inherited
    }

    /// Starts a device-side update of the address space: returns the notifier sequence to check
    /// with [`AddressSpace::changed`] once the device mapping is in place.  May sleep while an
    /// invalidation is under way.
    pub(crate) fn read_begin(&self) -> c_ulong {
        // SAFETY: the notifier is registered (or was never used: then the sequence is 0).
        unsafe { bindings::mmu_interval_read_begin(self.notifier.get()) }
    }

    /// Whether an invalidation ran since [`AddressSpace::read_begin`] returned `seq`.  The
    /// caller holds the logical page table lock, under which `invalidate` updates the sequence.
    pub(crate) fn changed(&self, _lpt: &Guard<'_, MappingBox>, seq: c_ulong) -> bool {
        // SAFETY: the field is written under the logical page table lock, which the caller
        // holds.
        unsafe { core::ptr::read_volatile(&raw const (*self.notifier.get()).invalidate_seq) != seq }
    }

    /// Drops the entries in `start..end` (addresses) that `select` picks: device pages go back
    /// to their device, parked pages are freed.
    pub(crate) fn drop_range(
        &self,
        start: usize,
        end: usize,
        select: impl FnMut(Residency) -> bool,
    ) {
        let mut batch = self.devices.batch();
        self.lpt.erase_range(
            start / PAGE_SIZE,
            end.div_ceil(PAGE_SIZE),
            select,
            |vpn, r| match r {
                Residency::Device(page) => batch.push(vpn * PAGE_SIZE, page),
                // SAFETY: the entry that owned the parked page is gone; we own it now.
                Residency::Parked(raw) => drop(unsafe { ParkedPage::from_raw(raw) }),
                _ => {}
            },
        );
    }

    /// Drops the device and parked pages of `start..end` (addresses), whose data a zap of the
    /// range discards (`MADV_DONTNEED`, `MADV_FREE`, hmadvise): they have no PTE for the zap.
    ///
    /// Pages being moved go too (a claimed entry is nowhere): an eviction or a migration in
    /// flight then finds its entry gone and frees what it holds, as after munmap.  Left alone,
    /// it would record its copy when it ends, and the dropped data would come back.
    pub(crate) fn dontneed(&self, start: usize, end: usize) {
        self.drop_range(start, end, |r| {
            matches!(
                r,
                Residency::Device(_) | Residency::Parked(_) | Residency::Nowhere
            )
        });
    }

    /// Waits until no eviction holds a claim on a page of this address space.
    pub(crate) fn wait_moves(&self) {
        while self.moving.load(Ordering::SeqCst) != 0 {
            kernel::time::delay::fsleep(kernel::time::Delta::from_micros(10));
        }
    }

    /// Whether a page in `start..end` (addresses) lives on a device.
    fn has_device_pages(&self, start: usize, end: usize) -> bool {
        let mut found = false;
        self.lpt
            .for_each_device_page(start / PAGE_SIZE, end.div_ceil(PAGE_SIZE), |_, _| {
                found = true
            });
        found
    }
}

#[pinned_drop]
impl PinnedDrop for AddressSpace {
    fn drop(self: Pin<&mut Self>) {
        if self.registered.load(Ordering::Acquire) {
            // SAFETY: by the type invariant the notifier is registered.  This is not called
            // from a notifier callback: address spaces are dropped by `gm_as_exit` or before
            // they were published.
            unsafe { bindings::mmu_interval_notifier_remove(self.notifier.get()) };
        }
        // Exit already dropped everything through MMU_NOTIFY_RELEASE; this catches an address
        // space that never saw its mm's exit (a fork that failed half-way).
        self.drop_range(0, usize::MAX, |_| true);
        // An eviction that claimed one of our pages finishes (finding its entry gone) before
        // the address space may go.
        self.wait_moves();
        // Contexts outlive their address space when their driver still holds them.
        for device in self.devices.take_all() {
            device.address_space_gone();
        }
        ADDRESS_SPACES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `mm->gm_as` as an atomic pointer.
///
/// # Safety
///
/// `mm` is valid for the returned lifetime.
unsafe fn slot<'a>(mm: *mut bindings::mm_struct) -> &'a AtomicPtr<bindings::gm_as> {
    // SAFETY: by the safety requirements `mm` is valid; `gm_as` is pointer-sized and aligned,
    // and every access to it goes through this atomic view.
    unsafe { AtomicPtr::from_ptr(&raw mut (*mm).__bindgen_anon_1.gm_as) }
}

/// The notifier callback: keeps the logical page table in step with core MM.
///
/// # Safety
///
/// Called by core MM only, for the notifier registered in [`AddressSpace::register`], with a
/// valid `range`.
unsafe extern "C" fn invalidate(
    mni: *mut bindings::mmu_interval_notifier,
    range: *const bindings::mmu_notifier_range,
    cur_seq: c_ulong,
) -> bool {
    // SAFETY: `mni` is the `notifier` field of a live, pinned `AddressSpace` (the notifier is
    // unregistered before the address space is freed).
    let this = unsafe {
        &*kernel::container_of!(
            mni.cast::<Opaque<bindings::mmu_interval_notifier>>(),
            AddressSpace,
            notifier
        )
    };
    // SAFETY: core MM passes a valid range for the duration of the call.
    let range = unsafe { &*range };
    let blockable = range.flags & bindings::MMU_NOTIFIER_RANGE_BLOCKABLE != 0;
    let (start, end) = (range.start, range.end);

    let device_work = matches!(
        range.event,
        bindings::mmu_notifier_event_MMU_NOTIFY_UNMAP
            | bindings::mmu_notifier_event_MMU_NOTIFY_RELEASE
            | bindings::mmu_notifier_event_MMU_NOTIFY_PROTECTION_VMA
            | bindings::mmu_notifier_event_MMU_NOTIFY_PROTECTION_PAGE
    );
    // Device work may sleep.  The OOM reaper cannot wait: it skips this mm when a device
    // holds pages of the range, and the exit path that follows frees them.
    if !blockable && device_work && this.has_device_pages(start, end) {
        return false;
    }
    {
        let _lpt = this.lpt.lock();
        // SAFETY: `mni` is valid; this is `mmu_interval_set_seq()`, done under the lock that
        // device faults take to check the sequence, so they see the change.
        unsafe { core::ptr::write_volatile(&raw mut (*mni).invalidate_seq, cur_seq) };
    }
    match range.event {
        bindings::mmu_notifier_event_MMU_NOTIFY_UNMAP
        | bindings::mmu_notifier_event_MMU_NOTIFY_RELEASE => this.drop_range(start, end, |_| true),
        // A cleared PTE does not mean that the data goes: copy-on-write, migration, KSM and
        // reclaim clear PTEs of pages that live on, and a copy-on-write fault notifies before
        // it checks the PTE, so the page may have moved to a device meanwhile (the fault then
        // retries and brings it home).  Nor do they concern a device, which maps only device
        // pages.  The zaps that discard data drop device and parked pages themselves
        // (`gm_as_dontneed()`, hmadvise).
        bindings::mmu_notifier_event_MMU_NOTIFY_PROTECTION_VMA
        | bindings::mmu_notifier_event_MMU_NOTIFY_PROTECTION_PAGE => this.lpt.for_each_device_page(
            start / PAGE_SIZE,
            end.div_ceil(PAGE_SIZE),
            |vpn, page| {
                if let Some(device) = this.devices.get(page.dev) {
                    device.unmap(vpn * PAGE_SIZE, page);
                }
            },
        ),
        // Soft-dirty tracking, migration and exclusive access concern host pages only.
        _ => {}
    }
    true
}

/// Faults the page at `addr` into the CPU page table of `mm` as a read access would, which
/// brings a device-resident page home.  Nothing happens outside a VMA.
///
/// # Safety
///
/// The caller holds `mm`'s mmap lock and `mm` has a user.
pub(crate) unsafe fn cpu_fault_in(mm: *mut bindings::mm_struct, addr: usize) -> Result {
    // SAFETY: the caller holds the mmap lock, which `find_vma` requires.
    let vma = unsafe { bindings::find_vma(mm, addr) };
    if vma.is_null() {
        return Ok(());
    }
    // SAFETY: `vma` is a VMA of `mm`, valid while the caller holds its mmap lock.
    if unsafe { VmaRef::from_raw(vma) }.start() > addr {
        return Ok(());
    }
    // SAFETY: `vma` contains `addr` and the mmap lock is held; flags 0 is a read fault that may
    // not drop the lock.
    let ret = unsafe { bindings::handle_mm_fault(vma, addr, 0, core::ptr::null_mut()) };
    if ret & (bindings::vm_fault_reason_VM_FAULT_OOM | bindings::vm_fault_reason_VM_FAULT_SIGBUS)
        != 0
    {
        return Err(ENOMEM);
    }
    Ok(())
}

fn errno(e: Error) -> c_int {
    e.to_errno()
}

/// Gives `mm` an address space before its first `MAP_PEER_SHARED` mapping.
///
/// # Safety
///
/// `mm` is the current process's mm; the caller holds none of its locks.
#[export]
pub unsafe extern "C" fn gm_as_prepare(mm: *mut bindings::mm_struct) -> c_int {
    // SAFETY: `mm` is current's mm, alive for the whole call.
    if unsafe { AddressSpace::of(mm) }.is_some() {
        return 0;
    }
    let this = match AddressSpace::new(mm, false) {
        Ok(this) => this,
        Err(e) => return errno(e),
    };
    // SAFETY: `mm` is live and not attached to `this` yet; the caller holds no mmap lock.
    if let Err(e) = unsafe { this.register(mm, false) } {
        return errno(e);
    }
    // SAFETY: as above.
    unsafe { AddressSpace::install(mm, this) };
    // SAFETY: plain C call; the hooks of core MM start working from here on.
    unsafe { bindings::gm_enable() };
    0
}

/// Prepares fork: brings the parent's device pages home and gives the child an address space.
///
/// The child gets an empty logical page table: the pages it inherits are host pages, mapped by
/// the page tables that fork copies, and are recorded when GMEM next needs to know about them.
/// Devices attached to the parent are not attached to the child.
///
/// # Safety
///
/// Called by `dup_mmap()` with `oldmm` and `mm` write-locked, before any VMA is copied.
#[export]
pub unsafe extern "C" fn gm_as_fork(
    oldmm: *mut bindings::mm_struct,
    mm: *mut bindings::mm_struct,
) -> c_int {
    // SAFETY: `oldmm` is the forking process's mm, locked by the caller.
    let Some(parent) = (unsafe { AddressSpace::of(oldmm) }) else {
        return 0;
    };
    // A device-resident page has no PTE for fork to copy: fault it home first, like a CPU
    // access would.  Faults under the write lock without FAULT_FLAG_ALLOW_RETRY never drop it.
    let mut result = Ok(());
    parent
        .lpt
        .for_each_away_page(0, usize::MAX / PAGE_SIZE + 1, |vpn| {
            if result.is_err() {
                return;
            }
            // SAFETY: the caller holds `oldmm`'s mmap lock for writing.
            result = unsafe { cpu_fault_in(oldmm, vpn * PAGE_SIZE) };
        });
    if let Err(e) = result {
        return errno(e);
    }
    let child = match AddressSpace::new(mm, true) {
        Ok(child) => child,
        Err(e) => return errno(e),
    };
    // SAFETY: `mm` is the new, write-locked child mm, with no VMA yet.
    if let Err(e) = unsafe { child.register(mm, true) } {
        return errno(e);
    }
    // SAFETY: `mm` is live and locked; nothing else can publish an address space for it.
    unsafe { AddressSpace::install(mm, child) };
    0
}

/// Frees the address space of `mm`, once, after `exit_mmap()`.
///
/// # Safety
///
/// Called by `__mmput()` after `exit_mmap(mm)`: no user of `mm` is left.
#[export]
pub unsafe extern "C" fn gm_as_exit(mm: *mut bindings::mm_struct) {
    // SAFETY: `mm` stays valid until `__mmput()` returns.
    let raw = unsafe { slot(mm) }.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if let Some(raw) = NonNull::new(raw.cast::<AddressSpace>()) {
        // SAFETY: `raw` came from `KBox::into_raw` in `install`, and nothing can reach it any
        // more: the slot is cleared and `mm` has no users.
        drop(unsafe { Pin::new_unchecked(KBox::from_raw(raw.as_ptr())) });
    }
}

/// Moves the logical mappings of `len` bytes at `old` to `new` (mremap), before core MM moves
/// the page tables.  Device pages stay where they are and are unmapped at their old address.
///
/// # Safety
///
/// Called by mremap with `mm`'s mmap lock held for writing; `old` and `new` are page aligned
/// and the two ranges do not overlap.
#[export]
pub unsafe extern "C" fn gm_as_mremap(
    mm: *mut bindings::mm_struct,
    old: c_ulong,
    new: c_ulong,
    len: c_ulong,
) -> c_int {
    // SAFETY: `mm` is current's mm, locked by the caller.
    let Some(this) = (unsafe { AddressSpace::of(mm) }) else {
        return 0;
    };
    this.remap_begin();
    let moved = this.lpt.move_range(
        old / PAGE_SIZE,
        new / PAGE_SIZE,
        len / PAGE_SIZE,
        |vpn, page| {
            if let Some(device) = this.devices.get(page.dev) {
                device.unmap(vpn * PAGE_SIZE, page);
                // Eviction finds the page at its new address.
                device.moved(page, this, vpn - old / PAGE_SIZE + new / PAGE_SIZE);
            }
        },
    );
    this.remap_end();
    match moved {
        Ok(()) => 0,
        Err(e) => errno(e),
    }
}

/// Drops the device and parked pages of `start..end` (madvise `MADV_DONTNEED` or `MADV_FREE`,
/// before the zap of the range's PTEs).
///
/// # Safety
///
/// Called by madvise with `mm`'s mmap or VMA lock held.
#[export]
pub unsafe extern "C" fn gm_as_dontneed(
    mm: *mut bindings::mm_struct,
    start: c_ulong,
    end: c_ulong,
) {
    // SAFETY: `mm` is the mm madvise works on (another process's with process_madvise()),
    // kept alive and locked by the caller.
    if let Some(this) = unsafe { AddressSpace::of(mm) } {
        this.dontneed(start, end);
    }
}

/// Claims the page at `addr` for a CPU fault that will install `page` (see [`crate::fault`]).
///
/// # Safety
///
/// Called by `do_anonymous_page()` on a peer-shared VMA of `mm`, with the mmap or VMA lock
/// held and no spinlock; `page` is the new, exclusively owned page.
#[export]
pub unsafe extern "C" fn gm_cpu_fault_begin(
    mm: *mut bindings::mm_struct,
    addr: c_ulong,
    page: *mut bindings::page,
) -> bindings::vm_fault_t {
    // SAFETY: `mm` is the faulting mm, alive during the fault.
    let Some(this) = (unsafe { AddressSpace::of(mm) }) else {
        return 0;
    };
    let Some(page) = NonNull::new(page) else {
        return bindings::vm_fault_reason_VM_FAULT_SIGBUS;
    };
    // SAFETY: the caller owns `page` for the duration of the call.
    let page = unsafe { BorrowedPage::from_raw(page) };
    let va = addr & !(PAGE_SIZE - 1);
    match cpu_fault_begin(&this.lpt, &this.devices, va / PAGE_SIZE, va, &page) {
        Ok(Begin::Proceed) => 0,
        // The access is retried once the page's owner is done with it.
        Ok(Begin::Busy) => bindings::vm_fault_reason_VM_FAULT_NOPAGE,
        Err(e) if e == ENOMEM => bindings::vm_fault_reason_VM_FAULT_OOM,
        Err(_) => bindings::vm_fault_reason_VM_FAULT_SIGBUS,
    }
}

/// Ends the CPU fault at `addr` that [`gm_cpu_fault_begin`] claimed.
///
/// # Safety
///
/// Called by `do_anonymous_page()` after a successful [`gm_cpu_fault_begin`] for the same page,
/// with the page table lock held if `installed`.
#[export]
pub unsafe extern "C" fn gm_cpu_fault_end(
    mm: *mut bindings::mm_struct,
    addr: c_ulong,
    installed: bool,
) {
    // SAFETY: `mm` is the faulting mm, alive during the fault.
    if let Some(this) = unsafe { AddressSpace::of(mm) } {
        cpu_fault_end(&this.lpt, addr / PAGE_SIZE, installed);
    }
}

/// A counter shown as a debugfs file.
struct Counter(&'static AtomicUsize);

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.load(Ordering::Relaxed))
    }
}

/// Creates `/sys/kernel/debug/gmem/`: `tracked_pages` (entries in every logical page table)
/// and `address_spaces`.  They live as long as the kernel.
pub(crate) fn debugfs_init() -> Result {
    let dir = Dir::new(c_str!("gmem"));
    let tracked = KBox::pin_init(
        dir.read_only_file(c_str!("tracked_pages"), Counter(&crate::lpt::TRACKED_PAGES)),
        GFP_KERNEL,
    )?;
    let spaces = KBox::pin_init(
        dir.read_only_file(c_str!("address_spaces"), Counter(&ADDRESS_SPACES)),
        GFP_KERNEL,
    )?;
    core::mem::forget(tracked);
    core::mem::forget(spaces);
    core::mem::forget(dir);
    Ok(())
}

#[cfg(CONFIG_GMEM_KUNIT_TEST)]
#[kunit_tests(gmem_address_space)]
mod tests {
    use super::*;
    use crate::{
        device::fake::{FakeDevice, Op},
        lpt::DevicePage,
    };
    use kernel::sync::Arc;

    /// An address space that is not registered with any mm, with a fake device attached and
    /// pages 10..14: host, device (pfn 11), device (pfn 12), host.
    fn setup() -> Result<(Pin<KBox<AddressSpace>>, Arc<FakeDevice>)> {
        let this = AddressSpace::new(core::ptr::null_mut(), false)?;
        let fake = FakeDevice::new(4, u64::MAX)?;
        this.devices.attach(fake.clone())?;
        assert_eq!(this.devices.attach(fake.clone()), Err(EEXIST));
        for (vpn, r) in [
            (10, Residency::Host),
            (11, Residency::Device(DevicePage { dev: 4, pfn: 11 })),
            (12, Residency::Device(DevicePage { dev: 4, pfn: 12 })),
            (13, Residency::Host),
        ] {
            this.lpt.insert(vpn, r)?;
        }
        Ok((this, fake))
    }

    /// Calls the notifier callback as core MM would.
    fn notify(
        this: &AddressSpace,
        event: u32,
        start_vpn: usize,
        end_vpn: usize,
        blockable: bool,
    ) -> bool {
        // SAFETY: an all-zero range is valid; the fields that matter are set below.
        let mut range: bindings::mmu_notifier_range = unsafe { core::mem::zeroed() };
        range.start = start_vpn * PAGE_SIZE;
        range.end = end_vpn * PAGE_SIZE;
        range.event = event;
        range.flags = if blockable {
            bindings::MMU_NOTIFIER_RANGE_BLOCKABLE
        } else {
            0
        };
        // SAFETY: `notifier` is the field of a live address space; the callback only writes its
        // sequence number.
        unsafe { invalidate(this.notifier.get(), &range, 7) }
    }

    #[test]
    fn unmap_drops_everything_and_frees_device_pages() -> Result {
        let (this, fake) = setup()?;
        assert!(notify(
            &this,
            bindings::mmu_notifier_event_MMU_NOTIFY_UNMAP,
            11,
            13,
            true
        ));
        assert_eq!(
            fake.take_ops(),
            // Batched: every mapping goes before any page is freed.
            [
                Op::Unmap(11 * PAGE_SIZE, 11),
                Op::Unmap(12 * PAGE_SIZE, 12),
                Op::Free(11),
                Op::Free(12)
            ]
        );
        assert_eq!(this.lpt.len(), 2);
        assert_eq!(this.lpt.residency(10), Some(Residency::Host));
        assert_eq!(this.lpt.residency(13), Some(Residency::Host));
        Ok(())
    }

    #[test]
    fn clear_keeps_every_page() -> Result {
        let (this, fake) = setup()?;
        // A cleared PTE is no discard: a copy-on-write fault notifies it for a page that may
        // have moved to a device meanwhile, and that page must stay.  Nothing to do for a
        // device either, so the OOM reaper (not blockable) is not turned away.
        assert!(notify(
            &this,
            bindings::mmu_notifier_event_MMU_NOTIFY_CLEAR,
            0,
            100,
            false
        ));
        assert_eq!(fake.take_ops().len(), 0);
        assert_eq!(this.lpt.len(), 4);
        Ok(())
    }

    #[test]
    fn dontneed_drops_device_and_parked_pages_only() -> Result {
        let (this, fake) = setup()?;
        this.dontneed(0, 100 * PAGE_SIZE);
        assert_eq!(fake.take_ops().len(), 4);
        assert_eq!(this.lpt.len(), 2);
        assert_eq!(this.lpt.residency(11), None);
        Ok(())
    }

    #[test]
    fn claim_after_an_invalidation_is_refused() -> Result {
        let (this, _fake) = setup()?;
        use crate::fault::{claim_since, unclaim};
        let host = Some(Residency::Host);
        // The notifier callback stores the sequence it is given (7).
        assert!(notify(
            &this,
            bindings::mmu_notifier_event_MMU_NOTIFY_CLEAR,
            10,
            11,
            true
        ));
        // Nothing ran since 7: the page table is not even looked at.
        assert_eq!(claim_since(&this, 10, host, 7, || false), Ok(true));
        unclaim(&this, 10, Residency::Host);
        // An invalidation ran since the pin (anywhere in the process)...
        // SAFETY: the notifier is a field of `this`, which no notifier callback uses now.
        unsafe { (*this.notifier.get()).invalidate_seq = 9 };
        // ... it counts only if the pinned page is no longer the one mapped.
        assert_eq!(claim_since(&this, 10, host, 7, || true), Ok(true));
        unclaim(&this, 10, Residency::Host);
        assert_eq!(claim_since(&this, 10, host, 7, || false), Ok(false));
        // Refused, the entry is as it was, not busy.
        assert_eq!(this.lpt.residency(10), Some(Residency::Host));
        assert!(this.begin_move(10, Residency::Host));
        assert!(this.end_move(10, Residency::Host));
        this.move_done();
        Ok(())
    }

    #[test]
    fn no_eviction_claims_during_mremap() -> Result {
        let (this, _fake) = setup()?;
        let page = DevicePage { dev: 4, pfn: 11 };
        this.remap_begin();
        assert!(!this.begin_move(11, Residency::Device(page)));
        // Refused, the entry is as it was.
        assert_eq!(this.lpt.residency(11), Some(Residency::Device(page)));
        this.remap_end();
        assert!(this.begin_move(11, Residency::Device(page)));
        assert!(this.end_move(11, Residency::Device(page)));
        this.move_done();
        Ok(())
    }

    #[test]
    fn dontneed_drops_a_page_being_moved() -> Result {
        let (this, fake) = setup()?;
        let page = DevicePage { dev: 4, pfn: 12 };
        // An eviction claims page 12; MADV_DONTNEED comes while it copies.
        assert!(this.begin_move(12, Residency::Device(page)));
        this.dontneed(12 * PAGE_SIZE, 13 * PAGE_SIZE);
        assert_eq!(this.lpt.residency(12), None);
        // Its end finds the entry gone: the data it copied is nobody's.
        assert!(!this.end_move(12, Residency::Device(page)));
        this.move_done();
        assert_eq!(this.lpt.residency(12), None);
        // Nothing was freed by the drop: the page was the eviction's.
        assert_eq!(fake.take_ops().len(), 0);
        assert_eq!(
            this.lpt.residency(11),
            Some(Residency::Device(DevicePage { dev: 4, pfn: 11 }))
        );
        Ok(())
    }

    #[test]
    fn protection_change_unmaps_but_keeps() -> Result {
        let (this, fake) = setup()?;
        assert!(notify(
            &this,
            bindings::mmu_notifier_event_MMU_NOTIFY_PROTECTION_VMA,
            0,
            100,
            true
        ));
        assert_eq!(
            fake.take_ops(),
            [Op::Unmap(11 * PAGE_SIZE, 11), Op::Unmap(12 * PAGE_SIZE, 12)]
        );
        assert_eq!(this.lpt.len(), 4);
        Ok(())
    }

    #[test]
    fn release_and_soft_dirty() -> Result {
        let (this, fake) = setup()?;
        // No device work for soft-dirty tracking: fine without blocking.
        assert!(notify(
            &this,
            bindings::mmu_notifier_event_MMU_NOTIFY_SOFT_DIRTY,
            0,
            100,
            false
        ));
        assert_eq!(this.lpt.len(), 4);
        assert!(notify(
            &this,
            bindings::mmu_notifier_event_MMU_NOTIFY_RELEASE,
            0,
            usize::MAX / PAGE_SIZE,
            true
        ));
        assert_eq!(this.lpt.len(), 0);
        assert_eq!(fake.take_ops().len(), 4);
        Ok(())
    }

    #[test]
    fn non_blockable_refuses_device_work() -> Result {
        let (this, fake) = setup()?;
        assert!(!notify(
            &this,
            bindings::mmu_notifier_event_MMU_NOTIFY_UNMAP,
            10,
            14,
            false
        ));
        assert_eq!(this.lpt.len(), 4);
        assert_eq!(fake.take_ops().len(), 0);
        // A range without device pages is fine.
        assert!(notify(
            &this,
            bindings::mmu_notifier_event_MMU_NOTIFY_UNMAP,
            13,
            14,
            false
        ));
        assert_eq!(this.lpt.len(), 3);
        Ok(())
    }

    #[test]
    fn dropping_releases_device_pages() -> Result {
        let (this, fake) = setup()?;
        drop(this);
        assert_eq!(fake.take_ops().len(), 4);
        Ok(())
    }
}
