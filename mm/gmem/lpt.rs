// SPDX-License-Identifier: GPL-2.0

//! The logical page table: where each touched page of a peer-shared range lives.
//!
//! Every address space has one [`LogicalPageTable`], an XArray indexed by virtual page number.
//! A present index holds one [`GmMapping`], packed into the XArray's slot itself (see
//! [`PackedMapping`]): no memory is allocated per page but the XArray's nodes, charged to the
//! process's memory cgroup.  An absent index means that GMEM never saw the page, which is the
//! same as [`Residency::Host`]: the CPU page table is the only truth for a page no device ever
//! held.
//!
//! Every field of every [`GmMapping`] is protected by the XArray's lock: code reads an entry
//! into a [`GmMapping`] and stores it back under the same lock hold.  Work that may sleep
//! (device copies, TLB invalidation, freeing device memory) is never done under it: the page
//! that such work is about is *claimed* first, and the lock is dropped.
//!
//! # Claims
//!
//! A claim ([`Claim`]) is the right to move one page.  Taking it marks the entry busy, sets it
//! to [`Residency::Nowhere`] and stamps it with a generation that no other claim of this table
//! has; the holder gets the page number and that generation back.  Only the holder ends the
//! claim ([`LogicalPageTable::end_claim`]), and only while the entry still carries its
//! generation: if the entry was dropped meanwhile (munmap, `MADV_DONTNEED`, exit), or dropped
//! and made again by a later fault, ending the claim records nothing and the holder keeps what
//! it moved, to free.  Nobody else writes a claimed entry; dropping it is the only other thing
//! that may happen to it.
//!
//! Whoever finds an entry claimed and needs it sleeps until the claim ends
//! ([`LogicalPageTable::wait_unclaimed`]): every end of a claim, and every drop of a claimed
//! entry, wakes the waiters of the table.  A claim holder never waits for another claim.

use core::{
    mem::ManuallyDrop,
    ptr::NonNull,
    sync::atomic::{AtomicUsize, Ordering},
};
use kernel::{
    alloc::{
        flags::{__GFP_NOFAIL, GFP_KERNEL_ACCOUNT, GFP_NOWAIT},
        Flags,
    },
    bindings,
    error::to_result,
    ffi::{c_int, c_void},
    new_condvar, new_spinlock,
    page::{BorrowedPage, Page, PAGE_SIZE},
    prelude::*,
    sync::{
        atomic::{Atomic, Relaxed},
        CondVar, SpinLock,
    },
    types::ForeignOwnable,
    xarray::{AllocKind, Guard, XArray},
};

/// A device node id (`hnid`): which device holds a page.
pub(crate) type DeviceId = u16;

/// A page of device memory: the device and the physical page number in its memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DevicePage {
    pub(crate) dev: DeviceId,
    pub(crate) pfn: u64,
}

/// Where read-only copies begin: the entry of the copy of page `vpn` on the device of slot `s`
/// is at `COPY_BASE + vpn * COPY_SLOTS + s`, past every page of a 57-bit address space.
const COPY_BASE: usize = 1 << 55;
/// Devices that may hold a copy of a page: the 64 device node ids after the host nodes'.
const COPY_SLOTS: usize = 64;
const _: () = assert!(usize::BITS == 64, "copy indices need a 64-bit index");

/// The slot of device `dev`: its node id less the host nodes' (`nr_node_ids`), if below 64.
pub(crate) fn device_slot(dev: DeviceId) -> Option<usize> {
    // SAFETY: `nr_node_ids` is set during early boot and never changes afterwards.
    let first = unsafe { bindings::nr_node_ids };
    match u32::from(dev).checked_sub(first) {
        Some(slot) if (slot as usize) < COPY_SLOTS => Some(slot as usize),
        _ => None,
    }
}

/// The device of slot `slot` (see [`device_slot`]).
fn slot_device(slot: usize) -> DeviceId {
    // SAFETY: as in `device_slot`.
    let first = unsafe { bindings::nr_node_ids };
    // Device node ids fit a `DeviceId`: `device_slot` came from one.
    (first as usize + slot) as DeviceId
}

/// The index of the copy of page `vpn` on the device of slot `slot`.
fn copy_index(vpn: usize, slot: usize) -> usize {
    COPY_BASE + vpn * COPY_SLOTS + slot
}

/// Where a page lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Residency {
    /// Nowhere yet: touched, but no copy exists (the first fault is under way).
    Nowhere,
    /// In host memory, mapped (or swapped) by the CPU page table.
    Host,
    /// On a device; the CPU page table does not map it.
    Device(DevicePage),
    /// Evicted from a device into a host page that the entry owns (a [`ParkedPage`], as
    /// returned by [`ParkedPage::into_raw`]: its frame number); the CPU page table does not
    /// map it.
    Parked(u64),
}

/// A host page holding the data of a page evicted from a device, owned by its entry in the
/// logical page table until the page is mapped again (by the CPU or a device) or dropped.
///
/// # Invariants
///
/// `0` is a page of order 0 of which this object owns a reference.
pub(crate) struct ParkedPage(NonNull<bindings::page>);

impl ParkedPage {
    /// Parks `page`.
    pub(crate) fn new(page: Page) -> Self {
        let page = ManuallyDrop::new(page);
        // INVARIANT: the page is ours from now on; `Page` would have freed it.
        // SAFETY: `Page::as_ptr` is never NULL.
        Self(unsafe { NonNull::new_unchecked(page.as_ptr()) })
    }

    /// Parks `page`, a fresh page that holds data of the process whose mm is `mm`, and charges
    /// it to that process's memory cgroup: not the caller's, since an eviction may run in
    /// another process.  With `may_oom`, a cgroup at its limit reclaims and may OOM-kill like
    /// for any allocation of the process; without (an eviction on behalf of someone else), the
    /// charge just fails.  `ENOMEM` if it failed: the page is freed.
    pub(crate) fn charged(page: Page, mm: *mut bindings::mm_struct, may_oom: bool) -> Result<Self> {
        let parked = Self::new(page);
        let gfp = if may_oom {
            bindings::GFP_KERNEL
        } else {
            bindings::GFP_KERNEL | (1 << bindings::___GFP_RETRY_MAYFAIL_BIT)
        };
        // SAFETY: the page is ours alone, of order 0 and not charged yet; `mm` is live (the
        // caller's address space keeps it) or NULL (the KUnit tests: the current cgroup).
        to_result(unsafe {
            bindings::mem_cgroup_charge(bindings::page_folio(parked.0.as_ptr()), mm, gfp)
        })?;
        // Freed with `put_page()` (see `drop`), which uncharges it.
        Ok(parked)
    }

    /// Parks `page`, a page that someone else may hold too (a page of a process): the parked
    /// page holds a reference of its own.
    pub(crate) fn new_ref(page: &Page) -> Self {
        // SAFETY: `page` is a valid page; the reference taken here is dropped by `drop`.
        unsafe { bindings::get_page(page.as_ptr()) };
        // INVARIANT: the page is kept by the reference just taken.
        // SAFETY: `Page::as_ptr` is never NULL.
        Self(unsafe { NonNull::new_unchecked(page.as_ptr()) })
    }

    /// The page's folio (of order 0).
    pub(crate) fn folio(&self) -> *mut bindings::folio {
        // SAFETY: by the type invariant the page is valid while `self` lives.
        unsafe { bindings::page_folio(self.0.as_ptr()) }
    }

    /// The entry's representation: the page's frame number.
    pub(crate) fn into_raw(self) -> u64 {
        let page = ManuallyDrop::new(self);
        // SAFETY: by the type invariant the page is valid.
        (unsafe { bindings::page_to_pfn(page.0.as_ptr()) }) as u64
    }

    /// Takes back a page from [`ParkedPage::into_raw`].
    ///
    /// # Safety
    ///
    /// `raw` came from `into_raw` and is taken back once.
    pub(crate) unsafe fn from_raw(raw: u64) -> Self {
        // SAFETY: by the safety requirements `raw` is the frame number of a page we own a
        // reference to, so it has a `struct page`, and that is never NULL.
        Self(unsafe { NonNull::new_unchecked(bindings::pfn_to_page(raw as usize)) })
    }

    /// The page.
    pub(crate) fn page(&self) -> BorrowedPage<'_> {
        // SAFETY: by the type invariant the page is ours while `self` lives.
        unsafe { BorrowedPage::from_raw(self.0) }
    }
}

impl Drop for ParkedPage {
    fn drop(&mut self) {
        // SAFETY: by the type invariant we own a reference to the page.  A page from
        // `alloc_page()` has only ours and is freed; a page of a process goes when its last
        // user lets it go.
        unsafe { bindings::put_page(self.0.as_ptr()) };
    }
}

// SAFETY: a page may be freed from any thread.
unsafe impl Send for ParkedPage {}

const STATE_NOWHERE: u8 = 0;
const STATE_HOST: u8 = 1;
const STATE_DEVICE: u8 = 2;
const STATE_PARKED: u8 = 3;

/// Set while a fault or migration owns the entry: the page is moving.
const FLAG_BUSY: u8 = 1 << 0;
/// How often the CPU took the page back from a device in the current thrashing window (see
/// [`GmMapping::bounce`]): three bits from here.
const BOUNCES_SHIFT: u8 = 1;
const BOUNCES_MAX: u8 = 7;
/// The window those bounces were counted in, modulo 16: four bits from here.
const WINDOW_SHIFT: u8 = 4;

/// The tracking GMEM keeps for one page, as the code reads and writes it.  In the table it is
/// one word (see [`PackedMapping`]).
///
/// # Invariants
///
/// `state` is one of `STATE_*`; `pfn` and `dev` are meaningful only for `STATE_DEVICE`, `pfn`
/// (the parked page's frame number) for `STATE_PARKED`; `gen` only while the entry is busy,
/// and a busy entry is `STATE_NOWHERE` (a claim takes the page out of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GmMapping {
    pfn: u64,
    dev: DeviceId,
    state: u8,
    flags: u8,
    /// The generation of the claim that holds the entry.
    gen: u32,
}

impl GmMapping {
    fn new(residency: Residency, busy: bool) -> Self {
        let mut m = Self {
            pfn: 0,
            dev: 0,
            state: STATE_NOWHERE,
            flags: if busy { FLAG_BUSY } else { 0 },
            gen: 0,
        };
        m.set(residency);
        m
    }

    /// Where the page lives.
    pub(crate) fn residency(&self) -> Residency {
        match self.state {
            STATE_HOST => Residency::Host,
            STATE_DEVICE => Residency::Device(DevicePage {
                dev: self.dev,
                pfn: self.pfn,
            }),
            STATE_PARKED => Residency::Parked(self.pfn),
            _ => Residency::Nowhere,
        }
    }

    /// Records where the page lives.
    pub(crate) fn set(&mut self, residency: Residency) {
        // INVARIANT: each arm stores a valid `STATE_*` with the fields it needs.
        match residency {
            Residency::Nowhere => self.state = STATE_NOWHERE,
            Residency::Host => self.state = STATE_HOST,
            Residency::Device(page) => {
                self.state = STATE_DEVICE;
                self.dev = page.dev;
                self.pfn = page.pfn;
            }
            Residency::Parked(pfn) => {
                self.state = STATE_PARKED;
                self.pfn = pfn;
            }
        }
    }

    /// Whether a fault or migration owns the entry.
    pub(crate) fn busy(&self) -> bool {
        self.flags & FLAG_BUSY != 0
    }

    /// Counts a bounce of the page (the CPU took it back from a device) in thrashing window
    /// `window`; the count starts again in a new window.  Returns the count.
    pub(crate) fn bounce(&mut self, window: u32) -> u8 {
        let tag = (window & 0xf) as u8;
        let count = match self.bounces(window) {
            0 => 1,
            n => (n + 1).min(BOUNCES_MAX),
        };
        self.flags = (self.flags & FLAG_BUSY) | (count << BOUNCES_SHIFT) | (tag << WINDOW_SHIFT);
        count
    }

    /// How often the page bounced in thrashing window `window` (see [`GmMapping::bounce`]).
    pub(crate) fn bounces(&self, window: u32) -> u8 {
        if self.flags >> WINDOW_SHIFT != (window & 0xf) as u8 {
            return 0;
        }
        (self.flags >> BOUNCES_SHIFT) & BOUNCES_MAX
    }

    /// Marks the entry as owned (or no longer owned) by a fault or migration.
    pub(crate) fn set_busy(&mut self, busy: bool) {
        if busy {
            self.flags |= FLAG_BUSY;
        } else {
            self.flags &= !FLAG_BUSY;
        }
    }

    /// The entry as one word (see [`PackedMapping`]).
    fn pack(&self) -> PackedMapping {
        let number = if self.busy() {
            u64::from(self.gen)
        } else {
            self.pfn
        };
        // Device memory is checked to fit when it is registered (`DeviceMemory::new`), parked
        // pages are host pages, and device ids are below `DEV_LIMIT` (see `PackedMapping`).
        debug_assert!(number <= MAX_PFN && u32::from(self.dev) < DEV_LIMIT);
        debug_assert!(!self.busy() || self.state == STATE_NOWHERE);
        PackedMapping(
            1 | u64::from(self.state) << PACK_STATE
                | u64::from(self.flags) << PACK_FLAGS
                | u64::from(self.dev) << PACK_DEV
                | (number & MAX_PFN) << PACK_NUMBER,
        )
    }

    /// Back from [`GmMapping::pack`].
    fn unpack(word: u64) -> Self {
        let flags = (word >> PACK_FLAGS) as u8;
        let state = (word >> PACK_STATE) as u8 & 3;
        let number = word >> PACK_NUMBER;
        let busy = flags & FLAG_BUSY != 0;
        Self {
            pfn: if busy { 0 } else { number },
            dev: if state == STATE_DEVICE {
                (word >> PACK_DEV) as DeviceId & (DEV_LIMIT as DeviceId - 1)
            } else {
                0
            },
            state,
            flags,
            gen: if busy { number as u32 } else { 0 },
        }
    }
}

/// Where the fields of a [`GmMapping`] go in its word: bit 0 is set, so that the word is never
/// zero; the state, two bits; the flags, eight; the device id; and the page frame number (or
/// while the entry is busy, the claim's generation) in the high bits.
const PACK_STATE: u32 = 1;
const PACK_FLAGS: u32 = 3;
const PACK_DEV: u32 = 11;
const PACK_NUMBER: u32 = 22;
/// Device ids are below this: the first device id is `nr_node_ids`, at most 1024, and there
/// are at most 64 devices.
const DEV_LIMIT: u32 = 1 << (PACK_NUMBER - PACK_DEV);
/// The largest page frame number an entry holds: 40 bits, as the host's on 64-bit machines
/// (52 bits of physical address at most), and device memory up to 4 PiB.
pub(crate) const MAX_PFN: u64 = (1 << (62 - PACK_NUMBER)) - 1;
const _: () = assert!(MAX_PFN >= u32::MAX as u64 && 1024 + 64 <= DEV_LIMIT);

/// One entry of the logical page table as the XArray holds it: a [`GmMapping`] packed in a
/// word of 62 bits, shifted left by two, stored in place of a pointer.  No memory behind it:
/// what a tracked page costs is its share of the XArray's nodes, about 9 bytes for dense
/// ranges (a 576-byte node per 64 pages).
///
/// The XArray never dereferences what it stores; a word with its low two bits clear is a
/// normal entry to it, as a 4-byte aligned pointer is, and the word is never zero.
///
/// # Invariants
///
/// `0` has bit 0 set and bits 62 and 63 clear.
pub(crate) struct PackedMapping(u64);

// SAFETY: `into_foreign` returns the word shifted left by two: 4-byte aligned and, since bit 0
// of the word is set, never NULL.  The "pointer" is only ever turned back into the word
// (`from_foreign`, `borrow`), never dereferenced, as the trait allows.  Borrows are copies of
// the entry; there is no mutable borrow (a copy would take changes nowhere): a change is
// stored back with `put()`.
unsafe impl ForeignOwnable for PackedMapping {
    const FOREIGN_ALIGN: usize = 4;
    type Borrowed<'a> = GmMapping;
    type BorrowedMut<'a> = ();

    fn into_foreign(self) -> *mut c_void {
        (self.0 << 2) as usize as *mut c_void
    }

    unsafe fn from_foreign(ptr: *mut c_void) -> Self {
        // INVARIANT: the caller passes what `into_foreign` returned.
        Self(ptr as usize as u64 >> 2)
    }

    unsafe fn borrow<'a>(ptr: *mut c_void) -> Self::Borrowed<'a> {
        GmMapping::unpack(ptr as usize as u64 >> 2)
    }

    unsafe fn borrow_mut<'a>(_: *mut c_void) -> Self::BorrowedMut<'a> {}
}

/// Pages tracked by every logical page table together (shown in debugfs).
pub(crate) static TRACKED_PAGES: AtomicUsize = AtomicUsize::new(0);

/// Stores `m` back at `index`, whose entry the caller read under the lock it still holds.
fn put(guard: &mut Guard<'_, PackedMapping>, index: usize, m: GmMapping) {
    // The entry is there: replacing it allocates nothing, and cannot fail.
    let stored = guard.store(index, m.pack(), GFP_NOWAIT);
    kernel::warn_on!(stored.is_err());
}

/// How many pages [`LogicalPageTable::erase_range`] hands over at a time: a device unmaps them
/// with one TLB invalidation.
const ERASE_BATCH: usize = 64;

/// How many entries a range walk handles per lock hold.  Callbacks run with the lock dropped,
/// so a walk over a large range never keeps the lock long.
const WALK_BATCH: usize = 16;

/// The right to move one page: see "Claims" in the module documentation.
///
/// Taken by [`LogicalPageTable::claim_if`], [`LogicalPageTable::claim`] or
/// [`LogicalPageTable::claim_any`]; ended, exactly once, by [`LogicalPageTable::end_claim`] (or
/// handed to C as a token with [`Claim::into_token`] and taken back with [`Claim::from_token`]).
/// Dropping a claim without ending it would leave its entry busy for good: it warns.
#[must_use = "a claim is ended with `LogicalPageTable::end_claim`"]
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Claim {
    vpn: usize,
    gen: u32,
}

impl Claim {
    /// The claimed page.
    pub(crate) fn vpn(&self) -> usize {
        self.vpn
    }

    /// The claim as a number C code keeps for a while (a CPU fault's): its generation.
    pub(crate) fn into_token(self) -> u32 {
        ManuallyDrop::new(self).gen
    }

    /// Takes back the claim of page `vpn` given out as `token` by [`Claim::into_token`].
    pub(crate) fn from_token(vpn: usize, token: u32) -> Self {
        Self { vpn, gen: token }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // A claim that is not ended keeps its entry busy, and everyone who waits for the page
        // waits forever.
        kernel::warn_on!(true);
    }
}

/// The logical page table of one address space.
///
/// # Examples
///
/// ```ignore
/// let lpt = KBox::pin_init(LogicalPageTable::new(), GFP_KERNEL)?;
/// lpt.insert(0x1000, Residency::Host)?;
/// assert_eq!(lpt.residency(0x1000), Some(Residency::Host));
/// ```
#[pin_data(PinnedDrop)]
pub(crate) struct LogicalPageTable {
    #[pin]
    pages: XArray<PackedMapping>,
    /// Entries of pages in `pages`; changed only under the lock.
    len: AtomicUsize,
    /// Entries of read-only copies in `pages`; changed only under the lock.
    copies: AtomicUsize,
    /// The generation of the next claim.
    next_gen: Atomic<u32>,
    /// Sleepers in [`LogicalPageTable::wait_unclaimed`]; changed under `wait_lock`.
    waiters: Atomic<u32>,
    /// Signalled when a claim ends or a claimed entry is dropped.
    #[pin]
    unclaimed: CondVar,
    /// Orders a sleeper's look at its entry with the wake-up that follows a change of it.
    #[pin]
    wait_lock: SpinLock<()>,
}

impl LogicalPageTable {
    /// Creates an empty table.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            pages <- XArray::new(AllocKind::Alloc),
            len: AtomicUsize::new(0),
            copies: AtomicUsize::new(0),
            next_gen: Atomic::new(1u32),
            waiters: Atomic::new(0u32),
            unclaimed <- new_condvar!("gmem_lpt::unclaimed"),
            wait_lock <- new_spinlock!((), "gmem_lpt::wait_lock"),
        })
    }

    /// Takes the table's lock.
    pub(crate) fn lock(&self) -> Guard<'_, PackedMapping> {
        self.pages.lock()
    }

    /// Claims the entry `m` of page `vpn`, found not busy under the lock the caller holds.
    fn take(&self, guard: &mut Guard<'_, PackedMapping>, mut m: GmMapping, vpn: usize) -> Claim {
        let gen = self.next_gen.fetch_add(1u32, Relaxed);
        m.set(Residency::Nowhere);
        m.set_busy(true);
        m.gen = gen;
        put(guard, vpn, m);
        Claim { vpn, gen }
    }

    /// Claims page `vpn` for a move if its entry is `expect` and not busy: it becomes busy and
    /// nowhere, and `claimed` runs under the lock (given its guard).  `None` if the entry is
    /// something else, gone or claimed.
    pub(crate) fn claim_if(
        &self,
        vpn: usize,
        expect: Residency,
        claimed: impl FnOnce(&Guard<'_, PackedMapping>),
    ) -> Option<Claim> {
        let mut guard = self.lock();
        match guard.get(vpn) {
            Some(m) if !m.busy() && m.residency() == expect => {
                let claim = self.take(&mut guard, m, vpn);
                claimed(&guard);
                Some(claim)
            }
            _ => None,
        }
    }

    /// Claims page `vpn` if its entry is still what the caller `seen` (`None`: no entry, and
    /// then a claimed one is made).  `None` if someone else got there first.
    pub(crate) fn claim(&self, vpn: usize, seen: Option<Residency>) -> Result<Option<Claim>> {
        match seen {
            Some(seen) => Ok(self.claim_if(vpn, seen, |_| {})),
            None => self.claim_new(vpn),
        }
    }

    /// Claims page `vpn` whatever it holds, making its entry if there is none: the claim and
    /// where the page was.  `None` if it is claimed already.
    pub(crate) fn claim_any(&self, vpn: usize) -> Result<Option<(Claim, Residency)>> {
        loop {
            {
                let mut guard = self.lock();
                if let Some(m) = guard.get(vpn) {
                    if m.busy() {
                        return Ok(None);
                    }
                    let was = m.residency();
                    return Ok(Some((self.take(&mut guard, m, vpn), was)));
                }
            }
            if let Some(claim) = self.claim_new(vpn)? {
                return Ok(Some((claim, Residency::Nowhere)));
            }
            // Made by someone else meanwhile: look again.
        }
    }

    /// Makes a claimed entry at `vpn` (a page or a copy's index), which is untracked.  `None`
    /// if it is tracked.
    fn claim_new(&self, vpn: usize) -> Result<Option<Claim>> {
        let gen = self.next_gen.fetch_add(1u32, Relaxed);
        let mut mapping = GmMapping::new(Residency::Nowhere, true);
        mapping.gen = gen;
        match self.insert_mapping(vpn, mapping) {
            Ok(()) => Ok(Some(Claim { vpn, gen })),
            Err(e) if e == EBUSY => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Ends `claim` under the lock the caller holds, recording where the page lives `now`;
    /// the caller calls [`LogicalPageTable::wake`] once it dropped the lock.  `false` if the
    /// entry was dropped (or dropped and made again) meanwhile: nothing was recorded, and the
    /// caller still owns what `now` names.
    pub(crate) fn end_claim_locked(
        guard: &mut Guard<'_, PackedMapping>,
        claim: Claim,
        now: Residency,
    ) -> bool {
        let claim = ManuallyDrop::new(claim);
        match guard.get(claim.vpn) {
            Some(mut m) if m.busy() && m.gen == claim.gen => {
                m.set_busy(false);
                m.gen = 0;
                m.set(now);
                put(guard, claim.vpn, m);
                true
            }
            _ => false,
        }
    }

    /// Ends the claim of a CPU fault that brought the page home from a device (see
    /// [`LogicalPageTable::end_claim`]), counting a bounce in thrashing window `window`.
    pub(crate) fn end_claim_bounced(&self, claim: Claim, window: u32) -> bool {
        let vpn = claim.vpn;
        let ended = {
            let mut guard = self.lock();
            let ended = Self::end_claim_locked(&mut guard, claim, Residency::Host);
            if ended {
                if let Some(mut m) = guard.get(vpn) {
                    m.bounce(window);
                    put(&mut guard, vpn, m);
                }
            }
            ended
        };
        self.wake();
        ended
    }

    /// Ends `claim`, recording where the page lives `now`, and wakes those who wait for it.
    /// `false` if the entry went meanwhile: then the caller still owns what `now` names.
    pub(crate) fn end_claim(&self, claim: Claim, now: Residency) -> bool {
        let ended = Self::end_claim_locked(&mut self.lock(), claim, now);
        self.wake();
        ended
    }

    /// Wakes those who wait for a claim of this table to end.
    pub(crate) fn wake(&self) {
        // A sleeper counted itself before it looked at its entry under the table's lock, and
        // the entry was changed under that lock before this: the count is seen.
        if self.waiters.load(Relaxed) != 0 {
            let _guard = self.wait_lock.lock();
            self.unclaimed.notify_all();
        }
    }

    /// Sleeps until page `vpn` is not claimed (its claim ended or its entry went).
    pub(crate) fn wait_unclaimed(&self, vpn: usize) {
        self.wait_while(|lpt| lpt.get(vpn).is_some_and(|m| m.busy()));
    }

    /// Sleeps while `cond`, looked at under the table's lock, holds.  Whoever makes it false
    /// does so under that lock, then calls [`LogicalPageTable::wake`].
    pub(crate) fn wait_while(&self, mut cond: impl FnMut(&Guard<'_, PackedMapping>) -> bool) {
        kernel::task::might_sleep();
        let mut guard = self.wait_lock.lock();
        self.waiters.fetch_add(1u32, Relaxed);
        while cond(&self.lock()) {
            self.unclaimed.wait(&mut guard);
        }
        self.waiters.fetch_sub(1u32, Relaxed);
    }

    /// Number of pages tracked.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Where page `vpn` lives and whether its entry is claimed, if it has one.
    pub(crate) fn peek(&self, vpn: usize) -> Option<(Residency, bool)> {
        self.lock().get(vpn).map(|m| (m.residency(), m.busy()))
    }

    /// Where page `vpn` lives, if it is tracked.
    pub(crate) fn residency(&self, vpn: usize) -> Option<Residency> {
        self.lock().get(vpn).map(|m| m.residency())
    }

    /// Starts tracking page `vpn`.  Fails with `EBUSY` if it is already tracked.  (The core
    /// inserts claimed entries with [`LogicalPageTable::insert_mapping`]; tests set pages up
    /// with this.)
    #[cfg(CONFIG_GMEM_KUNIT_TEST)]
    pub(crate) fn insert(&self, vpn: usize, residency: Residency) -> Result {
        self.insert_mapping(vpn, GmMapping::new(residency, false))
    }

    /// Stores `mapping` at `vpn`, which must be untracked (`EBUSY` otherwise).
    pub(crate) fn insert_mapping(&self, vpn: usize, mapping: GmMapping) -> Result {
        self.insert_mapping_gfp(vpn, mapping, GFP_KERNEL_ACCOUNT)
    }

    /// [`LogicalPageTable::insert_mapping`] with allocation flags `gfp`.
    fn insert_mapping_gfp(&self, vpn: usize, mapping: GmMapping, gfp: Flags) -> Result {
        // The XArray may drop the lock to allocate nodes, but `insert` never overwrites what
        // was stored meanwhile.
        let mut guard = self.lock();
        guard.insert(vpn, mapping.pack(), gfp)?;
        self.account(vpn, 1);
        Ok(())
    }

    /// Counts `added` entries at `index`: pages, or read-only copies.
    fn account(&self, index: usize, added: isize) {
        if index >= COPY_BASE {
            if added >= 0 {
                self.copies.fetch_add(added as usize, Ordering::Relaxed);
            } else {
                self.copies
                    .fetch_sub(added.unsigned_abs(), Ordering::Relaxed);
            }
            return;
        }
        if added >= 0 {
            self.len.fetch_add(added as usize, Ordering::Relaxed);
            TRACKED_PAGES.fetch_add(added as usize, Ordering::Relaxed);
        } else {
            self.len.fetch_sub(added.unsigned_abs(), Ordering::Relaxed);
            TRACKED_PAGES.fetch_sub(added.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Walks the entries of pages `start..end` in address order, `WALK_BATCH` at a time.
    ///
    /// `visit(guard, vpn, residency)` runs under the lock and may change the table; what it
    /// returns is handed to `after(vpn, residency)` once the lock is dropped.
    fn walk(
        &self,
        start: usize,
        end: usize,
        mut visit: impl FnMut(&mut Guard<'_, PackedMapping>, usize, Residency) -> Option<Residency>,
        mut after: impl FnMut(usize, Residency),
    ) {
        let mut next = start;
        while next < end {
            let mut batch = [None; WALK_BATCH];
            let mut count = 0;
            {
                let mut guard = self.lock();
                while count < WALK_BATCH {
                    let Some((vpn, residency)) = guard
                        .find(next, end - 1)
                        .map(|(vpn, m)| (vpn, m.residency()))
                    else {
                        next = end;
                        break;
                    };
                    next = vpn + 1;
                    if let Some(page) = visit(&mut guard, vpn, residency) {
                        batch[count] = Some((vpn, page));
                        count += 1;
                    }
                }
            }
            for (vpn, page) in batch.into_iter().flatten() {
                after(vpn, page);
            }
        }
    }

    /// Stops tracking the pages `start..end` for which `select` is true.
    ///
    /// `released(pages)` is called, without the lock, with the `(vpn, residency)` pairs of the
    /// device and parked pages whose entries go, up to [`ERASE_BATCH`] at a time: the caller
    /// owns those pages from then on, and unmaps a device page from its device there.  The
    /// entry of a device page goes only once `released` returned: until then it is claimed,
    /// and a fault on the page waits.  Gone first, it would let a device fault find no entry
    /// and map a new page at the address over a mapping of the old one that the device's TLB
    /// may still cache (and that `released` would then remove).  Claimed entries are removed
    /// at once: their holders find them gone when they end their claims, and keep what they
    /// moved.  Returns the number of entries removed.
    pub(crate) fn erase_range(
        &self,
        start: usize,
        end: usize,
        mut select: impl FnMut(Residency) -> bool,
        mut released: impl FnMut(&[(usize, Residency)]),
    ) -> usize {
        let mut removed = 0;
        let mut next = start;
        while next < end {
            let mut pages = [(0, Residency::Nowhere); ERASE_BATCH];
            let mut claims = [const { None }; ERASE_BATCH];
            let (mut count, mut wake) = (0, false);
            {
                let mut guard = self.lock();
                while count < ERASE_BATCH {
                    let Some((vpn, m)) = guard.find(next, end - 1) else {
                        next = end;
                        break;
                    };
                    next = vpn + 1;
                    let residency = m.residency();
                    if !select(residency) {
                        continue;
                    }
                    if matches!(residency, Residency::Device(_)) && !m.busy() {
                        claims[count] = Some(self.take(&mut guard, m, vpn));
                    } else {
                        wake |= m.busy();
                        guard.remove(vpn);
                        self.account(vpn, -1);
                        removed += 1;
                        if !matches!(residency, Residency::Parked(_)) {
                            continue;
                        }
                    }
                    pages[count] = (vpn, residency);
                    count += 1;
                }
            }
            if count != 0 {
                released(&pages[..count]);
            }
            if claims.iter().any(Option::is_some) {
                let mut guard = self.lock();
                for claim in claims.iter_mut().filter_map(Option::take) {
                    // Gone already if another drop took it meanwhile.
                    if self.erase_claimed_locked(&mut guard, claim) {
                        removed += 1;
                    }
                }
                wake = true;
            }
            if wake {
                // Those who wait for the pages find them gone now.
                self.wake();
            }
        }
        removed
    }

    /// Calls `f(vpn)`, without the lock, for every page in `start..end` that the CPU page table
    /// cannot map as it is: device-resident, parked, or claimed (moving).
    pub(crate) fn for_each_away_page(&self, start: usize, end: usize, mut f: impl FnMut(usize)) {
        self.walk(
            start,
            end,
            |guard, vpn, residency| match residency {
                Residency::Device(_) | Residency::Parked(_) => Some(residency),
                _ if guard.get(vpn).is_some_and(|m| m.busy()) => Some(residency),
                _ => None,
            },
            |vpn, _| f(vpn),
        );
    }

    /// Which of the `n` (at most 512) pages from `first` on bounced at least `threshold` times
    /// in thrashing window `window` (see [`GmMapping::bounce`]): bit `i % 64` of word `i / 64`
    /// for page `first + i`.
    pub(crate) fn thrashing(&self, first: usize, n: usize, window: u32, threshold: u8) -> [u64; 8] {
        let mut bits = [0u64; 8];
        let n = n.min(512);
        if n == 0 || threshold == 0 {
            return bits;
        }
        for (vpn, m) in self.lock().range(first, first + n - 1) {
            if m.bounces(window) >= threshold {
                let i = vpn - first;
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        bits
    }

    /// Which of the `n` (at most 512) pages from `first` on live on device `dev`: bit `i % 64`
    /// of word `i / 64` for page `first + i`.  A page being moved is on no device.
    pub(crate) fn on_device(&self, first: usize, n: usize, dev: DeviceId) -> [u64; 8] {
        let mut bits = [0u64; 8];
        let n = n.min(512);
        if n == 0 {
            return bits;
        }
        for (vpn, m) in self.lock().range(first, first + n - 1) {
            if matches!(m.residency(), Residency::Device(p) if p.dev == dev) {
                let i = vpn - first;
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        bits
    }

    /// Which of the `n` (at most 512) pages from `first` on have a read-only copy on device
    /// `dev` (claimed or not): bit `i % 64` of word `i / 64` for page `first + i`.
    pub(crate) fn copies_on(&self, first: usize, n: usize, dev: DeviceId) -> [u64; 8] {
        let mut bits = [0u64; 8];
        let n = n.min(512);
        let Some(slot) = device_slot(dev) else {
            return bits;
        };
        if n == 0 || self.copies() == 0 {
            return bits;
        }
        for (index, _) in self
            .lock()
            .range(copy_index(first, 0), copy_index(first + n, 0) - 1)
        {
            if (index - COPY_BASE) % COPY_SLOTS == slot {
                let i = (index - COPY_BASE) / COPY_SLOTS - first;
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        bits
    }

    /// The node of page `vpn` if it lives on a device (the device's id) or is parked (the
    /// NUMA node of the host page that holds it).
    pub(crate) fn away_node(&self, vpn: usize) -> Option<c_int> {
        let guard = self.lock();
        match guard.get(vpn)?.residency() {
            Residency::Device(page) => Some(c_int::from(page.dev)),
            Residency::Parked(raw) => {
                // SAFETY: the entry owns the page (whose frame number `raw` is), and keeps it
                // while the lock is held.
                Some(unsafe { bindings::page_to_nid(bindings::pfn_to_page(raw as usize)) })
            }
            _ => None,
        }
    }

    /// Calls `f(vpn, page)`, without the lock, for every device-resident page in `start..end`.
    pub(crate) fn for_each_device_page(
        &self,
        start: usize,
        end: usize,
        mut f: impl FnMut(usize, DevicePage),
    ) {
        self.walk(
            start,
            end,
            |_, _, residency| match residency {
                Residency::Device(_) => Some(residency),
                _ => None,
            },
            |vpn, r| {
                if let Residency::Device(page) = r {
                    f(vpn, page)
                }
            },
        );
    }

    /// Number of read-only copies tracked.
    pub(crate) fn copies(&self) -> usize {
        self.copies.load(Ordering::Relaxed)
    }

    /// Makes the entry of a copy of page `vpn` on device `dev`, claimed: the claim, and how
    /// many other copies the page has.  `None` if the device has one, or another copy of the
    /// page is claimed (being made, mapped again or evicted: it may have lived through an
    /// invalidation, and its holder drops it).  `EINVAL` for a device without a slot (see
    /// [`device_slot`]).
    ///
    /// The others are counted once the new entry is in the table: from then on a CPU write
    /// waits, so copies counted then, not claimed, are copies of a page the CPU maps read-only.
    pub(crate) fn claim_new_copy(
        &self,
        vpn: usize,
        dev: DeviceId,
    ) -> Result<Option<(Claim, usize)>> {
        let slot = device_slot(dev).ok_or(EINVAL)?;
        let Some(claim) = self.claim_new(copy_index(vpn, slot))? else {
            return Ok(None);
        };
        let mut guard = self.lock();
        let (count, busy) = Self::copies_locked(&guard, vpn);
        if busy > 1 {
            self.erase_claimed_locked(&mut guard, claim);
            return Ok(None);
        }
        Ok(Some((claim, count - 1)))
    }

    /// Claims the copy of page `vpn` on device `dev` if there is one, not claimed, and it is
    /// `expect` (any page for `None`): the claim and the copy's device page.
    pub(crate) fn claim_copy(
        &self,
        vpn: usize,
        dev: DeviceId,
        expect: Option<DevicePage>,
    ) -> Option<(Claim, DevicePage)> {
        let index = copy_index(vpn, device_slot(dev)?);
        let mut guard = self.lock();
        let m = guard.get(index)?;
        match m.residency() {
            Residency::Device(page) if !m.busy() && expect.is_none_or(|e| e == page) => {
                Some((self.take(&mut guard, m, index), page))
            }
            _ => None,
        }
    }

    /// Removes the entry that `claim` holds, if it still is the claim's (`false` if it went
    /// meanwhile).  Either way the holder owns what it moved.
    pub(crate) fn erase_claimed(&self, claim: Claim) -> bool {
        let removed = self.erase_claimed_locked(&mut self.lock(), claim);
        self.wake();
        removed
    }

    /// [`LogicalPageTable::erase_claimed`] under the lock the caller holds; the caller calls
    /// [`LogicalPageTable::wake`] once it dropped the lock.
    pub(crate) fn erase_claimed_locked(
        &self,
        guard: &mut Guard<'_, PackedMapping>,
        claim: Claim,
    ) -> bool {
        let claim = ManuallyDrop::new(claim);
        match guard.get(claim.vpn) {
            Some(m) if m.busy() && m.gen == claim.gen => {
                guard.remove(claim.vpn);
                self.account(claim.vpn, -1);
                true
            }
            _ => false,
        }
    }

    /// Whether a device holds a copy of page `vpn`, or one is being made or evicted: the CPU
    /// may not write the page until the copies are gone.  Never sleeps.
    pub(crate) fn has_copies(&self, vpn: usize) -> bool {
        self.copies_of(vpn).0 > 0
    }

    /// How many copies page `vpn` has, and how many of them are claimed.
    pub(crate) fn copies_of(&self, vpn: usize) -> (usize, usize) {
        if self.copies() == 0 {
            return (0, 0);
        }
        Self::copies_locked(&self.lock(), vpn)
    }

    /// [`LogicalPageTable::copies_of`] under the lock the caller holds.
    fn copies_locked(guard: &Guard<'_, PackedMapping>, vpn: usize) -> (usize, usize) {
        let first = copy_index(vpn, 0);
        let (mut count, mut busy) = (0, 0);
        for (_, m) in guard.range(first, first + COPY_SLOTS - 1) {
            count += 1;
            busy += usize::from(m.busy());
        }
        (count, busy)
    }

    /// Calls `f(vpn, dev, page)`, without the lock, for every copy of pages `start..end`, on
    /// device `dev`; `page` is `None` for a claimed copy (being made, mapped or evicted).
    pub(crate) fn for_each_copy(
        &self,
        start: usize,
        end: usize,
        mut f: impl FnMut(usize, DeviceId, Option<DevicePage>),
    ) {
        if self.copies() == 0 || start >= end {
            return;
        }
        self.walk(
            copy_index(start, 0),
            copy_index(end, 0),
            |_, _, residency| Some(residency),
            |index, residency| {
                let at = index - COPY_BASE;
                let page = match residency {
                    Residency::Device(page) => Some(page),
                    _ => None,
                };
                f(at / COPY_SLOTS, slot_device(at % COPY_SLOTS), page)
            },
        );
    }

    /// Removes the copies of pages `start..end` that are not claimed (only device `dev`'s, if
    /// given), `WALK_BATCH` at a time: each batch is claimed, then `unmap(pages)` is called
    /// with their `(address, page)` pairs, without the lock, to remove them from their
    /// devices, then `released(pages)`, without the lock, to free them, and only then do the
    /// entries go (a claimed entry names no page: freeing first is safe, and a detach that
    /// waits for the claims knows the pages are freed).  Returns the devices, as bits
    /// `1 << device_slot(dev)`, that hold copies of the range (of `dev`) claimed by others:
    /// their holders end them.
    ///
    /// Claimed while their devices unmap them: a CPU write still waits for them
    /// ([`LogicalPageTable::has_copies`]), and no device maps one again meanwhile, which
    /// would leave it mapped once its entry is gone.
    pub(crate) fn erase_copies(
        &self,
        start: usize,
        end: usize,
        dev: Option<DeviceId>,
        mut unmap: impl FnMut(&[(usize, DevicePage)]),
        mut released: impl FnMut(&[(usize, DevicePage)]),
    ) -> u64 {
        if self.copies() == 0 || start >= end {
            return 0;
        }
        let last = copy_index(end, 0);
        let mut next = copy_index(start, 0);
        let mut claimed = 0;
        while next < last {
            let none = DevicePage { dev: 0, pfn: 0 };
            let mut pages = [(0, none); WALK_BATCH];
            let mut claims = [const { None }; WALK_BATCH];
            let mut count = 0;
            {
                let mut guard = self.lock();
                while count < WALK_BATCH {
                    let Some((index, _)) = guard.find(next, last - 1) else {
                        next = last;
                        break;
                    };
                    next = index + 1;
                    let at = index - COPY_BASE;
                    let slot = at % COPY_SLOTS;
                    if dev.is_some_and(|d| d != slot_device(slot)) {
                        continue;
                    }
                    let Some(m) = guard.get(index) else {
                        continue;
                    };
                    match m.residency() {
                        Residency::Device(page) if !m.busy() => {
                            pages[count] = ((at / COPY_SLOTS) * PAGE_SIZE, page);
                            claims[count] = Some(self.take(&mut guard, m, index));
                            count += 1;
                        }
                        _ => claimed |= 1 << slot,
                    }
                }
            }
            if count == 0 {
                continue;
            }
            unmap(&pages[..count]);
            released(&pages[..count]);
            {
                let mut guard = self.lock();
                for claim in claims.iter_mut().filter_map(Option::take) {
                    // Nobody else ends a claim: the entry is still the claim's.
                    self.erase_claimed_locked(&mut guard, claim);
                }
            }
            self.wake();
        }
        claimed
    }

    /// Sleeps while a copy on device `dev` is claimed.
    pub(crate) fn wait_device_copies_unclaimed(&self, dev: DeviceId) {
        let Some(slot) = device_slot(dev) else {
            return;
        };
        self.wait_while(|guard| {
            guard
                .range(COPY_BASE, usize::MAX)
                .any(|(index, m)| (index - COPY_BASE) % COPY_SLOTS == slot && m.busy())
        });
    }

    /// Sleeps while a copy of page `vpn` is claimed.
    pub(crate) fn wait_copies_unclaimed(&self, vpn: usize) {
        self.wait_while(|lpt| Self::copies_locked(lpt, vpn).1 > 0);
    }

    /// Moves the entries of pages `from..from + count` to `to..to + count` (mremap).
    ///
    /// All or nothing: the new entries are allocated and stored first, and only when all of
    /// them are in place are the old ones removed, so `ENOMEM` leaves the table as it was.
    /// The two ranges must not overlap.  `moved(old_vpn, page)` is called, without the lock,
    /// for each device page that moved: the device still maps it at its old address.
    ///
    /// With `nofail` (the undo of a move, which cannot fail), allocations do not fail.
    pub(crate) fn move_range(
        &self,
        from: usize,
        to: usize,
        count: usize,
        nofail: bool,
        moved: impl FnMut(usize, DevicePage),
    ) -> Result {
        let gfp = if nofail {
            GFP_KERNEL_ACCOUNT | __GFP_NOFAIL
        } else {
            GFP_KERNEL_ACCOUNT
        };
        let end = from.checked_add(count).ok_or(EINVAL)?;
        let to_end = to.checked_add(count).ok_or(EINVAL)?;
        if count == 0 || (from < to_end && to < end) {
            return if count == 0 { Ok(()) } else { Err(EINVAL) };
        }
        // Phase 1: copy every entry to its new index.
        let mut next = from;
        let result = loop {
            let found = {
                let guard = self.lock();
                guard
                    .find(next, end - 1)
                    .map(|(vpn, m)| (vpn, GmMapping::new(m.residency(), false)))
            };
            let Some((vpn, mapping)) = found else {
                break Ok(());
            };
            if let Err(e) = self.insert_mapping_gfp(vpn - from + to, mapping, gfp) {
                break Err(e);
            }
            next = vpn + 1;
        };
        if let Err(e) = result {
            // Undo phase 1: remove exactly the copies of the entries before `next`.
            let mut guard = self.lock();
            let mut vpn = from;
            let mut undone = 0isize;
            while let Some((found, _)) = guard.find(vpn, next.saturating_sub(1)) {
                if found >= next {
                    break;
                }
                guard.remove(found - from + to);
                undone -= 1;
                vpn = found + 1;
            }
            self.account(to, undone);
            return Err(e);
        }
        // Phase 2: the old entries go.  Their device pages now belong to the new entries.
        let mut moved = moved;
        // Parked pages moved with their entries; the device still maps device pages at the old
        // address.
        self.erase_range(
            from,
            end,
            |_| true,
            |pages| {
                for &(vpn, r) in pages {
                    if let Residency::Device(page) = r {
                        moved(vpn, page)
                    }
                }
            },
        );
        Ok(())
    }
}

#[pinned_drop]
impl PinnedDrop for LogicalPageTable {
    fn drop(self: Pin<&mut Self>) {
        // The owner releases device pages first (`AddressSpace` erases everything before it
        // drops the table); what is left here is host bookkeeping only.
        let left = self.len();
        self.account(0, -(left as isize));
    }
}

#[cfg(CONFIG_GMEM_KUNIT_TEST)]
#[kunit_tests(gmem_lpt)]
mod tests {
    use super::*;
    use kernel::alloc::KVec;

    fn table() -> Result<Pin<KBox<LogicalPageTable>>> {
        KBox::pin_init(LogicalPageTable::new(), GFP_KERNEL)
    }

    fn dev(pfn: u64) -> Residency {
        Residency::Device(DevicePage { dev: 3, pfn })
    }

    #[test]
    fn bounces_count_per_window() -> Result {
        let mut m = GmMapping::new(Residency::Host, false);
        assert_eq!(m.bounces(5), 0);
        assert_eq!((m.bounce(5), m.bounce(5), m.bounce(5)), (1, 2, 3));
        assert_eq!(m.bounces(5), 3);
        // Another window, or the same one 16 later (the tag wraps), starts again.
        assert_eq!(m.bounces(6), 0);
        assert_eq!(m.bounces(21), 3);
        assert_eq!(m.bounce(6), 1);
        for _ in 0..10 {
            m.bounce(6);
        }
        assert_eq!(m.bounces(6), 7);
        // The claim flag is left alone.
        m.set_busy(true);
        m.bounce(6);
        assert!(m.busy() && m.bounces(6) == 7);
        m.set_busy(false);
        assert_eq!(m.bounces(6), 7);
        Ok(())
    }

    #[test]
    fn copies_live_beside_their_page() -> Result {
        let lpt = table()?;
        // SAFETY: as in `device_slot`.
        let first = unsafe { bindings::nr_node_ids } as DeviceId;
        let a = DevicePage {
            dev: first + 1,
            pfn: 20,
        };
        let b = DevicePage {
            dev: first + 2,
            pfn: 30,
        };
        lpt.insert(5, Residency::Host)?;
        assert_eq!(lpt.copies_of(5), (0, 0));
        for (held, page) in [a, b].into_iter().enumerate() {
            let (claim, others) = lpt.claim_new_copy(5, page.dev)?.expect("no copy yet");
            assert_eq!(others, held);
            // One copy per device; one being made counts, claimed.
            assert!(lpt.claim_new_copy(5, page.dev)?.is_none());
            assert_eq!(lpt.copies_of(5), (held + 1, 1));
            assert!(lpt.end_claim(claim, Residency::Device(page)));
        }
        assert_eq!(lpt.copies_of(5), (2, 0));
        assert_eq!((lpt.copies(), lpt.len()), (2, 1));
        assert!(lpt.has_copies(5) && !lpt.has_copies(4) && !lpt.has_copies(6));
        // The page's entry is untouched, and walks of pages do not see copies.
        assert_eq!(lpt.residency(5), Some(Residency::Host));
        let mut seen = 0;
        lpt.for_each_device_page(0, usize::MAX / PAGE_SIZE + 1, |_, _| seen += 1);
        assert_eq!(seen, 0);
        // Only the copy asked for is claimed.
        assert!(lpt.claim_copy(5, a.dev, Some(b)).is_none());
        let (claim, page) = lpt.claim_copy(5, a.dev, None).expect("an idle copy");
        assert_eq!(page, a);
        // While one is claimed, no other device makes a copy (it may be stale).
        // SAFETY: as in `device_slot`.
        let c = unsafe { bindings::nr_node_ids } as DeviceId + 3;
        assert!(lpt.claim_new_copy(5, c)?.is_none());
        assert_eq!(lpt.copies_of(5), (2, 1));
        let mut listed = KVec::new();
        lpt.for_each_copy(0, 10, |vpn, dev, page| {
            let _ = listed.push((vpn, dev, page), GFP_KERNEL);
        });
        assert_eq!(&listed[..], &[(5, a.dev, None), (5, b.dev, Some(b))]);
        // A claimed copy is left to its holder; a device's copies can be taken alone.
        let mut freed = KVec::new();
        let mut free = |pages: &[(usize, DevicePage)]| {
            for &(va, p) in pages {
                // Freed before its claim ends: a detach that waits for the device's claimed
                // copies knows that their pages went back through the attached device.
                assert_eq!(lpt.copies_of(va / PAGE_SIZE), (2, 2));
                let _ = freed.push(p, GFP_KERNEL);
            }
        };
        let mut unmapped = KVec::new();
        let mut unmap = |pages: &[(usize, DevicePage)]| {
            for &(va, p) in pages {
                // Claimed while its device unmaps it: no fault maps it again, and a CPU write
                // still waits for it.
                assert!(lpt.claim_copy(va / PAGE_SIZE, p.dev, None).is_none());
                assert_eq!(lpt.copies_of(va / PAGE_SIZE), (2, 2));
                let _ = unmapped.push((va, p), GFP_KERNEL);
            }
        };
        // The holders' devices are returned, as bits.
        let a_bit = device_slot(a.dev).map_or(0, |slot| 1u64 << slot);
        assert_ne!(a_bit, 0);
        assert_eq!(
            lpt.erase_copies(0, 10, Some(a.dev), &mut unmap, &mut free),
            a_bit
        );
        assert_eq!(
            lpt.erase_copies(0, 10, Some(b.dev), &mut unmap, &mut free),
            0
        );
        assert_eq!(lpt.erase_copies(0, 10, None, &mut unmap, &mut free), a_bit);
        assert_eq!(&unmapped[..], &[(5 * PAGE_SIZE, b)]);
        assert_eq!(&freed[..], &[b]);
        // Only `a`'s copy is claimed now: a wait for `b`'s returns.
        lpt.wait_device_copies_unclaimed(b.dev);
        assert!(lpt.erase_claimed(claim));
        lpt.wait_device_copies_unclaimed(a.dev);
        assert_eq!((lpt.copies(), lpt.len()), (0, 1));
        // A device without a slot has none.
        assert!(matches!(lpt.claim_new_copy(5, DeviceId::MAX), Err(e) if e == EINVAL));
        Ok(())
    }

    #[test]
    fn an_entry_is_one_word_and_round_trips() -> Result {
        let last = (DEV_LIMIT - 1) as DeviceId;
        for r in [
            Residency::Nowhere,
            Residency::Host,
            dev(0),
            dev(MAX_PFN),
            Residency::Device(DevicePage {
                dev: last,
                pfn: MAX_PFN - 1,
            }),
            Residency::Parked(MAX_PFN),
            Residency::Parked(1),
        ] {
            let mut m = GmMapping::new(r, false);
            m.bounce(9);
            let word = m.pack();
            assert!(word.0 & 1 == 1 && word.0 >> 62 == 0);
            let back = GmMapping::unpack(word.0);
            assert_eq!(back, m);
            assert_eq!(back.residency(), r);
            assert_eq!((back.busy(), back.bounces(9)), (false, 1));
            // Through the XArray's representation, as a 4-byte aligned non-NULL "pointer".
            let ptr = word.into_foreign();
            assert!(!ptr.is_null() && ptr as usize % 4 == 0);
            // SAFETY: `ptr` came from `into_foreign` just above, and is taken back once.
            let word = unsafe { PackedMapping::from_foreign(ptr) };
            assert_eq!(GmMapping::unpack(word.0), m);
        }
        // A claimed entry holds the claim's generation in place of the page.
        let mut m = GmMapping::new(Residency::Nowhere, true);
        m.gen = u32::MAX;
        m.bounce(3);
        let back = GmMapping::unpack(m.pack().0);
        assert_eq!(
            (back.busy(), back.gen, back.bounces(3)),
            (true, u32::MAX, 1)
        );
        assert_eq!(back.residency(), Residency::Nowhere);
        Ok(())
    }

    /// Only the holder of a claim ends it, and only while its entry lives: a claim whose entry
    /// was dropped and made again by someone else records nothing.
    #[test]
    fn claims_are_owned() -> Result {
        let lpt = table()?;
        lpt.insert(5, dev(1))?;
        let first = lpt.claim_if(5, dev(1), |_| {}).ok_or(EBUSY)?;
        // Claimed: nobody else gets it, whatever they expect.
        assert!(lpt.claim_if(5, Residency::Nowhere, |_| {}).is_none());
        assert!(lpt.claim_any(5)?.is_none());
        // Dropped (MADV_DONTNEED) and made again by a fault.
        lpt.erase_range(5, 6, |_| true, |_| {});
        let (second, was) = lpt.claim_any(5)?.ok_or(EBUSY)?;
        assert_eq!(was, Residency::Nowhere);
        assert!(!lpt.end_claim(first, dev(1)));
        assert_eq!(lpt.residency(5), Some(Residency::Nowhere));
        assert!(lpt.end_claim(second, Residency::Host));
        assert_eq!(lpt.residency(5), Some(Residency::Host));
        // Not claimed: nothing to wait for.
        lpt.wait_unclaimed(5);
        lpt.wait_unclaimed(6);
        // A claim given to C and taken back is the same claim.
        let (claim, _) = lpt.claim_any(6)?.ok_or(EBUSY)?;
        let token = claim.into_token();
        assert!(lpt.end_claim(Claim::from_token(6, token), Residency::Host));
        Ok(())
    }

    #[test]
    fn insert_lookup_erase() -> Result {
        let lpt = table()?;
        let before = TRACKED_PAGES.load(Ordering::Relaxed);
        assert_eq!(lpt.residency(10), None);
        lpt.insert(10, Residency::Host)?;
        lpt.insert(11, dev(77))?;
        assert_eq!(lpt.insert(10, dev(1)), Err(EBUSY));
        assert_eq!(lpt.residency(10), Some(Residency::Host));
        assert_eq!(lpt.residency(11), Some(dev(77)));
        assert_eq!(lpt.len(), 2);
        assert_eq!(TRACKED_PAGES.load(Ordering::Relaxed), before + 2);

        let mut released = KVec::new();
        let n = lpt.erase_range(
            0,
            100,
            |_| true,
            |pages| {
                for &(vpn, r) in pages {
                    if let Residency::Device(p) = r {
                        // Still claimed while it is released: a fault on it waits, and maps
                        // no new page over the old one's mapping.
                        assert_eq!(lpt.peek(vpn), Some((Residency::Nowhere, true)));
                        let _ = released.push((vpn, p.pfn), GFP_KERNEL);
                    }
                }
            },
        );
        assert_eq!(n, 2);
        assert_eq!(released, [(11, 77)]);
        assert_eq!(lpt.len(), 0);
        assert_eq!(lpt.residency(11), None);
        assert_eq!(TRACKED_PAGES.load(Ordering::Relaxed), before);
        Ok(())
    }

    #[test]
    fn range_walk_is_exact() -> Result {
        let lpt = table()?;
        // More entries than one batch, with gaps, around the range's edges.
        for vpn in (0..200).step_by(3) {
            lpt.insert(vpn, dev(vpn as u64))?;
        }
        let mut seen = KVec::new();
        lpt.for_each_device_page(30, 151, |vpn, p| {
            assert_eq!(vpn as u64, p.pfn);
            let _ = seen.push(vpn, GFP_KERNEL);
        });
        let want: KVec<usize> = {
            let mut v = KVec::new();
            for vpn in (30..151).step_by(3) {
                v.push(vpn, GFP_KERNEL)?;
            }
            v
        };
        assert_eq!(seen, want);
        // Only device pages are selected when asked for.
        lpt.insert(31, Residency::Host)?;
        let n = lpt.erase_range(30, 151, |r| matches!(r, Residency::Device(_)), |_| {});
        assert_eq!(n, want.len());
        assert_eq!(lpt.residency(31), Some(Residency::Host));
        assert_eq!(lpt.residency(27), Some(dev(27)));
        assert_eq!(lpt.residency(153), Some(dev(153)));
        Ok(())
    }

    /// munmap of the middle of a range splits it: the two ends stay, exactly.
    #[test]
    fn split_by_partial_unmap() -> Result {
        let lpt = table()?;
        for vpn in 100..110 {
            lpt.insert(vpn, Residency::Host)?;
        }
        assert_eq!(lpt.erase_range(103, 106, |_| true, |_| {}), 3);
        for vpn in 100..110 {
            let kept = !(103..106).contains(&vpn);
            assert_eq!(lpt.residency(vpn).is_some(), kept);
        }
        assert_eq!(lpt.len(), 7);
        Ok(())
    }

    /// mremap moves entries; moving a range next to another merges them into one.
    #[test]
    fn move_and_merge() -> Result {
        let lpt = table()?;
        for vpn in 0..4 {
            lpt.insert(vpn, Residency::Host)?;
        }
        lpt.insert(2, dev(9)).unwrap_err();
        for vpn in 1000..1004 {
            lpt.insert(vpn, if vpn == 1001 { dev(5) } else { Residency::Host })?;
        }
        let mut moved = KVec::new();
        lpt.move_range(1000, 4, 4, false, |vpn, p| {
            let _ = moved.push((vpn, p.pfn), GFP_KERNEL);
        })?;
        // The device page moved with its entry; the device learns its old address.
        assert_eq!(moved, [(1001, 5)]);
        assert_eq!(lpt.residency(5), Some(dev(5)));
        for vpn in 0..8 {
            assert!(lpt.residency(vpn).is_some());
        }
        assert_eq!(lpt.residency(1001), None);
        assert_eq!(lpt.len(), 8);
        // Overlapping ranges are refused and change nothing.
        assert_eq!(lpt.move_range(0, 2, 4, false, |_, _| {}), Err(EINVAL));
        assert_eq!(lpt.len(), 8);
        // A move onto tracked pages fails as a whole.
        lpt.insert(20, Residency::Host)?;
        assert_eq!(lpt.move_range(0, 18, 4, false, |_, _| {}), Err(EBUSY));
        for vpn in 0..4 {
            assert!(lpt.residency(vpn).is_some());
        }
        assert_eq!(lpt.residency(18), None);
        assert_eq!(lpt.residency(19), None);
        assert_eq!(lpt.len(), 9);
        Ok(())
    }
}
