// SPDX-License-Identifier: GPL-2.0

//! Device memory: the physical memory a driver hands to GMEM with `gm_dev_register_physmem()`.
//!
//! The kernel's GPU buddy allocator ([`kernel::gpu::buddy`]) manages the range in chunks of
//! 2 MiB (or the largest power of two that fits a smaller range), and each chunk in use is
//! carved into pages with a bitmap.  The split is for the free path: a device page is freed from
//! MMU notifier callbacks, which may run in reclaim, and the buddy allocator holds its mutex
//! while it allocates its block descriptors with `GFP_KERNEL`.  So freeing a page only clears a
//! bit under a spinlock; chunks that became empty go back to the buddy allocator from the
//! allocation path, which may sleep.
//!
//! Each page also has a 24-byte [`Owner`]: the address space and page that hold it (the
//! reverse map eviction needs), a referenced bit for the clock that picks what to evict, and
//! the dmem cgroup pool it is charged to.  Nothing like a `struct page` exists for device
//! memory.
//!
//! # Accounting
//!
//! A device's memory is a region of the dmem cgroup controller (`dmem.capacity` lists it as
//! `gmem/<device>`), as TTM registers VRAM: every page allocated is charged to the dmem cgroup
//! of the task that attached the device to the address space ([`DmemCgroup`], kept by the
//! context: a device fault may run in the driver's worker) and uncharged when it is freed, so
//! a cgroup's `dmem.max` holds for device memory.  An allocation over the limit evicts pages of
//! that cgroup first ([`LimitPool`]).

use core::{
    ptr::NonNull,
    sync::atomic::{AtomicU64, AtomicU8, Ordering},
};
use kernel::{
    alloc::{KVVec, KVec},
    bindings,
    bitmap::BitmapVec,
    error::to_result,
    gpu::buddy::{
        AllocatedBlocks, GpuBuddy, GpuBuddyAllocFlags, GpuBuddyAllocMode, GpuBuddyParams,
    },
    new_spinlock,
    page::PAGE_SIZE,
    prelude::*,
    ptr::Alignment,
    str::CStr,
    sync::SpinLock,
};

/// The largest chunk taken from the buddy allocator at once.
const MAX_CHUNK_PAGES: usize = 512;
const BITMAP_WORDS: usize = MAX_CHUNK_PAGES / 64;

/// One chunk of device memory in use: its buddy block and which of its pages are allocated.
///
/// # Invariants
///
/// `free` is the number of clear bits among the first `chunk_pages` bits of `bitmap`.
struct Chunk {
    _blocks: Pin<KBox<AllocatedBlocks>>,
    bitmap: [u64; BITMAP_WORDS],
    free: usize,
}

impl Chunk {
    /// Takes a free page; returns its index in the chunk.
    fn take(&mut self, chunk_pages: usize) -> Option<usize> {
        if self.free == 0 {
            return None;
        }
        for (w, word) in self.bitmap.iter_mut().enumerate() {
            if *word != u64::MAX {
                let bit = (!*word).trailing_zeros() as usize;
                let index = w * 64 + bit;
                if index >= chunk_pages {
                    return None;
                }
                *word |= 1 << bit;
                // INVARIANT: one clear bit was set.
                self.free -= 1;
                return Some(index);
            }
        }
        None
    }
}

/// Page counts of a [`DeviceMemory`].
pub(crate) struct Usage {
    /// Pages GMEM manages.
    pub(crate) pages: u64,
    /// Pages allocated now.
    pub(crate) used: u64,
}

/// Pages evicted at once when a device is full: the free reserve the next faults use.
pub(crate) const EVICT_BATCH: usize = 16;

/// The free reserve of a device that may use `limit` pages: `(low, high)`.  When an allocation
/// leaves fewer than `low` pages free, a worker evicts cold pages until `high` are free, so that
/// faults rarely wait for an eviction; an allocation that finds no free page at all evicts a
/// batch itself.
pub(crate) fn reserve(limit: u64) -> (u64, u64) {
    let low = (limit / 64).max(EVICT_BATCH as u64);
    (low, 2 * low)
}

/// The memory of one device.
///
/// # Invariants
///
/// `chunks` has `pages / chunk_pages` slots; slot `i` covers device pages
/// `base_pfn + i * chunk_pages ..` and holds a [`Chunk`] exactly when the buddy allocator gave
/// that range out.
#[pin_data]
pub(crate) struct DeviceMemory {
    buddy: GpuBuddy,
    base_pfn: u64,
    pages: u64,
    chunk_pages: usize,
    /// At most this many pages are used (an administrator may lower it).
    limit: AtomicU64,
    /// The device reports use through its accessed bits (`pmap_clear_young`): being mapped does
    /// not count as a use.
    tracks_use: bool,
    /// Where the aging turn of the clock stands: `AGING_IDLE`, `AGING_PENDING` or `AGING_DONE`.
    aging: AtomicU8,
    #[pin]
    chunks: SpinLock<Chunks>,
    /// The dmem cgroup region, once registered.
    region: Option<DmemRegion>,
}

struct Chunks {
    slots: KVec<Option<Chunk>>,
    used: u64,
    /// One bit per slot: the chunk there is partly used (some pages free, some not).
    partly: BitmapVec,
    /// One bit per slot: the chunk there has a free page.
    room: BitmapVec,
    /// Set when a chunk emptied (every page freed) since the last allocation looked: that one
    /// then gives the empty chunks back to the buddy allocator.
    emptied: bool,
    /// One per page: who holds it.
    owners: KVVec<Owner>,
    /// The eviction clock's hand (a page index).
    hand: usize,
}

// The states of the aging turn of the clock (`DeviceMemory::aging`): when the free pages of a
// device that tracks use fall below the aging mark, the reserve worker turns the clock once,
// clearing the accessed bits without taking any page, so that the eviction that follows knows
// which pages were used since.

/// The free pages have not been below the mark since they were last above the re-arming mark.
const AGING_IDLE: u8 = 0;
/// They fell below it: the worker has a turn to make.
const AGING_PENDING: u8 = 1;
/// The worker took the turn; the next one comes after the free pages rise above the re-arming
/// mark.
const AGING_DONE: u8 = 2;

/// The aging marks of a device that may use `limit` pages: `(mark, rearm)`.  A turn is due when
/// fewer than `mark` pages (a quarter) are free, and once taken, the next is only after `rearm`
/// pages (half, and at least twice the high mark of the free reserve) were free again: the
/// memory emptied (a range was unmapped, a process left) and fills anew, with pages the clock
/// knows nothing of.  The reserve worker, keeping up to the high mark of [`reserve`] free pages
/// while the memory is full, never re-arms it: by then the clock has the history of its own
/// passes, and a turn per refill would claim every page in use again and again.
pub(crate) fn aging_marks(limit: u64) -> (u64, u64) {
    (limit / 4, (limit / 2).max(2 * reserve(limit).1))
}

impl Chunks {
    /// Brings the bits of slot `slot` in [`Chunks::partly`] and [`Chunks::room`] up to date
    /// with its chunk.
    fn mark(&mut self, slot: usize, chunk_pages: usize) {
        let free = self.slots[slot].as_ref().map_or(0, |c| c.free);
        if free > 0 {
            self.room.set_bit(slot);
        } else {
            self.room.clear_bit(slot);
        }
        if free > 0 && free < chunk_pages {
            self.partly.set_bit(slot);
        } else {
            self.partly.clear_bit(slot);
        }
    }
}

/// Set in [`Owner::flags`] when the page was mapped since the clock last passed.
const REFERENCED: u64 = 1 << 63;
/// Set while the page is being evicted.
const EVICTING: u64 = 1 << 62;
/// Set when a device that tracks use had used the page when the clock last passed it.
const SEEN: u64 = 1 << 61;
/// Set when such a device used the page on two passes of the clock in a row: the page is
/// kept for one more pass without use (see [`DeviceMemory::keep`]).
const ACTIVE: u64 = 1 << 60;
const VPN_MASK: u64 = ACTIVE - 1;

/// The reverse map of one device page.
#[derive(Clone, Copy, Default)]
struct Owner {
    /// The address space holding the page (as an address), 0 if none does.
    space: usize,
    /// The virtual page number, and `REFERENCED`, `EVICTING`, `SEEN`, `ACTIVE`.
    flags: u64,
    /// The dmem cgroup pool the page is charged to (a reference), 0 if none.
    pool: usize,
}

/// The memory of a device as a region of the dmem cgroup controller.
///
/// # Invariants
///
/// `0` is a registered region, unregistered when this is dropped.
struct DmemRegion(NonNull<bindings::dmem_cgroup_region>);

// SAFETY: the dmem controller's functions may be called on a region from any thread.
unsafe impl Send for DmemRegion {}
// SAFETY: as above.
unsafe impl Sync for DmemRegion {}

impl Drop for DmemRegion {
    fn drop(&mut self) {
        // SAFETY: by the type invariant the region is registered.
        unsafe { bindings::dmem_cgroup_unregister_region(self.0.as_ptr()) };
    }
}

/// The dmem cgroup that pays for a process's device memory: the cgroup of the task that
/// attached the device, kept so that allocations made for it elsewhere (a device fault served
/// by a driver's worker) are charged to it, not to whoever runs them.
///
/// # Invariants
///
/// `0` is a reference to a dmem cgroup's state, put when this is dropped.
pub(crate) struct DmemCgroup(NonNull<bindings::dmemcg_state>);

// SAFETY: a cgroup reference may be used and put from any thread.
unsafe impl Send for DmemCgroup {}
// SAFETY: charging through a shared reference is safe from any thread.
unsafe impl Sync for DmemCgroup {}

impl DmemCgroup {
    /// The dmem cgroup of the current task; `None` without the controller.
    pub(crate) fn current() -> Option<Self> {
        // SAFETY: no requirement; the reference returned is ours.
        NonNull::new(unsafe { bindings::dmem_cgroup_get_current() }).map(Self)
    }
}

impl Drop for DmemCgroup {
    fn drop(&mut self) {
        // SAFETY: by the type invariant the reference is ours.
        unsafe { bindings::dmem_cgroup_put(self.0.as_ptr()) };
    }
}

/// The pool of the dmem cgroup whose limit an allocation hit: evicting pages charged to it (or
/// to its descendants) makes room.
///
/// # Invariants
///
/// `0` is a pool reference of ours, put when this is dropped.
pub(crate) struct LimitPool(NonNull<bindings::dmem_cgroup_pool_state>);

// SAFETY: a pool reference may be used and put from any thread.
unsafe impl Send for LimitPool {}

impl LimitPool {
    /// Whether evicting a page charged to `pool` (from a [`Victim`]) makes room under this
    /// limit.
    pub(crate) fn evicting_helps(&self, pool: usize) -> bool {
        if pool == 0 {
            return false;
        }
        let mut hit_low = false;
        // SAFETY: both pools are live: ours by the type invariant, the victim's because its
        // page holds a reference until it is freed (under the device memory's lock, which the
        // caller of `pick_victim` holds).
        unsafe {
            bindings::dmem_cgroup_state_evict_valuable(
                self.0.as_ptr(),
                pool as *mut bindings::dmem_cgroup_pool_state,
                true,
                &mut hit_low,
            )
        }
    }
}

impl Drop for LimitPool {
    fn drop(&mut self) {
        // SAFETY: by the type invariant the reference is ours.
        unsafe { bindings::dmem_cgroup_pool_state_put(self.0.as_ptr()) };
    }
}

/// Why [`DeviceMemory::alloc_charged`] gave no page.
pub(crate) enum Refused {
    /// The memory is full (or at its sysfs limit): evict any page.
    Full,
    /// The allocating task's dmem cgroup is at its limit: evict pages charged to this pool.
    Limit(LimitPool),
    /// Anything else.
    Error(Error),
}

/// A page the eviction clock picked: its owner and where the owner maps it.
pub(crate) struct Victim {
    pub(crate) space: usize,
    pub(crate) vpn: usize,
    pub(crate) pfn: u64,
    /// The dmem cgroup pool the page is charged to (see [`LimitPool::evicting_helps`]).
    pub(crate) pool: usize,
}

impl DeviceMemory {
    /// Manages the device memory at byte offset `base`, `size` bytes long.
    ///
    /// `base` and `size` must be page aligned, `size` non-zero, and the range below 4 PiB
    /// (`EINVAL`).  What does not fill
    /// a whole chunk at the end of the range is left unused.  `tracks_use`: the device has
    /// accessed bits (`pmap_clear_young`), so a mapping does not mark a page used (see
    /// [`DeviceMemory::set_owner`]).
    pub(crate) fn new(base: u64, size: u64, tracks_use: bool) -> Result<Pin<KBox<Self>>> {
        let page = PAGE_SIZE as u64;
        // The logical page table holds page frame numbers up to `MAX_PFN`.
        let fits = base
            .checked_add(size)
            .is_some_and(|end| end / page <= crate::lpt::MAX_PFN + 1);
        if size == 0 || base % page != 0 || size % page != 0 || !fits {
            return Err(EINVAL);
        }
        let total = size / page;
        // The largest power of two of pages, up to a whole chunk, that fits.
        let chunk_pages = if total >= MAX_CHUNK_PAGES as u64 {
            MAX_CHUNK_PAGES
        } else {
            1usize << (63 - total.leading_zeros())
        };
        let nr_chunks = (total / chunk_pages as u64) as usize;
        let pages = (nr_chunks * chunk_pages) as u64;
        let buddy = GpuBuddy::new(GpuBuddyParams {
            base_offset: 0,
            size: pages * page,
            chunk_size: Alignment::new_checked(chunk_pages * PAGE_SIZE).ok_or(EINVAL)?,
        })?;
        let mut slots = KVec::with_capacity(nr_chunks, GFP_KERNEL)?;
        for _ in 0..nr_chunks {
            slots.push(None, GFP_KERNEL)?;
        }
        let owners = KVVec::from_elem(Owner::default(), pages as usize, GFP_KERNEL)?;
        let partly = BitmapVec::new(nr_chunks, GFP_KERNEL)?;
        let room = BitmapVec::new(nr_chunks, GFP_KERNEL)?;
        let limit = AtomicU64::new(pages);
        KBox::pin_init(
            // INVARIANT: one empty slot per chunk; the buddy allocator gave nothing out yet.
            pin_init!(Self {
                buddy,
                base_pfn: base / page,
                pages,
                chunk_pages,
                limit,
                tracks_use,
                aging: AtomicU8::new(AGING_IDLE),
                chunks <- new_spinlock!(
                    Chunks {
                        slots,
                        used: 0,
                        partly,
                        room,
                        emptied: false,
                        owners,
                        hand: 0,
                    },
                    "gmem_device_memory"
                ),
                region: None,
            }),
            GFP_KERNEL,
        )
    }

    /// Registers the memory as the dmem cgroup region `gmem/<name>`: from now on every page is
    /// charged to a dmem cgroup (see [`DeviceMemory::alloc_charged`]).
    pub(crate) fn register_cgroup(self: Pin<&mut Self>, name: &CStr) -> Result {
        // SAFETY: the format takes one string, `name`, valid for the call.
        let region = kernel::error::from_err_ptr(unsafe {
            bindings::dmem_cgroup_register_region(
                self.pages * PAGE_SIZE as u64,
                c"gmem/%s".as_char_ptr(),
                name.as_char_ptr(),
            )
        })?;
        // NULL: the controller is compiled out, and there is nothing to charge.
        let Some(region) = NonNull::new(region) else {
            return Ok(());
        };
        // SAFETY: `region` is not structurally pinned.
        // INVARIANT: the region was just registered.
        unsafe { self.get_unchecked_mut() }.region = Some(DmemRegion(region));
        Ok(())
    }

    /// Allocates a device page; `ENOMEM` when the memory is full, `EAGAIN` when the
    /// allocating task's dmem cgroup is at its limit.
    pub(crate) fn alloc(&self) -> Result<u64> {
        self.alloc_charged(None).map_err(|r| match r {
            Refused::Full => ENOMEM,
            Refused::Limit(_) => EAGAIN,
            Refused::Error(e) => e,
        })
    }

    /// Allocates a device page and charges it to dmem cgroup `cgroup`, or to the allocating
    /// task's.
    pub(crate) fn alloc_charged(&self, cgroup: Option<&DmemCgroup>) -> Result<u64, Refused> {
        let pfn = self.alloc_uncharged().map_err(|e| {
            if e == ENOMEM {
                Refused::Full
            } else {
                Refused::Error(e)
            }
        })?;
        let Some(region) = &self.region else {
            return Ok(pfn);
        };
        let mut pool = core::ptr::null_mut();
        let mut limit = core::ptr::null_mut();
        // SAFETY: the region is registered (type invariant of `DmemRegion`); both pointers are
        // valid for writes.
        let charged = to_result(unsafe {
            match cgroup {
                // `cgroup` is a live reference by its type invariant.
                Some(cg) => bindings::dmem_cgroup_try_charge_to(
                    cg.0.as_ptr(),
                    region.0.as_ptr(),
                    PAGE_SIZE as u64,
                    &mut pool,
                    &mut limit,
                ),
                None => bindings::dmem_cgroup_try_charge(
                    region.0.as_ptr(),
                    PAGE_SIZE as u64,
                    &mut pool,
                    &mut limit,
                ),
            }
        });
        if let Err(e) = charged {
            self.free(pfn);
            return Err(match NonNull::new(limit) {
                // INVARIANT: `dmem_cgroup_try_charge()` gave us a reference to the pool.
                Some(limit) => Refused::Limit(LimitPool(limit)),
                None => Refused::Error(e),
            });
        }
        if let Some(i) = self.index(pfn) {
            self.chunks.lock().owners[i].pool = pool as usize;
        }
        Ok(pfn)
    }

    /// Allocates a device page, charged to nobody; `ENOMEM` when the memory is full.
    fn alloc_uncharged(&self) -> Result<u64> {
        loop {
            let mut empty = KVec::new();
            {
                let mut chunks = self.chunks.lock();
                if chunks.used >= self.limit.load(Ordering::Relaxed) {
                    return Err(ENOMEM);
                }
                let chunk_pages = self.chunk_pages;
                // Partly used chunks first, so that chunks empty out and can go back.
                let slot = chunks
                    .partly
                    .next_bit(0)
                    .or_else(|| chunks.room.next_bit(0));
                let found = slot.and_then(|i| {
                    let chunk = chunks.slots[i].as_mut()?;
                    Some((i, chunk.take(chunk_pages)?))
                });
                if let Some((slot, bit)) = found {
                    chunks.used += 1;
                    chunks.mark(slot, chunk_pages);
                    // Chunks that emptied go back to the buddy allocator, outside the lock.
                    // Keeping one in reserve would be just as valid; returning them keeps the
                    // buddy allocator's view true for bigger allocations.
                    if core::mem::take(&mut chunks.emptied) {
                        for i in 0..chunks.slots.len() {
                            if !matches!(&chunks.slots[i], Some(c) if c.free == chunk_pages) {
                                continue;
                            }
                            // Never dropped here: freeing buddy blocks may sleep.
                            if empty.reserve(1, GFP_NOWAIT).is_err() {
                                // Looked for again at the next allocation.
                                chunks.emptied = true;
                                break;
                            }
                            let _ = empty.push_within_capacity(chunks.slots[i].take());
                            chunks.mark(i, chunk_pages);
                        }
                    }
                    drop(chunks);
                    drop(empty);
                    return Ok(self.base_pfn + (slot * chunk_pages + bit) as u64);
                }
            }
            self.grow()?;
        }
    }

    /// Takes a new chunk from the buddy allocator.
    fn grow(&self) -> Result {
        let bytes = (self.chunk_pages * PAGE_SIZE) as u64;
        let blocks = KBox::pin_init(
            self.buddy.alloc_blocks(
                GpuBuddyAllocMode::Simple,
                bytes,
                Alignment::new_checked(self.chunk_pages * PAGE_SIZE).ok_or(EINVAL)?,
                GpuBuddyAllocFlags::default(),
            ),
            GFP_KERNEL,
        )
        .map_err(|_| ENOMEM)?;
        let slot = blocks
            .iter()
            .next()
            .map(|b| (b.offset() / bytes) as usize)
            .ok_or(ENOMEM)?;
        let mut bitmap = [0u64; BITMAP_WORDS];
        // Bits past the chunk's pages are never free.
        for (w, word) in bitmap.iter_mut().enumerate() {
            let first = w * 64;
            if first >= self.chunk_pages {
                *word = u64::MAX;
            } else if first + 64 > self.chunk_pages {
                *word = u64::MAX << (self.chunk_pages - first);
            }
        }
        let mut chunks = self.chunks.lock();
        let entry = chunks.slots.get_mut(slot).ok_or(EINVAL)?;
        // The buddy allocator gives each range out once, so the slot is empty.
        *entry = Some(Chunk {
            _blocks: blocks,
            bitmap,
            free: self.chunk_pages,
        });
        chunks.mark(slot, self.chunk_pages);
        Ok(())
    }

    /// Frees a device page.  Never sleeps: called from MMU notifier callbacks.
    pub(crate) fn free(&self, pfn: u64) {
        let Some(index) = self.index(pfn) else {
            kernel::warn_on!(true);
            return;
        };
        let (slot, bit) = (index / self.chunk_pages, index % self.chunk_pages);
        let mut chunks = self.chunks.lock();
        let Some(Some(chunk)) = chunks.slots.get_mut(slot) else {
            drop(chunks);
            kernel::warn_on!(true);
            return;
        };
        let mask = 1u64 << (bit % 64);
        let word = &mut chunk.bitmap[bit / 64];
        if *word & mask == 0 {
            drop(chunks);
            // A double free: the logical page table and the allocator disagree.
            kernel::warn_on!(true);
            return;
        }
        *word &= !mask;
        // INVARIANT: one set bit was cleared.
        chunk.free += 1;
        let emptied = chunk.free == self.chunk_pages;
        chunks.used -= 1;
        chunks.emptied |= emptied;
        chunks.mark(slot, self.chunk_pages);
        let pool = core::mem::take(&mut chunks.owners[index]).pool;
        drop(chunks);
        if pool != 0 {
            // SAFETY: the page held a charge of one page to `pool`, with its reference, which
            // this gives back.  Uncharging never sleeps.
            unsafe {
                bindings::dmem_cgroup_uncharge(
                    pool as *mut bindings::dmem_cgroup_pool_state,
                    PAGE_SIZE as u64,
                )
            };
        }
    }

    /// The page index of `pfn`, if it is one of ours.
    fn index(&self, pfn: u64) -> Option<usize> {
        pfn.checked_sub(self.base_pfn)
            .filter(|&i| i < self.pages)
            .map(|i| i as usize)
    }

    /// Records that address space `space` maps page `pfn` at `vpn`.
    ///
    /// For a device without accessed bits, being mapped is the only sign of use GMEM has, so
    /// the page gets a second chance from the clock.  A device with them says itself whether it
    /// used the page: a page streamed through it once must not look as hot as one it keeps
    /// using, or the clock's hand, clearing every new page's bit on its way, turns a whole
    /// round and takes the hot pages whose accessed bits it cleared moments ago.
    ///
    /// A page mapped again where it already was (a device fault on it, or a driver that
    /// prefaults each job's range) keeps what the clock knows of it, and is marked used even on
    /// a device with accessed bits: the new entry has its accessed bit clear, and the device
    /// may go on using the page through a translation it cached before, which sets no bit.
    pub(crate) fn set_owner(&self, pfn: u64, space: usize, vpn: usize) {
        let vpn = vpn as u64 & VPN_MASK;
        if let Some(i) = self.index(pfn) {
            let owner = &mut self.chunks.lock().owners[i];
            if owner.space == space && owner.flags & VPN_MASK == vpn {
                owner.flags |= REFERENCED;
                return;
            }
            let referenced = if self.tracks_use { 0 } else { REFERENCED };
            owner.space = space;
            owner.flags = vpn | referenced;
        }
    }

    /// Whether page `pfn` is allocated and recorded as address space `space`'s page at `vpn`.
    pub(crate) fn owned_by(&self, pfn: u64, space: usize, vpn: usize) -> bool {
        let Some(i) = self.index(pfn) else {
            return false;
        };
        let owner = &self.chunks.lock().owners[i];
        owner.space == space && owner.flags & VPN_MASK == vpn as u64 & VPN_MASK
    }

    /// Marks page `pfn` as used again, as a mapping by a device without accessed bits does.
    #[cfg(CONFIG_GMEM_KUNIT_TEST)]
    fn touch(&self, pfn: u64) {
        if let Some(i) = self.index(pfn) {
            self.chunks.lock().owners[i].flags |= REFERENCED;
        }
    }

    /// Picks a page to evict with a clock: a page mapped since the hand last passed it gets a
    /// second chance.  `claim(victim)` runs under the lock and takes the page from its owner
    /// (false if it cannot: the page is moving).  `None` if no page could be claimed in two
    /// turns of the clock.
    pub(crate) fn pick_victim(&self, mut claim: impl FnMut(&Victim) -> bool) -> Option<Victim> {
        let mut chunks = self.chunks.lock();
        let pages = chunks.owners.len();
        for _ in 0..2 * pages {
            let i = chunks.hand;
            chunks.hand = (i + 1) % pages;
            let owner = &mut chunks.owners[i];
            if owner.space == 0 || owner.flags & EVICTING != 0 {
                continue;
            }
            if owner.flags & REFERENCED != 0 {
                owner.flags &= !REFERENCED;
                continue;
            }
            let victim = Victim {
                space: owner.space,
                vpn: (owner.flags & VPN_MASK) as usize,
                pfn: self.base_pfn + i as u64,
                pool: owner.pool,
            };
            if claim(&victim) {
                owner.flags |= EVICTING;
                return Some(victim);
            }
        }
        None
    }

    /// The clock's verdict on page `pfn`, picked and claimed, of a device that tracks use:
    /// whether it stays.  `young` is whether the device used the page since the hand last
    /// passed.
    ///
    /// A page used once and then not again goes on the next pass, as with a plain clock.  A
    /// page used on two passes in a row is active and survives one pass without use: so when
    /// a stream has made every page young at once and the hand turns a whole round clearing
    /// bits, it takes the stream's pages on its second round, not the pages the device keeps
    /// using, whose bits it cleared at the start of the first.
    pub(crate) fn keep(&self, pfn: u64, young: bool) -> bool {
        let Some(i) = self.index(pfn) else {
            return false;
        };
        let flags = &mut self.chunks.lock().owners[i].flags;
        if young {
            if *flags & SEEN != 0 {
                *flags |= ACTIVE;
            }
            *flags |= SEEN;
            return true;
        }
        let active = *flags & ACTIVE != 0;
        *flags &= !(SEEN | ACTIVE);
        if active {
            *flags |= SEEN;
        }
        active
    }

    /// Gives up the eviction of page `pfn` (it stays where it is).
    pub(crate) fn unpick(&self, pfn: u64) {
        if let Some(i) = self.index(pfn) {
            self.chunks.lock().owners[i].flags &= !EVICTING;
        }
    }

    /// Lowers (or raises, up to the memory's size) how many pages may be used.
    pub(crate) fn set_limit(&self, pages: u64) {
        self.limit.store(pages.min(self.pages), Ordering::Relaxed);
    }

    /// The page limit.
    pub(crate) fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Pages that may still be allocated (below the limit).
    pub(crate) fn free_pages(&self) -> u64 {
        self.limit().saturating_sub(self.chunks.lock().used)
    }

    /// Whether the free pages, `free` (from [`DeviceMemory::free_pages`]), just fell below the
    /// aging mark: `true` once per fall from above the re-arming mark ([`aging_marks`]), and
    /// only for a device that tracks use.  The caller then
    /// wakes the worker that ages the pages ([`DeviceMemory::take_aging`]).  Takes no lock.
    pub(crate) fn wants_aging(&self, free: u64) -> bool {
        if !self.tracks_use {
            return false;
        }
        let (mark, rearm) = aging_marks(self.limit());
        if free >= rearm {
            if self.aging.load(Ordering::Relaxed) != AGING_IDLE {
                self.aging.store(AGING_IDLE, Ordering::Relaxed);
            }
            return false;
        }
        if free >= mark {
            return false;
        }
        self.aging
            .compare_exchange(
                AGING_IDLE,
                AGING_PENDING,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Whether an aging turn of the clock is due; the caller makes it.
    pub(crate) fn take_aging(&self) -> bool {
        self.aging
            .compare_exchange(
                AGING_PENDING,
                AGING_DONE,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// The pages the memory has.  Takes no lock.
    pub(crate) fn pages(&self) -> u64 {
        self.pages
    }

    /// How much memory there is and how much is in use.
    pub(crate) fn usage(&self) -> Usage {
        Usage {
            pages: self.pages,
            used: self.chunks.lock().used,
        }
    }

    /// Bytes the buddy allocator has not given out.
    #[cfg(CONFIG_GMEM_KUNIT_TEST)]
    fn buddy_avail(&self) -> u64 {
        self.buddy.avail()
    }
}

#[cfg(CONFIG_GMEM_KUNIT_TEST)]
#[kunit_tests(gmem_devmem)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn bad_ranges_are_refused() -> Result {
        assert!(DeviceMemory::new(0, 0, false).is_err());
        assert!(DeviceMemory::new(1, MIB, false).is_err());
        assert!(DeviceMemory::new(0, MIB + 1, false).is_err());
        assert!(DeviceMemory::new(!4095u64, MIB, false).is_err());
        Ok(())
    }

    #[test]
    fn aging_is_asked_for_once_per_fill() -> Result {
        // 4 MiB, 1024 pages: the mark is 256 free pages.
        let mem = DeviceMemory::new(0, 4 * MIB, true)?;
        let wants = || mem.wants_aging(mem.free_pages());
        let mut pfns = KVec::new();
        for _ in 0..768 {
            pfns.push(mem.alloc()?, GFP_KERNEL)?;
            assert!(!wants());
        }
        assert!(!mem.take_aging());
        pfns.push(mem.alloc()?, GFP_KERNEL)?;
        assert!(wants());
        assert!(!wants());
        assert!(mem.take_aging());
        assert!(!mem.take_aging());
        // Still below the mark: no new turn.
        pfns.push(mem.alloc()?, GFP_KERNEL)?;
        assert!(!wants());
        assert!(!mem.take_aging());
        // Above it again, but short of the re-arming mark (512 free pages), as the reserve
        // worker leaves a full memory, then below: no new turn.
        for _ in 0..70 {
            mem.free(pfns.pop().ok_or(EINVAL)?);
        }
        assert!(!wants());
        for _ in 0..70 {
            pfns.push(mem.alloc()?, GFP_KERNEL)?;
            assert!(!wants());
        }
        assert!(!mem.take_aging());
        // Half the memory free again, then below the mark: a new turn.
        while pfns.len() > 500 {
            mem.free(pfns.pop().ok_or(EINVAL)?);
        }
        assert!(!wants());
        for _ in 0..268 {
            pfns.push(mem.alloc()?, GFP_KERNEL)?;
            assert!(!wants());
        }
        pfns.push(mem.alloc()?, GFP_KERNEL)?;
        assert!(wants());
        assert!(mem.take_aging());
        // A device that does not track use never ages.
        let blind = DeviceMemory::new(0, 4 * MIB, false)?;
        for _ in 0..1000 {
            blind.alloc()?;
            assert!(!blind.wants_aging(blind.free_pages()));
        }
        Ok(())
    }

    #[test]
    fn every_page_once_then_full() -> Result {
        // 5 MiB at 64 MiB: two 2 MiB chunks, the last MiB unused.
        let mem = DeviceMemory::new(64 * MIB, 5 * MIB, false)?;
        let pages = 4 * MIB / PAGE_SIZE as u64;
        assert_eq!(mem.usage().pages, pages);
        let base = 64 * MIB / PAGE_SIZE as u64;
        let mut seen = KVec::new();
        for _ in 0..pages {
            let pfn = mem.alloc()?;
            assert!(pfn >= base && pfn < base + pages);
            seen.push(pfn, GFP_KERNEL)?;
        }
        assert_eq!(mem.alloc(), Err(ENOMEM));
        assert_eq!(mem.usage().used, pages);
        seen.sort_unstable();
        for w in seen.windows(2) {
            assert!(w[0] != w[1]);
        }
        for pfn in seen.iter() {
            mem.free(*pfn);
        }
        assert_eq!(mem.usage().used, 0);
        Ok(())
    }

    #[test]
    fn empty_chunks_go_back_to_the_buddy_allocator() -> Result {
        let mem = DeviceMemory::new(0, 8 * MIB, false)?;
        let per_chunk = MAX_CHUNK_PAGES;
        let mut pfns = KVec::new();
        // Fill two chunks and one page of a third.
        for _ in 0..2 * per_chunk + 1 {
            pfns.push(mem.alloc()?, GFP_KERNEL)?;
        }
        assert_eq!(mem.buddy_avail(), 2 * MIB);
        // Empty the first chunk; it is returned at the next allocation.
        for pfn in pfns.iter().take(per_chunk) {
            mem.free(*pfn);
        }
        let again = mem.alloc()?;
        assert_eq!(mem.buddy_avail(), 4 * MIB);
        assert_eq!(mem.usage().used, (per_chunk + 2) as u64);
        mem.free(again);
        Ok(())
    }

    #[test]
    fn limit_refuses_allocations() -> Result {
        let mem = DeviceMemory::new(0, 4 * MIB, false)?;
        mem.set_limit(2);
        let a = mem.alloc()?;
        let b = mem.alloc()?;
        assert_eq!(mem.alloc(), Err(ENOMEM));
        mem.free(a);
        let c = mem.alloc()?;
        mem.set_limit(u64::MAX);
        assert_eq!(mem.limit(), mem.usage().pages);
        mem.free(b);
        mem.free(c);
        Ok(())
    }

    #[test]
    fn clock_gives_referenced_pages_a_second_chance() -> Result {
        let mem = DeviceMemory::new(0, 4 * MIB, false)?;
        let pfns = [mem.alloc()?, mem.alloc()?, mem.alloc()?];
        for (vpn, pfn) in pfns.iter().enumerate() {
            mem.set_owner(*pfn, 0x1000, 100 + vpn);
        }
        // Every page was just mapped: the first turn clears the bits, then the first page in
        // clock order goes; an unowned (free) page is never picked.
        let first = mem.pick_victim(|_| true).ok_or(EINVAL)?;
        assert_eq!(first.space, 0x1000);
        // A page being evicted is not picked again; touching a page protects it for a turn.
        mem.touch(pfns[1]);
        mem.touch(pfns[2]);
        let second = mem.pick_victim(|v| v.pfn != first.pfn).ok_or(EINVAL)?;
        assert!(second.pfn != first.pfn);
        // A claim that fails leaves the page alone.
        let mut asked = 0;
        let none = mem.pick_victim(|_| {
            asked += 1;
            false
        });
        assert!(none.is_none() && asked > 0);
        // Freed pages leave the reverse map.
        for pfn in pfns {
            mem.free(pfn);
        }
        assert!(mem.pick_victim(|_| true).is_none());
        Ok(())
    }

    #[test]
    fn with_accessed_bits_mapping_is_not_a_use() -> Result {
        for tracks_use in [false, true] {
            let mem = DeviceMemory::new(0, 4 * MIB, tracks_use)?;
            let pfns = [mem.alloc()?, mem.alloc()?];
            mem.set_owner(pfns[0], 0x1000, 100);
            mem.set_owner(pfns[1], 0x1000, 101);
            // A fault touched the first page again.  Without accessed bits both pages are
            // referenced, the hand clears both and takes the first; with them only the
            // touched page is, and the untouched one goes.
            mem.touch(pfns[0]);
            let victim = mem.pick_victim(|_| true).ok_or(EINVAL)?;
            assert_eq!(victim.pfn, pfns[usize::from(tracks_use)]);
        }
        Ok(())
    }

    #[test]
    fn a_page_mapped_again_keeps_its_history_and_is_used() -> Result {
        let mem = DeviceMemory::new(0, 4 * MIB, true)?;
        let pfns = [mem.alloc()?, mem.alloc()?];
        mem.set_owner(pfns[0], 0x1000, 100);
        mem.set_owner(pfns[1], 0x1000, 101);
        // The device used the first page on two passes in a row: it is active.
        for _ in 0..2 {
            let victim = mem.pick_victim(|v| v.pfn == pfns[0]).ok_or(EINVAL)?;
            assert!(mem.keep(victim.pfn, true));
            mem.unpick(victim.pfn);
        }
        // Mapped again (a prefaulted job): its entry's accessed bit is clear, yet it is used.
        // With the hand past the second page, the first comes next: the hand passes it and
        // takes the second, which nobody mapped again.
        mem.set_owner(pfns[0], 0x1000, 100);
        let victim = mem.pick_victim(|v| v.pfn == pfns[1]).ok_or(EINVAL)?;
        mem.unpick(victim.pfn);
        let victim = mem.pick_victim(|_| true).ok_or(EINVAL)?;
        assert_eq!(victim.pfn, pfns[1]);
        mem.unpick(victim.pfn);
        // Still active: one pass without use does not take it.
        let victim = mem.pick_victim(|v| v.pfn == pfns[0]).ok_or(EINVAL)?;
        assert!(mem.keep(victim.pfn, false));
        mem.unpick(victim.pfn);
        // Another owner's mapping of the page is a new page to the clock.
        mem.set_owner(pfns[0], 0x2000, 100);
        let victim = mem.pick_victim(|v| v.pfn == pfns[0]).ok_or(EINVAL)?;
        assert!(!mem.keep(victim.pfn, false));
        for pfn in pfns {
            mem.free(pfn);
        }
        Ok(())
    }

    #[test]
    fn small_memory_uses_a_smaller_chunk() -> Result {
        // 12 KiB: one chunk of two pages; the third page is unused.
        let mem = DeviceMemory::new(0, 3 * PAGE_SIZE as u64, false)?;
        assert_eq!(mem.usage().pages, 2);
        let a = mem.alloc()?;
        let b = mem.alloc()?;
        assert!(a != b && a < 2 && b < 2);
        assert_eq!(mem.alloc(), Err(ENOMEM));
        Ok(())
    }
}
