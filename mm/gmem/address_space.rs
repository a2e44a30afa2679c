// SPDX-License-Identifier: GPL-2.0

//! The GMEM address space of a process (`gm_as`): its logical page table, the devices attached
//! to it, and how it follows what core MM does to the process's mappings.
//!
//! An [`AddressSpace`] is created the first time a process asks for `MAP_PEER_SHARED` memory
//! (or inherits some through fork), hangs off `mm_struct::gm_as`, and is freed exactly once,
//! right after `exit_mmap()`, when the last user of the mm is gone.
//!
//! It follows the process's mappings through MMU interval notifiers, the way HMM mirrors do,
//! instead of hooks in every path that unmaps: one per aligned 64 MiB window of the address
//! space that holds peer-shared memory (registered when mmap() made the range, when mremap()
//! moves it, and by a device fault for a window that has none), so that an invalidation
//! elsewhere in the process sends no device fault back to retry:
//!
//! - `MMU_NOTIFY_UNMAP` (munmap, a `MAP_FIXED` mmap over it, mremap shrinking it, brk) and
//!   `MMU_NOTIFY_RELEASE` (exit): the range's entries go, its device pages are unmapped on
//!   their device and freed;
//! - `MMU_NOTIFY_CLEAR` (`MADV_DONTNEED` and friends): device pages go the same way; host pages
//!   keep their entry (the CPU page table is the truth for them);
//! - `MMU_NOTIFY_PROTECTION_*` (mprotect): device mappings are removed, so the device faults
//!   again and gets a mapping with the new rights; the pages stay on the device.
//! - any event: the devices that map host pages of the range in place (`MADV_ACCESSED_BY`)
//!   lose their mappings of it, and fault again; the read-only copies of its pages
//!   (`MADV_READ_MOSTLY`) are dropped.
//!
//! Only two things need hooks because a notifier cannot see them: mremap moves the entries with
//! the VMA (the notifier only sees the old range vanish), and fork brings device-resident pages
//! back to the host before the page tables are copied, so that the child sees the data too.
//! VMA split and merge need nothing: the table is indexed by address, not by VMA.
//!
//! The locking rules are in the crate documentation (`gmem.rs`).

use crate::{
    device::DeviceList,
    lpt::{Claim, DeviceId, DevicePage, LogicalPageTable, PackedMapping, ParkedPage, Residency},
    policy::{device_bit, devices, Policy},
    trace,
};
use core::{
    fmt,
    ptr::NonNull,
    sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering},
};
use kernel::{
    alloc::flags::__GFP_NOFAIL,
    bindings, c_str,
    debugfs::Dir,
    error::to_result,
    ffi::c_ulong,
    mm::virt::VmaRef,
    new_condvar, new_mutex, new_spinlock,
    page::PAGE_SIZE,
    prelude::*,
    sync::{CondVar, Mutex, SpinLock},
    types::Opaque,
    xarray::{AllocKind, Guard, XArray},
};

/// The moves of an address space's pages by paths that hold neither its mm nor the address
/// space (evictions).
struct Moves {
    /// Under way: the address space may not go before they end.
    count: usize,
    /// No move may start (an mremap is moving entries).
    fenced: bool,
}

/// The page ranges being discarded (`MADV_DONTNEED`, `MADV_FREE`, hmadvise), as one span: no
/// move takes a page of it from host memory (see [`AddressSpace::dontneed_begin`]).
struct Discards {
    /// Discards under way.
    count: usize,
    /// The first page of the span of them all.
    first: usize,
    /// The page after its last.
    end: usize,
}

/// Address spaces alive (shown in debugfs).
static ADDRESS_SPACES: AtomicUsize = AtomicUsize::new(0);

/// Device faults that found an invalidation of their range since they started, and did the
/// work again (shown in debugfs).
static FAULT_RETRIES: AtomicUsize = AtomicUsize::new(0);

/// The address space one MMU interval notifier covers: an aligned window of 64 MiB.  An
/// invalidation outside a window concerns no device fault inside it (drm_gpusvm sizes its
/// notifiers the same way, by `notifier_size`).
pub(crate) const NOTIFIER_SHIFT: usize = 26;
const NOTIFIER_SIZE: usize = 1 << NOTIFIER_SHIFT;

/// The MMU interval notifier of one window of an address space.
///
/// # Invariants
///
/// `space` is the address space that holds this notifier in its `notifiers`, which drops it
/// before it goes.  If `registered`, `mni` is registered with that address space's mm and is
/// removed when this is dropped.
#[pin_data(PinnedDrop)]
pub(crate) struct Notifier {
    #[pin]
    mni: Opaque<bindings::mmu_interval_notifier>,
    space: *const AddressSpace,
    /// The window's first address.
    start: usize,
    registered: bool,
}

// SAFETY: `space` outlives the notifier (type invariant), and an address space is `Sync`;
// `mni` is only written by core MM and under the logical page table lock.
unsafe impl Send for Notifier {}
// SAFETY: as above.
unsafe impl Sync for Notifier {}

#[pinned_drop]
impl PinnedDrop for Notifier {
    fn drop(self: Pin<&mut Self>) {
        if self.registered {
            // SAFETY: by the type invariant `mni` is registered.  Notifiers are dropped by their
            // address space (or before they were published), never from a notifier callback.
            unsafe { bindings::mmu_interval_notifier_remove(self.mni.get()) };
        }
    }
}

impl Notifier {
    /// Starts a device-side update of the window: returns the notifier sequence to check with
    /// [`AddressSpace::changed`] once the device mapping is in place.  May sleep while an
    /// invalidation of the window is under way.
    pub(crate) fn read_begin(&self) -> Seq<'_> {
        // SAFETY: the notifier is registered, or was never used (then the sequence is 0).
        let seq = unsafe { bindings::mmu_interval_read_begin(self.mni.get()) };
        Seq {
            notifier: self,
            seq,
        }
    }
}

/// A notifier sequence from [`Notifier::read_begin`]: the start of a device-side update of
/// one window.
pub(crate) struct Seq<'a> {
    notifier: &'a Notifier,
    seq: c_ulong,
}

/// One process's GMEM state.
///
/// # Invariants
///
/// A notifier in `notifiers` is never removed before the address space is dropped.
#[pin_data(PinnedDrop)]
pub(crate) struct AddressSpace {
    #[pin]
    pub(crate) lpt: LogicalPageTable,
    #[pin]
    pub(crate) devices: DeviceList,
    /// The MMU interval notifiers, by window (address >> [`NOTIFIER_SHIFT`]).
    #[pin]
    notifiers: XArray<Pin<KBox<Notifier>>>,
    /// The mm this address space belongs to (not a reference: the mm owns the address space).
    mm: *mut bindings::mm_struct,
    /// Created by fork: pages the logical page table does not know may be host pages that the
    /// parent touched.
    inherited: bool,
    /// Evictions of this address space's pages under way, and whether they may start.
    #[pin]
    moves: SpinLock<Moves>,
    /// Signalled when the last eviction under way ends.
    #[pin]
    moves_done: CondVar,
    /// Ranges being discarded.  Changed under the logical page table lock (taken first) when a
    /// discard ends, so that [`LogicalPageTable::wait_while`] sees it.
    #[pin]
    discards: SpinLock<Discards>,
    /// The attributes `hmadvise(2)` gave ranges of pages.
    #[pin]
    pub(crate) policy: Policy,
    /// The devices that have mapped host pages of this address space in place
    /// (`MADV_ACCESSED_BY`), as [`crate::policy::device_bit`]s: every invalidation removes
    /// their mappings of the range.
    remote: AtomicU64,
    /// Held while a device maps host pages in place, from the check that no invalidation ran
    /// since the pages were pinned to the mapping, and while an invalidation removes in-place
    /// mappings: a device never maps a page the CPU no longer maps, not even for the moment
    /// between a mapping and a check after it (see [`AddressSpace::map_in_place_since`]).
    #[pin]
    in_place: Mutex<()>,
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
                notifiers <- XArray::new(AllocKind::Alloc),
                mm,
                inherited,
                moves <- new_spinlock!(Moves { count: 0, fenced: false }, "gmem_as::moves"),
                moves_done <- new_condvar!("gmem_as::moves_done"),
                discards <- new_spinlock!(
                    Discards {
                        count: 0,
                        first: 0,
                        end: 0,
                    },
                    "gmem_as::discards"
                ),
                policy <- Policy::new(),
                remote: AtomicU64::new(0),
                in_place <- new_mutex!((), "gmem_as::in_place"),
            }),
            GFP_KERNEL_ACCOUNT,
        )?;
        ADDRESS_SPACES.fetch_add(1, Ordering::Relaxed);
        Ok(this)
    }

    /// Lets `mm` have MMU interval notifiers (`mmu_notifier_register()` without a
    /// subscription), so that [`AddressSpace::cover`] never needs the mmap lock for that.
    ///
    /// # Safety
    ///
    /// `mm` is a live mm.  If `locked`, the caller holds its mmap lock for writing; otherwise
    /// it holds no mmap lock of `mm`.
    unsafe fn register(mm: *mut bindings::mm_struct, locked: bool) -> Result {
        // SAFETY: `mm` is live and the caller holds the lock `locked` says.  A NULL
        // subscription only sets up the interval tree.
        to_result(unsafe {
            if locked {
                bindings::__mmu_notifier_register(core::ptr::null_mut(), mm)
            } else {
                bindings::mmu_notifier_register(core::ptr::null_mut(), mm)
            }
        })
    }

    /// The notifier of the window of address `va`, if it has one.
    fn notifier(&self, va: usize) -> Option<&Notifier> {
        let guard = self.notifiers.lock();
        let ptr: *const Notifier = &*guard.get(va >> NOTIFIER_SHIFT)?;
        drop(guard);
        // SAFETY: by the type invariant the notifier stays until `self` is dropped.
        Some(unsafe { &*ptr })
    }

    /// Registers the notifiers of the windows of `start..end` (addresses) that have none.
    ///
    /// # Safety
    ///
    /// The mm of `self` is live.  If `locked`, the caller holds its mmap lock for writing;
    /// otherwise it holds no mmap lock of that mm.
    pub(crate) unsafe fn cover(&self, start: usize, end: usize, locked: bool) -> Result {
        let first = start >> NOTIFIER_SHIFT;
        let last = end.saturating_sub(1) >> NOTIFIER_SHIFT;
        for window in first..=last {
            if self.notifier(window << NOTIFIER_SHIFT).is_none() {
                // SAFETY: as required of our caller.
                unsafe { self.cover_window(window, locked) }?;
            }
        }
        Ok(())
    }

    /// Registers the notifier of window `window`, unless someone else did.
    ///
    /// # Safety
    ///
    /// As for [`AddressSpace::cover`].
    unsafe fn cover_window(&self, window: usize, locked: bool) -> Result {
        // No lock is held across the registration: `mmu_interval_notifier_insert()` may take
        // the mmap lock, which the callers with `locked` hold already, so a lock taken around
        // it would be ordered both before and after the mmap lock.  Two threads may register
        // a notifier for the same window; the second to record it drops its own.
        let start = window << NOTIFIER_SHIFT;
        if self.notifier(start).is_some() {
            return Ok(());
        }
        let registered = !self.mm.is_null();
        let notifier = KBox::pin_init(
            pin_init!(Notifier {
                mni: Opaque::zeroed(),
                space: self,
                start,
                registered: false,
            }),
            GFP_KERNEL_ACCOUNT,
        )?;
        if registered {
            // SAFETY: `mni` is pinned in the box, which `notifiers` keeps until `self` goes (it
            // is removed from the mm when dropped); the mm is live and the caller holds the
            // lock `locked` says; the ops are static.  (Without an mm, as in the KUnit tests,
            // the notifier is never registered.)
            to_result(unsafe {
                if locked {
                    bindings::mmu_interval_notifier_insert_locked(
                        notifier.mni.get(),
                        self.mm,
                        start as c_ulong,
                        NOTIFIER_SIZE as c_ulong,
                        &NOTIFIER_OPS,
                    )
                } else {
                    bindings::mmu_interval_notifier_insert(
                        notifier.mni.get(),
                        self.mm,
                        start as c_ulong,
                        NOTIFIER_SIZE as c_ulong,
                        &NOTIFIER_OPS,
                    )
                }
            })?;
        }
        let mut notifier = notifier;
        // INVARIANT: the notifier was just registered if `registered` is set.
        // SAFETY: only `registered` changes; the box stays pinned.
        unsafe { Pin::get_unchecked_mut(notifier.as_mut()) }.registered = registered;
        let stored = self
            .notifiers
            .lock()
            .insert(window, notifier, GFP_KERNEL_ACCOUNT);
        // Dropped (and unregistered, which may sleep) after the XArray's lock.
        match stored {
            Ok(()) => Ok(()),
            // Someone else recorded a notifier for the window meanwhile: it covers it.
            Err(e) if e.error == EBUSY => Ok(()),
            Err(e) => Err(e.error),
        }
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
    /// (eviction), if it is `expect` and not busy: the address space stays until
    /// [`AddressSpace::move_done`].
    ///
    /// Refused while an mremap moves entries: it copies an entry without its claim, and the
    /// move, finding its entry gone at the old address when it ended, would free the data.
    pub(crate) fn begin_move(&self, vpn: usize, expect: Residency) -> Option<Claim> {
        self.begin_claimed(|| self.lpt.claim_if(vpn, expect, |_| {}))
    }

    /// Takes the claim `claim` makes, for a move as [`AddressSpace::begin_move`] does, under
    /// the lock of the moves.
    fn begin_claimed(&self, claim: impl FnOnce() -> Option<Claim>) -> Option<Claim> {
        let mut moves = self.moves.lock();
        if moves.fenced {
            return None;
        }
        let claim = claim()?;
        moves.count += 1;
        Some(claim)
    }

    /// Claims the read-only copy of page `vpn` that is device page `page`, for an eviction, as
    /// [`AddressSpace::begin_move`] claims a page.
    pub(crate) fn begin_copy_move(&self, vpn: usize, page: DevicePage) -> Option<Claim> {
        self.begin_claimed(|| {
            self.lpt
                .claim_copy(vpn, page.dev, Some(page))
                .map(|(c, _)| c)
        })
    }

    /// Starts an mremap's move of entries: waits for the evictions under way; no new one
    /// starts until [`AddressSpace::unfence_moves`].  The caller holds the mmap lock for
    /// writing, which keeps every other mover (faults, migrations) out.
    fn fence_moves(&self) {
        kernel::task::might_sleep();
        let mut moves = self.moves.lock();
        moves.fenced = true;
        while moves.count != 0 {
            self.moves_done.wait(&mut moves);
        }
    }

    /// Ends what [`AddressSpace::fence_moves`] started.
    fn unfence_moves(&self) {
        self.moves.lock().fenced = false;
    }

    /// Ends the claim of a move from [`AddressSpace::begin_move`], recording where the page
    /// lives now.  `false` if its entry was dropped meanwhile: then the caller still owns
    /// `now`.
    pub(crate) fn end_move(&self, claim: Claim, now: Residency) -> bool {
        self.lpt.end_claim(claim, now)
    }

    /// Ends a move from [`AddressSpace::begin_move`]; the caller does not use `self` again.
    pub(crate) fn move_done(&self) {
        let mut moves = self.moves.lock();
        moves.count -= 1;
        if moves.count == 0 {
            self.moves_done.notify_all();
        }
    }

    /// Claims page `vpn` for a move whose source is the host page the caller pinned before it
    /// claimed, if its entry still is what the caller `seen` (`None`: no entry) and that page
    /// is still the one mapped.  `seq` is from [`Notifier::read_begin`], taken before the
    /// pin; `still_mapped` looks at the CPU page table.
    ///
    /// The entry may have been `seen` as host-resident, then left (another device took the
    /// page) and come back (a CPU fault brought it home into a new page, and the CPU wrote it)
    /// while the caller held the old page: the claim alone would succeed, and the old page's
    /// stale data would be copied over the new one.  Leaving the CPU page table takes an
    /// invalidation, so the page table is only looked at when the sequence moved.
    ///
    /// Refused while the page is being discarded (see [`AddressSpace::dontneed_begin`]): the
    /// caller waits with [`AddressSpace::wait_discarded`] and looks at the page again.
    pub(crate) fn claim_since(
        &self,
        vpn: usize,
        seen: Option<Residency>,
        seq: &Seq<'_>,
        still_mapped: impl FnOnce() -> bool,
    ) -> Result<Option<Claim>> {
        // The sequence is read in the claim's own critical section: a host page the fault saw
        // needs no second trip through the lock.  So is the discard check: a discard that
        // starts later finds the claim and drops it.
        let mut changed = true;
        let mut discarding = false;
        let claim = match seen {
            Some(seen) => self.lpt.claim_if(vpn, seen, |lpt| {
                changed = self.changed(lpt, seq);
                discarding = self.discarding(vpn);
            }),
            None => {
                let claim = self.lpt.claim(vpn, None)?;
                if claim.is_some() {
                    let lpt = self.lpt.lock();
                    changed = self.changed(&lpt, seq);
                    discarding = self.discarding(vpn);
                }
                claim
            }
        };
        let Some(claim) = claim else {
            return Ok(None);
        };
        if discarding || (changed && !still_mapped()) {
            // Nobody else touched the entry while it was ours: put it back as it was.
            self.lpt
                .end_claim(claim, seen.unwrap_or(Residency::Nowhere));
            return Ok(None);
        }
        Ok(Some(claim))
    }

    /// Whether the address space was created by fork (see the field).
    pub(crate) fn inherited(&self) -> bool {
        self.inherited
    }

    /// The notifier of the window of address `va`, for [`Notifier::read_begin`].  `EFAULT`
    /// if the window has none (see [`AddressSpace::cover`]).
    pub(crate) fn window(&self, va: usize) -> Result<&Notifier> {
        self.notifier(va).ok_or(EFAULT)
    }

    /// Whether an invalidation of its window ran since [`Notifier::read_begin`] returned
    /// `seq`.  The caller holds the logical page table lock, under which `invalidate` updates
    /// the sequence.
    pub(crate) fn changed(&self, _lpt: &Guard<'_, PackedMapping>, seq: &Seq<'_>) -> bool {
        // SAFETY: the field is written under the logical page table lock, which the caller
        // holds.
        let now = unsafe {
            core::ptr::read_volatile(&raw const (*seq.notifier.mni.get()).invalidate_seq)
        };
        let changed = now != seq.seq;
        if changed {
            FAULT_RETRIES.fetch_add(1, Ordering::Relaxed);
        }
        changed
    }

    /// Drops the entries in `start..end` (addresses) that `select` picks: device pages go back
    /// to their device (unmapped before their entries go, see
    /// [`LogicalPageTable::erase_range`]), parked pages are freed.
    pub(crate) fn drop_range(
        &self,
        start: usize,
        end: usize,
        select: impl FnMut(Residency) -> bool,
    ) {
        self.lpt.erase_range(
            start / PAGE_SIZE,
            end.div_ceil(PAGE_SIZE),
            select,
            |pages| self.release(pages),
        );
    }

    /// Gives back what [`LogicalPageTable::erase_range`] hands over: device pages to their
    /// devices, with one TLB invalidation per device, and parked pages to the page allocator.
    fn release(&self, pages: &[(usize, Residency)]) {
        let mut batch = self.devices.batch();
        for &(vpn, r) in pages {
            match r {
                Residency::Device(page) => batch.push(vpn * PAGE_SIZE, page),
                // SAFETY: the entry that owned the parked page is gone; we own it now.
                Residency::Parked(raw) => drop(unsafe { ParkedPage::from_raw(raw) }),
                _ => {}
            }
        }
    }

    /// Drops the device and parked pages of `start..end` (addresses), whose data a zap of the
    /// range discards (`MADV_DONTNEED`, `MADV_FREE`, hmadvise): they have no PTE for the zap.
    ///
    /// Pages being moved go too (a claimed entry is nowhere): an eviction or a migration in
    /// flight then finds its entry gone and frees what it holds, as after munmap.  Left alone,
    /// it would record its copy when it ends, and the dropped data would come back.
    ///
    /// A discard calls it through [`AddressSpace::dontneed_begin`] and
    /// [`AddressSpace::dontneed_end`], around its zap.
    pub(crate) fn dontneed(&self, start: usize, end: usize) {
        self.drop_range(start, end, |r| {
            matches!(
                r,
                Residency::Device(_) | Residency::Parked(_) | Residency::Nowhere
            )
        });
    }

    /// Starts discarding `start..end` (addresses): drops its device and parked pages and the
    /// claims of its pages being moved ([`AddressSpace::dontneed`]), and keeps moves from host
    /// memory out of it until [`AddressSpace::dontneed_end`].  The caller zaps the range in
    /// between.
    ///
    /// A move to a device takes a host page's PTE before it copies the page.  One that claimed
    /// the page after the drop and took the PTE before the zap would put the data on the
    /// device after the discard, or, moved home again before it ended, back in the CPU page
    /// table.  Moves that claimed before are dropped here; later ones wait.
    pub(crate) fn dontneed_begin(&self, start: usize, end: usize) {
        let (first, last) = (start / PAGE_SIZE, end.div_ceil(PAGE_SIZE));
        {
            let mut d = self.discards.lock();
            if d.count == 0 {
                (d.first, d.end) = (first, last);
            } else {
                (d.first, d.end) = (d.first.min(first), d.end.max(last));
            }
            d.count += 1;
        }
        self.dontneed(start, end);
    }

    /// Ends the discard of `start..end` that [`AddressSpace::dontneed_begin`] started, after
    /// the zap: drops again what a move recorded meanwhile (none should have), then lets the
    /// moves that wait go.
    pub(crate) fn dontneed_end(&self, start: usize, end: usize) {
        self.dontneed(start, end);
        {
            let _lpt = self.lpt.lock();
            let mut d = self.discards.lock();
            d.count -= 1;
            if d.count == 0 {
                (d.first, d.end) = (0, 0);
            }
        }
        self.lpt.wake();
    }

    /// Whether page `vpn` is in a range being discarded.
    fn discarding(&self, vpn: usize) -> bool {
        let d = self.discards.lock();
        d.count != 0 && (d.first..d.end).contains(&vpn)
    }

    /// Sleeps while page `vpn` is in a range being discarded.
    pub(crate) fn wait_discarded(&self, vpn: usize) {
        self.lpt.wait_while(|_| self.discarding(vpn));
    }

    /// Waits until no eviction holds a claim on a page of this address space.
    pub(crate) fn wait_moves(&self) {
        kernel::task::might_sleep();
        let mut moves = self.moves.lock();
        while moves.count != 0 {
            self.moves_done.wait(&mut moves);
        }
    }

    /// Records that device `dev` maps host pages of this address space in place: from now on
    /// every invalidation removes its mappings of the range.  Called before the mapping is
    /// made, so that an invalidation that comes after the caller's `read_begin` finds it.
    pub(crate) fn mapping_in_place(&self, dev: DeviceId) {
        self.remote.fetch_or(device_bit(dev), Ordering::AcqRel);
    }

    /// Runs `map`, which maps host pages on a device in place, unless an invalidation of the
    /// window of `seq` ran since [`Notifier::read_begin`] returned it (`None`, and nothing is
    /// mapped).  The caller pinned the pages after `read_begin` and recorded the device with
    /// [`AddressSpace::mapping_in_place`] before it.
    ///
    /// Checked first, then mapped, under the lock with which an invalidation removes in-place
    /// mappings once it has published its sequence: a mapping is made either before that
    /// removal, which then takes it, or not at all.  Mapping first and checking afterwards
    /// would leave the device, until it is unmapped again, a page the CPU has replaced (a
    /// move, a copy-on-write) to read stale data from or to lose writes into.  `map` runs
    /// under a lock that invalidations take, so it must not allocate memory that may reclaim.
    pub(crate) fn map_in_place_since<R>(
        &self,
        seq: &Seq<'_>,
        map: impl FnOnce() -> R,
    ) -> Option<R> {
        let _mapping = self.in_place.lock();
        let changed = {
            let lpt = self.lpt.lock();
            self.changed(&lpt, seq)
        };
        (!changed).then(map)
    }

    /// Removes the in-place mappings of host pages of `start..end` (addresses) on every device
    /// that made some ([`AddressSpace::mapping_in_place`]), or on `only`, waiting for mappings
    /// being made (see [`AddressSpace::map_in_place_since`]).  `false` (nothing done) if there
    /// are some and the caller may not sleep.
    pub(crate) fn unmap_in_place(
        &self,
        start: usize,
        end: usize,
        only: Option<DeviceId>,
        blockable: bool,
    ) -> bool {
        let mut remote = self.remote.load(Ordering::Acquire);
        if let Some(dev) = only {
            remote &= device_bit(dev);
        }
        if remote == 0 {
            return true;
        }
        let _mapping = if blockable {
            self.in_place.try_lock().unwrap_or_else(|| {
                #[cfg(CONFIG_GMEM_KUNIT_TEST)]
                tests::in_place_contended();
                self.in_place.lock()
            })
        } else {
            match self.in_place.try_lock() {
                Some(guard) => guard,
                None => return false,
            }
        };
        self.unmap_on(remote, start, end, blockable)
    }

    /// Removes every mapping of `start..end` (addresses) on the devices of `bits` (see
    /// [`device_bit`]): device pages of the range go too; their next use maps them again.
    /// `false` (nothing done) if there are some and the caller may not sleep.
    fn unmap_on(&self, bits: u64, start: usize, end: usize, blockable: bool) -> bool {
        if bits == 0 {
            return true;
        }
        if !blockable {
            return false;
        }
        for id in devices(bits) {
            if let Some(device) = self.devices.get(id) {
                device.unmap_va(start, end - start);
            }
        }
        true
    }

    /// Drops the read-only copies (`MADV_READ_MOSTLY`) of the pages of `start..end`
    /// (addresses) on every device: each copy is claimed, unmapped from its device, and only
    /// then freed with its entry.  The devices of claimed copies (being made, mapped again or
    /// evicted) lose their mappings of the range (device pages of the range go too; their
    /// next use maps them again), and the holders drop those copies.  `false` (nothing done)
    /// if there are some and the caller may not sleep.
    ///
    /// An entry goes only once its copy is unmapped, and while it is there a CPU write waits
    /// (`gm_cpu_write_shared()`): no device reads a copy once the CPU may write the page.  And
    /// the claim keeps a device fault from mapping the copy again meanwhile, which would
    /// leave it mapped, and freed, behind the unmap.
    pub(crate) fn drop_copies(&self, start: usize, end: usize, blockable: bool) -> bool {
        let (first, last) = (start / PAGE_SIZE, end.div_ceil(PAGE_SIZE));
        let mut any = false;
        self.lpt.for_each_copy(first, last, |_, _, _| any = true);
        if !any {
            return true;
        }
        if !blockable {
            return false;
        }
        // The devices of claimed copies, even those claimed since the look above, may map
        // them already: their holders drop them (an invalidation ran since they began) or a
        // collapse waits for them.
        let holders = self.erase_copies(first, last);
        self.unmap_on(holders, start, end, true);
        true
    }

    /// Removes the copies of pages `first..last` that are not claimed from their devices
    /// and frees them (see [`LogicalPageTable::erase_copies`]).  Returns the devices that
    /// hold claimed ones, as [`device_bit`]s.
    fn erase_copies(&self, first: usize, last: usize) -> u64 {
        self.lpt.erase_copies(
            first,
            last,
            None,
            |pages| {
                for &(va, page) in pages {
                    trace::copy(page.dev, va, 1, false);
                }
                self.devices.unmap_pages(pages)
            },
            |pages| self.devices.free_pages(pages),
        )
    }

    /// Drops the copies of page `vpn` before the CPU writes it (`gm_cpu_write_collapse()`),
    /// waiting for those being made or evicted.  A copy made meanwhile is dropped by the next
    /// write fault.
    pub(crate) fn collapse(&self, vpn: usize) {
        let va = vpn * PAGE_SIZE;
        self.drop_copies(va, va + PAGE_SIZE, true);
        if self.lpt.has_copies(vpn) {
            self.lpt.wait_copies_unclaimed(vpn);
            self.drop_copies(va, va + PAGE_SIZE, true);
        }
    }

    /// What gives pins back to their device when the attributes lose them: for the `release`
    /// of [`Policy`]'s changes.  Runs under the policy's lock and takes the device list's.
    pub(crate) fn unpin(&self) -> impl FnMut(DeviceId, usize) + '_ {
        |dev, pages| {
            // Never the last reference dropped here: `get_if` clones nothing when refused.
            self.devices.get_if(dev, |d| {
                d.unpin(pages);
                false
            });
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
        // The notifiers go first (each is removed from the mm when dropped).  This is not
        // called from a notifier callback: address spaces are dropped by `gm_as_exit` or
        // before they were published.
        loop {
            let notifier = {
                let mut guard = self.notifiers.lock();
                let Some((window, _)) = guard.find(0, usize::MAX) else {
                    break;
                };
                guard.remove(window)
            };
            drop(notifier);
        }
        // Exit already dropped everything through MMU_NOTIFY_RELEASE; this catches an address
        // space that never saw its mm's exit (a fork that failed half-way).
        self.drop_range(0, usize::MAX, |_| true);
        let _ = self.erase_copies(0, usize::MAX / PAGE_SIZE + 1);
        // An eviction that claimed one of our pages finishes (finding its entry gone) before
        // the address space may go.
        self.wait_moves();
        // A copy an eviction held was left to it, and given back if it gave it a second
        // chance: it goes now.
        let _ = self.erase_copies(0, usize::MAX / PAGE_SIZE + 1);
        // Pins go back to their devices (exit did it already, through the notifiers).
        let mut unpin = self.unpin();
        self.policy.unmap(0, usize::MAX / PAGE_SIZE + 1, &mut unpin);
        drop(unpin);
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
    // SAFETY: `mni` is the `mni` field of a live, pinned `Notifier` (notifiers are removed
    // from the mm before they are freed).
    let notifier = unsafe {
        &*kernel::container_of!(
            mni.cast::<Opaque<bindings::mmu_interval_notifier>>(),
            Notifier,
            mni
        )
    };
    // SAFETY: by the type invariant of `Notifier` its address space outlives it.
    let this = unsafe { &*notifier.space };
    // SAFETY: core MM passes a valid range for the duration of the call.
    let range = unsafe { &*range };
    let blockable = range.flags & bindings::MMU_NOTIFIER_RANGE_BLOCKABLE != 0;
    trace::invalidate(range.start, range.end, range.event);
    // Only this notifier's window: the notifiers of the other windows the range covers are
    // called for theirs.
    let start = range.start.max(notifier.start);
    let end = range.end.min(notifier.start.saturating_add(NOTIFIER_SIZE));
    {
        let _lpt = this.lpt.lock();
        // SAFETY: `mni` is valid; this is `mmu_interval_set_seq()`, done under the lock that
        // device faults take to check the sequence, so they see the change: a device mapping
        // recorded from here on is removed again by the fault that made it.
        unsafe { core::ptr::write_volatile(&raw mut (*mni).invalidate_seq, cur_seq) };
    }
    // Whatever changed, a device that maps host pages in place stops: it faults and maps them
    // again (`crate::fault`).
    if !this.unmap_in_place(start, end, None, blockable) {
        return false;
    }
    // So do read-only copies: whatever changes the CPU page table may make the host page
    // writable again (mprotect, a swap-in) or replace it.
    if !this.drop_copies(start, end, blockable) {
        return false;
    }
    match range.event {
        bindings::mmu_notifier_event_MMU_NOTIFY_UNMAP
        | bindings::mmu_notifier_event_MMU_NOTIFY_RELEASE => {
            // The attributes of the range go with it; pins are given back.
            this.policy
                .unmap(start / PAGE_SIZE, end.div_ceil(PAGE_SIZE), this.unpin());
            if blockable {
                this.drop_range(start, end, |_| true);
                return true;
            }
            // Device work may sleep.  The OOM reaper cannot wait: everything but device pages
            // goes now, in the same look at each entry that finds the device pages; if there
            // are some, the reaper skips this mm and the exit that follows frees them.
            let mut device_pages = false;
            this.drop_range(start, end, |r| {
                let device = matches!(r, Residency::Device(_));
                device_pages |= device;
                !device
            });
            !device_pages
        }
        // A cleared PTE does not mean that the data goes: copy-on-write, migration, KSM and
        // reclaim clear PTEs of pages that live on, and a copy-on-write fault notifies before
        // it checks the PTE, so the page may have moved to a device meanwhile (the fault then
        // retries and brings it home).  Nor do they concern a device, which maps only device
        // pages (but in place, unmapped above).  The zaps that discard data drop device and
        // parked pages themselves
        // (`gm_as_dontneed_begin()`, hmadvise).
        bindings::mmu_notifier_event_MMU_NOTIFY_PROTECTION_VMA
        | bindings::mmu_notifier_event_MMU_NOTIFY_PROTECTION_PAGE => {
            if !blockable {
                // Nothing is changed: a device page mapped after the sequence above is
                // unmapped again by its fault.
                return !this.has_device_pages(start, end);
            }
            this.lpt.for_each_device_page(
                start / PAGE_SIZE,
                end.div_ceil(PAGE_SIZE),
                |vpn, page| {
                    if let Some(device) = this.devices.get(page.dev) {
                        device.unmap(vpn * PAGE_SIZE, page);
                    }
                },
            );
            true
        }
        // Soft-dirty tracking, migration and exclusive access concern host pages only (in
        // place mappings were removed above).
        _ => true,
    }
}

/// Faults the page at `addr` into the CPU page table of `mm` as a read access would, which
/// brings a device-resident page home.  Nothing happens outside a VMA.
///
/// # Safety
///
/// The caller holds `mm`'s mmap lock and `mm` has a user.
pub(crate) unsafe fn cpu_fault_in(mm: *mut bindings::mm_struct, addr: usize) -> Result {
    // SAFETY: `mm` is live, by the safety requirements.
    unsafe { bindings::mmap_assert_locked(mm) };
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

/// Brings page `vpn` of `this`, the address space of `mm`, into the CPU page table: waits for
/// a claim on it to end, then faults it in if it is on a device or parked.  `EIO` if the page
/// cannot come home.
///
/// # Safety
///
/// The caller holds `mm`'s mmap lock and `mm` has a user.
pub(crate) unsafe fn fault_home(
    this: &AddressSpace,
    mm: *mut bindings::mm_struct,
    vpn: usize,
) -> Result {
    // SAFETY: `mm` is live, by the safety requirements.
    unsafe { bindings::mmap_assert_locked(mm) };
    loop {
        this.lpt.wait_unclaimed(vpn);
        match this.lpt.residency(vpn) {
            Some(Residency::Device(_) | Residency::Parked(_)) => {}
            // Home, dropped, or claimed again: the claim's holder brings it home or away.
            Some(Residency::Nowhere) if this.lpt.lock().get(vpn).is_some_and(|m| m.busy()) => {
                continue
            }
            _ => return Ok(()),
        }
        // SAFETY: as required of our caller.
        unsafe { cpu_fault_in(mm, vpn * PAGE_SIZE) }?;
        if matches!(
            this.lpt.residency(vpn),
            Some(Residency::Device(_) | Residency::Parked(_))
        ) {
            // The fault did not install the page (no VMA, or it gave up).
            return Err(EIO);
        }
    }
}

/// Gives `mm` an address space if it has none yet (see `gm_as_prepare()`).
///
/// # Safety
///
/// `mm` is current's mm, alive for the whole call; the caller holds none of its locks.
pub(crate) unsafe fn prepare(mm: *mut bindings::mm_struct) -> Result {
    // SAFETY: by the safety requirements.
    if unsafe { AddressSpace::of(mm) }.is_some() {
        return Ok(());
    }
    let this = AddressSpace::new(mm, false)?;
    // SAFETY: `mm` is live; the caller holds no mmap lock.
    unsafe { AddressSpace::register(mm, false) }?;
    // SAFETY: as above.
    unsafe { AddressSpace::install(mm, this) };
    // SAFETY: plain C call; the hooks of core MM start working from here on.
    unsafe { bindings::gm_enable() };
    Ok(())
}

/// Gives the child `mm` of a fork of `oldmm` an address space like its parent's, once every
/// page of the parent is in host memory (see `gm_as_fork()`).
///
/// # Safety
///
/// Both mms are live and write-locked by the caller: `oldmm` the forking process's, `mm` the
/// new child's, with no VMA yet.
pub(crate) unsafe fn fork(oldmm: *mut bindings::mm_struct, mm: *mut bindings::mm_struct) -> Result {
    // SAFETY: both mms are live (the caller's and the one it is making).
    unsafe {
        bindings::mmap_assert_write_locked(oldmm);
        bindings::mmap_assert_write_locked(mm);
    }
    // SAFETY: `oldmm` is the forking process's mm, locked by the caller.
    let Some(parent) = (unsafe { AddressSpace::of(oldmm) }) else {
        return Ok(());
    };
    // A device-resident or parked page has no PTE for fork to copy: fault it home first,
    // like a CPU access would.  Faults under the write lock without FAULT_FLAG_ALLOW_RETRY
    // never drop it.  A claimed entry may be an eviction under way, or a CPU fault under a
    // VMA lock (fork write-locks the VMAs only later): its page is looked at again once the
    // claim ended.  No device fault runs (they take the mmap lock), and evictions take device
    // pages only, so none is left once the walk is done.
    let mut result = Ok(());
    parent
        .lpt
        .for_each_away_page(0, usize::MAX / PAGE_SIZE + 1, |vpn| {
            if result.is_err() {
                return;
            }
            // SAFETY: the caller holds `oldmm`'s mmap lock for writing.
            result = unsafe { fault_home(parent, oldmm, vpn) };
        });
    result?;
    let child = AddressSpace::new(mm, true)?;
    // The child has the parent's attributes, but not its pins.
    parent.policy.fork(&child.policy)?;
    // SAFETY: `mm` is the new, write-locked child mm, with no VMA yet.
    unsafe { AddressSpace::register(mm, true) }?;
    // The child follows the windows the parent follows.
    let mut window = 0;
    loop {
        let next = {
            let guard = parent.notifiers.lock();
            guard
                .find(window, usize::MAX >> NOTIFIER_SHIFT)
                .map(|(w, _)| w)
        };
        let Some(found) = next else {
            break;
        };
        // SAFETY: the caller holds the child's mmap lock for writing.
        unsafe { child.cover_window(found, true) }?;
        window = found + 1;
    }
    // SAFETY: `mm` is live and locked; nothing else can publish an address space for it.
    unsafe { AddressSpace::install(mm, child) };
    Ok(())
}

/// Frees the address space of `mm`, if it has one (see `gm_as_exit()`).
///
/// # Safety
///
/// Called from `__mmput()`: `mm` has no users left and stays valid until it returns.
pub(crate) unsafe fn exit(mm: *mut bindings::mm_struct) {
    // SAFETY: `mm` stays valid until `__mmput()` returns.
    let raw = unsafe { slot(mm) }.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if let Some(raw) = NonNull::new(raw.cast::<AddressSpace>()) {
        // SAFETY: `raw` came from `KBox::into_raw` in `install`, and nothing can reach it any
        // more: the slot is cleared and `mm` has no users.
        drop(unsafe { Pin::new_unchecked(KBox::from_raw(raw.as_ptr())) });
    }
}

impl AddressSpace {
    /// Moves the logical mappings of `[old, old + len)` to `new`, or back with `undo` (see
    /// `gm_as_mremap()`).
    ///
    /// # Safety
    ///
    /// The caller holds the mmap lock of this address space's mm for writing.
    pub(crate) unsafe fn mremap(&self, old: usize, new: usize, len: usize, undo: bool) -> Result {
        // The entries' new windows are followed before the entries move there.
        // SAFETY: the caller holds the mmap lock for writing.
        unsafe { self.cover(new, new.saturating_add(len), true) }?;
        // Attributes first: they are the only part that may fail (to allocate), except on
        // the way back, which may not.
        let (pages, from, to) = (len / PAGE_SIZE, old / PAGE_SIZE, new / PAGE_SIZE);
        let flags = if undo {
            GFP_KERNEL | __GFP_NOFAIL
        } else {
            GFP_KERNEL_ACCOUNT
        };
        self.policy
            .move_range(from, to, pages, flags, self.unpin())?;
        // Read-only copies are not moved: they go, and the devices copy the pages again.
        self.drop_copies(old, old.saturating_add(len), true);
        self.fence_moves();
        let moved = self.lpt.move_range(
            old / PAGE_SIZE,
            new / PAGE_SIZE,
            len / PAGE_SIZE,
            undo,
            |vpn, page| {
                if let Some(device) = self.devices.get(page.dev) {
                    device.unmap(vpn * PAGE_SIZE, page);
                    // Eviction finds the page at its new address.
                    device.moved(
                        page,
                        core::ptr::from_ref(self) as usize,
                        vpn - old / PAGE_SIZE + new / PAGE_SIZE,
                    );
                }
            },
        );
        self.unfence_moves();
        if moved.is_err() {
            // Nothing moved: neither do the attributes.
            let _ =
                self.policy
                    .move_range(to, from, pages, GFP_KERNEL | __GFP_NOFAIL, self.unpin());
        }
        moved
    }
}

/// A counter shown as a debugfs file.
struct Counter(&'static AtomicUsize);

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.load(Ordering::Relaxed))
    }
}

/// Creates `/sys/kernel/debug/gmem/`: `tracked_pages` (entries in every logical page table),
/// `address_spaces` and `fault_retries` (device faults that met an invalidation of their window
/// and did the work again).  They live as long as the kernel.
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
    let retries = KBox::pin_init(
        dir.read_only_file(c_str!("fault_retries"), Counter(&FAULT_RETRIES)),
        GFP_KERNEL,
    )?;
    core::mem::forget(retries);
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
    use core::sync::atomic::AtomicBool;
    use kernel::sync::{Arc, Completion};

    /// An address space that is not registered with any mm, with a fake device attached and
    /// pages 10..14: host, device (pfn 11), device (pfn 12), host.
    fn setup() -> Result<(Pin<KBox<AddressSpace>>, Arc<FakeDevice>)> {
        let this = AddressSpace::new(core::ptr::null_mut(), false)?;
        // Without an mm, the notifier of the first window is made but not registered.
        // SAFETY: there is no mm, and no lock to hold.
        unsafe { this.cover(0, PAGE_SIZE, false) }?;
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
        let notifier = this
            .window(range.start)
            .expect("the tests' pages are in window 0");
        // SAFETY: `notifier` is the field of a live address space; the callback only writes its
        // sequence number.
        unsafe { invalidate(notifier.mni.get(), &range, 7) }
    }

    #[test]
    fn every_invalidation_drops_read_only_copies() -> Result {
        let (this, fake) = setup()?;
        // Page 10 has a copy on the device (pfn 30); one of page 13 is being made.
        let (copy, _) = this.lpt.claim_new_copy(10, 4)?.expect("no copy yet");
        assert!(this
            .lpt
            .end_claim(copy, Residency::Device(DevicePage { dev: 4, pfn: 30 })));
        let (making, _) = this.lpt.claim_new_copy(13, 4)?.expect("no copy yet");
        assert_eq!(this.lpt.copies(), 2);
        // The OOM reaper cannot wait for the device: refused, nothing changed.
        assert!(!notify(
            &this,
            bindings::mmu_notifier_event_MMU_NOTIFY_CLEAR,
            10,
            11,
            false
        ));
        assert_eq!(this.lpt.copies(), 2);
        let _ = fake.take_ops();
        // Even an event that changes nothing a device maps drops them: unmapped first, then
        // freed.  The copy being made is unmapped and left to its maker.
        assert!(notify(
            &this,
            bindings::mmu_notifier_event_MMU_NOTIFY_SOFT_DIRTY,
            10,
            14,
            true
        ));
        let ops = fake.take_ops();
        let at = |op: Op| ops.iter().position(|&o| o == op);
        let unmapped = at(Op::Unmap(10 * PAGE_SIZE, 30)).expect("copy unmapped");
        assert!(unmapped < at(Op::Free(30)).expect("copy freed"));
        assert!(at(Op::Unmap(13 * PAGE_SIZE, 13)).is_some());
        assert!(!this.lpt.has_copies(10) && this.lpt.has_copies(13));
        // Its maker finds the sequence moved and drops it with its claim.
        assert!(this.lpt.erase_claimed(making));
        assert_eq!(this.lpt.copies(), 0);
        // The pages stay where they are.
        assert_eq!(this.lpt.residency(10), Some(Residency::Host));
        assert_eq!(this.lpt.len(), 4);
        Ok(())
    }

    /// How often [`map_copy_again`] got the copy it tried to map again.
    static MAPPED_AGAIN: AtomicUsize = AtomicUsize::new(0);

    /// A device fault that maps the copy of page 10 on device 4 again, as `read_copy()` does,
    /// if it can claim it: a probe of the fake device (`arg` is the address space).
    fn map_copy_again(arg: usize) {
        // SAFETY: the test that sets the probe clears it before its address space goes.
        let this = unsafe { &*(arg as *const AddressSpace) };
        if let Some((copy, page)) = this.lpt.claim_copy(10, 4, None) {
            MAPPED_AGAIN.fetch_add(1, Ordering::Relaxed);
            assert!(this.lpt.end_claim(copy, Residency::Device(page)));
        }
    }

    /// The sequence of window 0 now, as `Notifier::read_begin` would return it (the tests'
    /// notifier is not registered with an mm).
    fn seq_now(this: &AddressSpace) -> Seq<'_> {
        let notifier = this.window(0).expect("window 0 is covered");
        let mni = notifier.mni.get();
        // SAFETY: `mni` is valid; nothing writes the sequence concurrently in the tests.
        let seq = unsafe { core::ptr::read_volatile(&raw const (*mni).invalidate_seq) };
        Seq { notifier, seq }
    }

    #[test]
    fn no_in_place_mapping_once_an_invalidation_ran() -> Result {
        let (this, fake) = setup()?;
        this.mapping_in_place(4);
        // An invalidation of page 10 runs after the fault pinned the page: the device may not
        // map it, not even for a moment (it would read the old page, or write into it).
        let seq = seq_now(&this);
        assert!(notify(
            &this,
            bindings::mmu_notifier_event_MMU_NOTIFY_CLEAR,
            10,
            11,
            true
        ));
        assert_eq!(fake.take_ops(), [Op::Unmap(10 * PAGE_SIZE, 10)]);
        let mut mapped = false;
        assert_eq!(this.map_in_place_since(&seq, || mapped = true), None);
        assert!(!mapped);
        // The fault starts over, and maps it.
        let seq = seq_now(&this);
        assert_eq!(this.map_in_place_since(&seq, || 1), Some(1));
        Ok(())
    }

    /// Set by [`an_invalidation_waits_for_an_in_place_mapping`]'s invalidation once it returned.
    static INVALIDATED: AtomicBool = AtomicBool::new(false);

    /// The completion (a `*const Completion`, or 0) that [`in_place_contended`] completes.
    static CONTENDED: AtomicUsize = AtomicUsize::new(0);

    /// Called by an invalidation that finds an in-place mapping being made, before it sleeps
    /// until the mapping is made.
    pub(super) fn in_place_contended() {
        let waited = CONTENDED.load(Ordering::Acquire);
        if waited != 0 {
            // SAFETY: the test that stored the pointer keeps the completion until it clears it,
            // which it does once the invalidation returned.
            unsafe { &*(waited as *const Completion) }.complete_all();
        }
    }

    #[test]
    fn an_invalidation_waits_for_an_in_place_mapping() -> Result {
        let (this, fake) = setup()?;
        this.mapping_in_place(4);
        INVALIDATED.store(false, Ordering::Relaxed);
        let began = Arc::pin_init(Completion::new(), GFP_KERNEL)?;
        let ended = Arc::pin_init(Completion::new(), GFP_KERNEL)?;
        // Completed when the invalidation either waits for the mapping or returned.
        let waited = Arc::pin_init(Completion::new(), GFP_KERNEL)?;
        CONTENDED.store(
            core::ptr::from_ref::<Completion>(&waited) as usize,
            Ordering::Release,
        );
        let space = core::ptr::from_ref::<AddressSpace>(&*this) as usize;
        // Started first: nothing is allocated under the in-place lock, as nothing may be.
        let (work_began, work_ended, work_waited) = (began.clone(), ended.clone(), waited.clone());
        kernel::workqueue::system().try_spawn(GFP_KERNEL, move || {
            work_began.wait_for_completion();
            // SAFETY: the test waits for this work before the address space goes.
            let this = unsafe { &*(space as *const AddressSpace) };
            notify(
                this,
                bindings::mmu_notifier_event_MMU_NOTIFY_CLEAR,
                10,
                11,
                true,
            );
            INVALIDATED.store(true, Ordering::Release);
            work_waited.complete_all();
            work_ended.complete_all();
        })?;
        let seq = seq_now(&this);
        let seen = this.map_in_place_since(&seq, || {
            // An invalidation of the page starts while the device maps it, and goes as far as
            // it can...
            began.complete_all();
            waited.wait_for_completion();
            // ...which is to wait for this mapping: it has not returned.
            INVALIDATED.load(Ordering::Acquire)
        });
        ended.wait_for_completion();
        CONTENDED.store(0, Ordering::Release);
        assert_eq!(seen, Some(false));
        // The mapping made is removed by the invalidation.
        assert_eq!(fake.take_ops(), [Op::Unmap(10 * PAGE_SIZE, 10)]);
        Ok(())
    }

    /// What [`entry_at_unmap`] saw of page 11's entry: 0 nothing yet, 1 no entry, 2 claimed,
    /// 3 anything else.
    static AT_UNMAP: AtomicUsize = AtomicUsize::new(0);

    /// Records what page 11's entry is while the device unmaps a page (the first time).
    fn entry_at_unmap(arg: usize) {
        // SAFETY: as in `map_copy_again`.
        let this = unsafe { &*(arg as *const AddressSpace) };
        let seen = match this.lpt.peek(11) {
            None => 1,
            Some((Residency::Nowhere, true)) => 2,
            Some(_) => 3,
        };
        let _ = AT_UNMAP.compare_exchange(0, seen, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// `MADV_DONTNEED` while a device works on the range: a dropped device page is unmapped
    /// from its device before its entry goes.  Gone first, it let a device fault find no
    /// entry and map a new page over the old page's mapping, which the device's TLB may still
    /// hold, while the drop's unmap waited in a batch.
    #[test]
    fn a_dropped_device_page_is_unmapped_before_its_entry_goes() -> Result {
        let (this, fake) = setup()?;
        AT_UNMAP.store(0, Ordering::Relaxed);
        fake.set_probe(Some((
            entry_at_unmap,
            core::ptr::from_ref::<AddressSpace>(&this) as usize,
        )));
        this.dontneed(10 * PAGE_SIZE, 14 * PAGE_SIZE);
        fake.set_probe(None);
        assert_eq!(AT_UNMAP.load(Ordering::Relaxed), 2);
        assert_eq!(
            fake.take_ops(),
            [
                Op::Unmap(11 * PAGE_SIZE, 11),
                Op::Unmap(12 * PAGE_SIZE, 12),
                Op::Free(11),
                Op::Free(12)
            ]
        );
        // Then the entries went; the host pages' stay.
        assert_eq!(this.lpt.peek(11), None);
        assert_eq!(this.lpt.peek(12), None);
        assert_eq!(this.lpt.residency(10), Some(Residency::Host));
        Ok(())
    }

    #[test]
    fn a_copy_being_dropped_is_not_mapped_again() -> Result {
        let (this, fake) = setup()?;
        let (copy, _) = this.lpt.claim_new_copy(10, 4)?.expect("no copy yet");
        assert!(this
            .lpt
            .end_claim(copy, Residency::Device(DevicePage { dev: 4, pfn: 30 })));
        // A CPU write collapses the copy while the device faults on it: the fault may not map
        // it again between its unmap and its end.
        MAPPED_AGAIN.store(0, Ordering::Relaxed);
        fake.set_probe(Some((
            map_copy_again,
            core::ptr::from_ref::<AddressSpace>(&this) as usize,
        )));
        this.collapse(10);
        fake.set_probe(None);
        assert_eq!(MAPPED_AGAIN.load(Ordering::Relaxed), 0);
        assert!(!this.lpt.has_copies(10));
        assert_eq!(
            fake.take_ops(),
            [Op::Unmap(10 * PAGE_SIZE, 30), Op::Free(30)]
        );
        // The page stays home.
        assert_eq!(this.lpt.residency(10), Some(Residency::Host));
        Ok(())
    }

    /// The entry index and token of the claim [`claim_last_copy`] took (0: none).
    static LATE_CLAIM: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

    /// Claims the copy of page 36 on device 4, as an eviction would, unless taken already.
    fn claim_last_copy(arg: usize) {
        // SAFETY: as in `map_copy_again`.
        let this = unsafe { &*(arg as *const AddressSpace) };
        if LATE_CLAIM[0].load(Ordering::Relaxed) == 0 {
            if let Some((claim, _)) = this.lpt.claim_copy(36, 4, None) {
                LATE_CLAIM[0].store(claim.vpn(), Ordering::Relaxed);
                LATE_CLAIM[1].store(claim.into_token() as usize, Ordering::Relaxed);
            }
        }
    }

    #[test]
    fn a_copy_claimed_while_others_drop_is_unmapped() -> Result {
        let (this, fake) = setup()?;
        // Copies of pages 20..=36, more than one batch of the walk.
        for vpn in 20..=36 {
            let (copy, _) = this.lpt.claim_new_copy(vpn, 4)?.expect("no copy yet");
            let page = DevicePage {
                dev: 4,
                pfn: vpn as u64 + 100,
            };
            assert!(this.lpt.end_claim(copy, Residency::Device(page)));
        }
        let _ = fake.take_ops();
        // An eviction claims the last one while the first batch is being unmapped.
        LATE_CLAIM[0].store(0, Ordering::Relaxed);
        fake.set_probe(Some((
            claim_last_copy,
            core::ptr::from_ref::<AddressSpace>(&this) as usize,
        )));
        assert!(notify(
            &this,
            bindings::mmu_notifier_event_MMU_NOTIFY_SOFT_DIRTY,
            20,
            37,
            true
        ));
        fake.set_probe(None);
        let index = LATE_CLAIM[0].load(Ordering::Relaxed);
        assert_ne!(index, 0);
        // The others are gone; it is left to its holder, but unmapped before the
        // notifier returned.
        assert_eq!(this.lpt.copies(), 1);
        let ops = fake.take_ops();
        assert!(ops.contains(&Op::Unmap(20 * PAGE_SIZE, 120)));
        assert!(ops.contains(&Op::Unmap(36 * PAGE_SIZE, 36)));
        assert!(!ops.contains(&Op::Free(136)));
        let token = LATE_CLAIM[1].load(Ordering::Relaxed) as u32;
        assert!(this.lpt.erase_claimed(Claim::from_token(index, token)));
        assert_eq!(this.lpt.copies(), 0);
        Ok(())
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
        let seq = || Seq {
            notifier: this.window(0).expect("covered"),
            seq: 7,
        };
        let claim = this.claim_since(10, host, &seq(), || false)?;
        assert!(claim.is_some_and(|c| this.lpt.end_claim(c, Residency::Host)));
        // An invalidation ran since the pin (anywhere in the process)...
        // SAFETY: the notifier is a field of `this`, which no notifier callback uses now.
        unsafe { (*this.window(0)?.mni.get()).invalidate_seq = 9 };
        // ... it counts only if the pinned page is no longer the one mapped.
        let claim = this.claim_since(10, host, &seq(), || true)?;
        assert!(claim.is_some_and(|c| this.lpt.end_claim(c, Residency::Host)));
        assert!(this.claim_since(10, host, &seq(), || false)?.is_none());
        // Refused, the entry is as it was, not busy.
        assert_eq!(this.lpt.residency(10), Some(Residency::Host));
        let claim = this.begin_move(10, Residency::Host);
        assert!(claim.is_some_and(|c| this.end_move(c, Residency::Host)));
        this.move_done();
        Ok(())
    }

    /// The interleaving stress.mixed found: a move to a device claims a host page after
    /// MADV_DONTNEED dropped the device pages and takes the page's PTE before the zap, which
    /// then finds nothing.  While the discard runs, such a claim is refused (and the entry left
    /// as it was); elsewhere, and once the discard ended, it succeeds.
    #[test]
    fn no_move_from_the_host_during_a_discard() -> Result {
        let (this, _fake) = setup()?;
        let host = Some(Residency::Host);
        // The page table says the pinned page is still mapped: only the discard refuses.
        let seq = || Seq {
            notifier: this.window(0).expect("covered"),
            seq: 0,
        };
        this.dontneed_begin(9 * PAGE_SIZE, 11 * PAGE_SIZE);
        assert!(this.claim_since(10, host, &seq(), || true)?.is_none());
        assert_eq!(this.lpt.residency(10), Some(Residency::Host));
        // A page that had no entry is refused too.
        assert!(this.claim_since(9, None, &seq(), || true)?.is_none());
        assert!(this.discarding(9) && this.discarding(10) && !this.discarding(11));
        // A second discard widens the span; the first one's end does not end it.
        this.dontneed_begin(20 * PAGE_SIZE, 21 * PAGE_SIZE);
        this.dontneed_end(9 * PAGE_SIZE, 11 * PAGE_SIZE);
        assert!(this.discarding(15));
        this.dontneed_end(20 * PAGE_SIZE, 21 * PAGE_SIZE);
        assert!(!this.discarding(10) && !this.discarding(20));
        // Returns at once: no discard covers the page.
        this.wait_discarded(10);
        let claim = this.claim_since(10, host, &seq(), || true)?;
        assert!(claim.is_some_and(|c| this.lpt.end_claim(c, Residency::Host)));
        Ok(())
    }

    #[test]
    fn no_eviction_claims_during_mremap() -> Result {
        let (this, _fake) = setup()?;
        let page = DevicePage { dev: 4, pfn: 11 };
        this.fence_moves();
        assert!(this.begin_move(11, Residency::Device(page)).is_none());
        // Refused, the entry is as it was.
        assert_eq!(this.lpt.residency(11), Some(Residency::Device(page)));
        this.unfence_moves();
        let claim = this.begin_move(11, Residency::Device(page));
        assert!(claim.is_some_and(|c| this.end_move(c, Residency::Device(page))));
        this.move_done();
        Ok(())
    }

    #[test]
    fn dontneed_drops_a_page_being_moved() -> Result {
        let (this, fake) = setup()?;
        let page = DevicePage { dev: 4, pfn: 12 };
        // An eviction claims page 12; MADV_DONTNEED comes while it copies.
        let claim = this.begin_move(12, Residency::Device(page)).ok_or(EBUSY)?;
        this.dontneed(12 * PAGE_SIZE, 13 * PAGE_SIZE);
        assert_eq!(this.lpt.residency(12), None);
        // Its end finds the entry gone: the data it copied is nobody's.
        assert!(!this.end_move(claim, Residency::Device(page)));
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

    /// The interleaving of the ownership issue: a device fault holds page 12's claim;
    /// MADV_DONTNEED drops the entry; a CPU fault makes a fresh one and maps a new page.  The
    /// device fault's end must not write its device page over the CPU's.
    #[test]
    fn a_claim_does_not_outlive_its_entry() -> Result {
        let (this, _fake) = setup()?;
        let old = DevicePage { dev: 4, pfn: 12 };
        let device_fault = this
            .lpt
            .claim(12, Some(Residency::Device(old)))?
            .ok_or(EBUSY)?;
        this.dontneed(12 * PAGE_SIZE, 13 * PAGE_SIZE);
        let (cpu_fault, was) = this.lpt.claim_any(12)?.ok_or(EBUSY)?;
        assert_eq!(was, Residency::Nowhere);
        assert!(!this.lpt.end_claim(device_fault, Residency::Device(old)));
        // The CPU fault still holds its claim and ends it.
        assert!(this.lpt.end_claim(cpu_fault, Residency::Host));
        assert_eq!(this.lpt.residency(12), Some(Residency::Host));
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

    /// The non-blockable unmap (the OOM reaper) drops what needs no device work in the same
    /// look that finds the device pages, and refuses if it found some.
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
        assert_eq!(fake.take_ops().len(), 0);
        assert_eq!(this.lpt.len(), 2);
        assert_eq!(this.lpt.residency(10), None);
        assert_eq!(
            this.lpt.residency(11),
            Some(Residency::Device(DevicePage { dev: 4, pfn: 11 }))
        );
        // Nor does a protection change unmap anything without blocking.
        assert!(!notify(
            &this,
            bindings::mmu_notifier_event_MMU_NOTIFY_PROTECTION_VMA,
            10,
            14,
            false
        ));
        assert_eq!(fake.take_ops().len(), 0);
        // A range without device pages is fine.
        assert!(notify(
            &this,
            bindings::mmu_notifier_event_MMU_NOTIFY_UNMAP,
            13,
            14,
            false
        ));
        assert_eq!(this.lpt.len(), 2);
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
