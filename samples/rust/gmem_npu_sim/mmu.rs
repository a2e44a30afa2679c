// SPDX-License-Identifier: GPL-2.0

//! The simulated NPU's memory system: its DRAM, a four-level page table that lives in that
//! DRAM, and a small software TLB.  [`NpuMmu`] implements GMEM's [`GmMmu`] on top of them.
//!
//! DRAM layout: the first [`PT_BYTES`] hold page-table pages; the rest is handed to GMEM.
//! A page-table entry is a `u64`: bit 0 valid, bit 1 writable, bit 5 accessed (last level only:
//! set by the walker when it fills the TLB, cleared by GMEM's eviction through
//! `pmap_clear_young`), bit 6 host (last level only: the page is in host memory), bits 12..52
//! the DRAM address of the next-level table or, in the last level, of the data page, or for a
//! host page its slot in the system aperture.
//!
//! The system aperture is how the NPU reaches host memory, as a GPU does through its GART or an
//! IOMMU: [`APERTURE_SLOTS`] slots, each holding a reference to the host page it maps, given back
//! when the entry that uses it is cleared.

use crate::check::{check_replaced, Cached, Mapped, Uses};
use core::sync::atomic::{
    AtomicPtr, AtomicU32, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use kernel::{
    bindings,
    devres::Devres,
    ffi::c_void,
    gmem::{self, GmMmu, Prot},
    io::Io,
    new_spinlock,
    page::{Page, PAGE_SIZE},
    pci,
    prelude::*,
    sync::{Arc, SpinLock},
};

/// DRAM reserved for page tables: 1024 page-table pages.
pub(crate) const PT_BYTES: u64 = 4 << 20;
const LEVELS: usize = 4;
const ENTRIES: usize = 512;
const PTE_VALID: u64 = 1 << 0;
const PTE_WRITE: u64 = 1 << 1;
const PTE_ACCESSED: u64 = 1 << 5;
const PTE_HOST: u64 = 1 << 6;
/// Host pages the NPU can map at once (32 MiB).
pub(crate) const APERTURE_SLOTS: usize = 8192;
/// Marks a translated address as a host page's (its slot and offset), not DRAM's.
const HOST_ADDR: u64 = 1 << 63;
const PTE_ADDR: u64 = ((1 << 52) - 1) & !0xfff;
/// The NPU's virtual address width.
const VA_BITS: u32 = 48;
const TLB_ENTRIES: usize = 64;

/// Splits `len` bytes at I/O address `io` into the bytes before the first 8-byte boundary, the
/// 64-bit words after it and the bytes after the last word: how DRAM is accessed, 64 bits at a
/// time (`memcpy_fromio()`, `memcpy_toio()` and `memset_io()` take 32 or 8 at a time on x86,
/// which costs a multiple under QEMU).
fn split_words(io: *mut u8, len: usize) -> (usize, usize, usize) {
    let head = io.align_offset(8).min(len);
    let words = (len - head) / 8;
    (head, words, len - head - 8 * words)
}

/// Index of `va` in the table of `level` (3 = root).
fn pt_index(va: usize, level: usize) -> usize {
    (va >> (12 + 9 * level)) & (ENTRIES - 1)
}

/// A TLB entry: a translation of one page of one page table.
#[derive(Clone, Copy, Default)]
struct TlbEntry {
    asid: u32,
    vpn: usize,
    pa: u64,
    writable: bool,
    valid: bool,
}

/// What the page-table walker and the TLB share, under one lock: the engine translates and
/// accesses memory under it, so a TLB invalidation waits for accesses in flight, as the
/// hardware's would.
struct Hw {
    tlb: [TlbEntry; TLB_ENTRIES],
    next_victim: usize,
    /// The page table (address space id) each page-table page belongs to; 0 if free.
    pt_owner: KVec<u32>,
    /// The page table (address space id) each aperture slot belongs to; 0 if free.
    slot_owner: KVec<u32>,
    /// Where the search for a free slot starts.
    next_slot: usize,
    /// What maps each DRAM page, to check what GMEM promises a driver ([`crate::check`]).
    uses: Uses,
}

impl Hw {
    /// Takes a free page-table page for `asid`; its DRAM address.
    fn alloc_pt(&mut self, asid: u32) -> Result<u64> {
        let page = self.pt_owner.iter().position(|&o| o == 0).ok_or(ENOMEM)?;
        self.pt_owner[page] = asid;
        Ok(page as u64 * PAGE_SIZE as u64)
    }

    /// The TLB's valid entries that translate to DRAM, for [`crate::check`].
    fn cached(&self) -> impl Iterator<Item = Cached> + '_ {
        self.tlb
            .iter()
            .filter(|e| e.valid && e.pa & HOST_ADDR == 0)
            .map(|e| Cached {
                asid: e.asid,
                vpn: e.vpn,
                page: Mapped {
                    pfn: e.pa >> 12,
                    writable: e.writable,
                },
            })
    }

    /// The DRAM page that last-level entry `pte` maps, if it maps one, for [`crate::check`].
    fn dram(pte: u64) -> Option<Mapped> {
        (pte & (PTE_VALID | PTE_HOST) == PTE_VALID).then_some(Mapped {
            pfn: (pte & PTE_ADDR) >> 12,
            writable: pte & PTE_WRITE != 0,
        })
    }
}

/// One device page table: its address space id and root.
pub(crate) struct Pmap {
    asid: u32,
    root: u64,
}

/// Where the NPU's DRAM is.
pub(crate) enum Dram {
    /// BAR 2 of the ivshmem device, until the device is unbound.
    Bar(Devres<pci::Bar<'static>>),
    /// Host memory standing in for DRAM, for the KUnit tests of the page table.
    #[cfg(CONFIG_GMEM_KUNIT_TEST)]
    Ram(Ram),
}

/// Host memory used as DRAM.
#[cfg(CONFIG_GMEM_KUNIT_TEST)]
pub(crate) struct Ram(KVVec<core::cell::UnsafeCell<u8>>);

// SAFETY: like the BAR it stands for, the memory is only accessed through the I/O copy
// functions, page-table entries under the hardware lock and data pages by their one owner.
#[cfg(CONFIG_GMEM_KUNIT_TEST)]
unsafe impl Sync for Ram {}

/// The NPU's MMU and DRAM.
#[pin_data]
pub(crate) struct NpuMmu {
    dram: Dram,
    pub(crate) dram_size: u64,
    /// The host page of each aperture slot, with a reference; changed under the hardware lock,
    /// read by the engine under it too.
    aperture: KVec<AtomicPtr<bindings::page>>,
    #[pin]
    hw: SpinLock<Hw>,
    next_asid: AtomicU32,
    pub(crate) tlb_invalidations: AtomicU64,
}

/// The result of a translation.
pub(crate) enum Translation {
    /// The DRAM address of the byte.
    Hit(u64),
    /// No valid mapping with the rights asked for: a translation fault.
    Miss,
}

impl NpuMmu {
    pub(crate) fn new(dram: Dram, dram_size: u64) -> Result<Arc<Self>> {
        let pt_pages = (PT_BYTES / PAGE_SIZE as u64) as usize;
        let mut pt_owner = KVec::with_capacity(pt_pages, GFP_KERNEL)?;
        for _ in 0..pt_pages {
            pt_owner.push(0, GFP_KERNEL)?;
        }
        let mut slot_owner = KVec::with_capacity(APERTURE_SLOTS, GFP_KERNEL)?;
        let mut aperture = KVec::with_capacity(APERTURE_SLOTS, GFP_KERNEL)?;
        let uses = Uses::new((dram_size / PAGE_SIZE as u64) as usize)?;
        for _ in 0..APERTURE_SLOTS {
            slot_owner.push(0, GFP_KERNEL)?;
            aperture.push(AtomicPtr::new(core::ptr::null_mut()), GFP_KERNEL)?;
        }
        Arc::pin_init(
            pin_init!(Self {
                dram,
                dram_size,
                aperture,
                hw <- new_spinlock!(Hw {
                    tlb: [TlbEntry::default(); TLB_ENTRIES],
                    next_victim: 0,
                    pt_owner,
                    slot_owner,
                    next_slot: 0,
                    uses,
                }, "gmem_npu_hw"),
                next_asid: AtomicU32::new(1),
                tlb_invalidations: AtomicU64::new(0),
            }),
            GFP_KERNEL,
        )
    }

    /// Runs `f` with the DRAM's kernel mapping; `ENODEV` once the device is unbound.
    fn with_dram<R>(&self, f: impl FnOnce(*mut u8) -> Result<R>) -> Result<R> {
        match &self.dram {
            Dram::Bar(bar) => {
                let bar = bar.try_access().ok_or(ENODEV)?;
                f(bar.addr() as *mut u8)
            }
            #[cfg(CONFIG_GMEM_KUNIT_TEST)]
            Dram::Ram(ram) => f(ram.0.as_ptr().cast_mut().cast()),
        }
    }

    /// The I/O address of DRAM byte `pa`, checked against the DRAM size for `len` bytes.
    fn io(base: *mut u8, dram_size: u64, pa: u64, len: usize) -> Result<*mut c_void> {
        match pa.checked_add(len as u64) {
            Some(end) if end <= dram_size => Ok(base.wrapping_add(pa as usize).cast()),
            _ => Err(EFAULT),
        }
    }

    /// Runs `f` with the kernel mapping of the host page behind translated address `pa` (see
    /// [`HOST_ADDR`]) and the offset of `len` bytes at `pa` in it.  Called under the hardware
    /// lock, which keeps the slot's page.
    fn with_host<R>(&self, pa: u64, len: usize, f: impl FnOnce(*mut u8) -> R) -> Result<R> {
        let slot = ((pa & !HOST_ADDR) >> 12) as usize;
        let offset = (pa & 0xfff) as usize;
        let page = self.aperture.get(slot).ok_or(EFAULT)?.load(Acquire);
        if page.is_null() || offset + len > PAGE_SIZE {
            return Err(EFAULT);
        }
        // SAFETY: the slot holds a reference to `page` until its entry is cleared, under the
        // hardware lock the caller holds; the mapping is undone below.
        let host = unsafe { bindings::kmap_local_page(page) }.cast::<u8>();
        let ret = f(host.wrapping_add(offset));
        // SAFETY: `host` came from `kmap_local_page` above, on this CPU.
        unsafe { bindings::kunmap_local(host.cast()) };
        Ok(ret)
    }

    /// Reads `buf.len()` bytes of DRAM at `pa`.
    pub(crate) fn read(&self, pa: u64, buf: &mut [u8]) -> Result {
        if pa & HOST_ADDR != 0 {
            return self.with_host(pa, buf.len(), |src| {
                // SAFETY: `src` maps `buf.len()` bytes of the host page (checked by
                // `with_host`), which `buf` does not overlap.
                unsafe { core::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) }
            });
        }
        self.with_dram(|base| {
            let io = Self::io(base, self.dram_size, pa, buf.len())?.cast::<u8>();
            let (head, words, tail) = split_words(io, buf.len());
            // SAFETY: `io` is within the mapped BAR (checked above) for `buf.len()` bytes, and
            // `buf` is writable: the head and tail bytes are copied with `memcpy_fromio()`, the
            // aligned words between them one 64-bit access each.
            unsafe {
                bindings::memcpy_fromio(buf.as_mut_ptr().cast(), io.cast(), head);
                let src = io.add(head).cast::<u64>();
                for (i, w) in buf[head..head + 8 * words].chunks_exact_mut(8).enumerate() {
                    w.copy_from_slice(&src.add(i).read_volatile().to_ne_bytes());
                }
                let at = head + 8 * words;
                bindings::memcpy_fromio(buf[at..].as_mut_ptr().cast(), io.add(at).cast(), tail);
            }
            Ok(())
        })
    }

    /// Writes `buf` to DRAM at `pa`.
    pub(crate) fn write(&self, pa: u64, buf: &[u8]) -> Result {
        if pa & HOST_ADDR != 0 {
            return self.with_host(pa, buf.len(), |dst| {
                // SAFETY: as in `read`, the other way.
                unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr(), dst, buf.len()) }
            });
        }
        self.with_dram(|base| {
            let io = Self::io(base, self.dram_size, pa, buf.len())?.cast::<u8>();
            let (head, words, tail) = split_words(io, buf.len());
            // SAFETY: as in `read`, with `buf` readable.
            unsafe {
                bindings::memcpy_toio(io.cast(), buf.as_ptr().cast(), head);
                let dst = io.add(head).cast::<u64>();
                for (i, w) in buf[head..head + 8 * words].chunks_exact(8).enumerate() {
                    let word = u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
                    dst.add(i).write_volatile(word);
                }
                let at = head + 8 * words;
                bindings::memcpy_toio(io.add(at).cast(), buf[at..].as_ptr().cast(), tail);
            }
            Ok(())
        })
    }

    /// Zeroes `len` bytes of DRAM at `pa`, 64 bits at a time where aligned.
    fn zero(&self, pa: u64, len: usize) -> Result {
        self.with_dram(|base| {
            let io = Self::io(base, self.dram_size, pa, len)?.cast::<u8>();
            let (head, words, tail) = split_words(io, len);
            // SAFETY: `io` is within the mapped BAR (checked above) for `len` bytes.
            unsafe {
                bindings::memset_io(io.cast(), 0, head);
                let dst = io.add(head).cast::<u64>();
                for i in 0..words {
                    dst.add(i).write_volatile(0);
                }
                bindings::memset_io(io.add(head + 8 * words).cast(), 0, tail);
            }
            Ok(())
        })
    }

    /// Reads the page-table entry `index` of the table at DRAM address `table`: one 64-bit
    /// access, as the NPU's walker makes.
    fn read_pte(&self, table: u64, index: usize) -> Result<u64> {
        self.with_dram(|base| {
            let io = Self::io(base, self.dram_size, table + 8 * index as u64, 8)?;
            // SAFETY: `io` is within the mapped BAR (checked above) and 8-byte aligned (tables
            // are pages).
            Ok(unsafe { bindings::readq_relaxed(io) })
        })
    }

    /// Writes page-table entry `index` of the table at `table`: one 64-bit access.
    fn write_pte(&self, table: u64, index: usize, pte: u64) -> Result {
        self.with_dram(|base| {
            let io = Self::io(base, self.dram_size, table + 8 * index as u64, 8)?;
            // SAFETY: as in `read_pte`.
            unsafe { bindings::writeq_relaxed(pte, io) };
            Ok(())
        })
    }

    /// Translates `va` for an access through `pmap`: from the TLB, or by walking the page
    /// table (and filling the TLB).  Runs under the hardware lock.
    fn translate_locked(
        &self,
        hw: &mut Hw,
        pmap: &Pmap,
        va: usize,
        write: bool,
    ) -> Result<Translation> {
        let vpn = va / PAGE_SIZE;
        let offset = (va % PAGE_SIZE) as u64;
        let hit = hw
            .tlb
            .iter_mut()
            .find(|e| e.valid && e.asid == pmap.asid && e.vpn == vpn);
        if let Some(e) = hit {
            if !write || e.writable {
                return Ok(Translation::Hit(e.pa + offset));
            }
            // A write through a read-only translation: the entry goes and the walker looks
            // again, as an MMU does on a permission fault, so that rights granted since (a
            // page mapped again writable) take effect without an invalidation.
            e.valid = false;
        }
        let Some(table) = self.leaf_locked(hw, pmap, va, false)? else {
            return Ok(Translation::Miss);
        };
        let index = pt_index(va, 0);
        let pte = self.read_pte(table, index)?;
        if pte & PTE_VALID == 0 {
            return Ok(Translation::Miss);
        }
        // The walker records the use, as an x86 or Arm MMU does on a TLB fill.
        if pte & PTE_ACCESSED == 0 {
            self.write_pte(table, index, pte | PTE_ACCESSED)?;
        }
        let host = if pte & PTE_HOST != 0 { HOST_ADDR } else { 0 };
        let entry = TlbEntry {
            asid: pmap.asid,
            vpn,
            pa: (pte & PTE_ADDR) | host,
            writable: pte & PTE_WRITE != 0,
            valid: true,
        };
        let victim = hw.next_victim;
        hw.tlb[victim] = entry;
        hw.next_victim = (victim + 1) % TLB_ENTRIES;
        Ok(if write && !entry.writable {
            Translation::Miss
        } else {
            Translation::Hit(entry.pa + offset)
        })
    }

    /// Copies a whole page between DRAM at `pa` and host page `page` (into DRAM if `to_dram`),
    /// 64 bits at a time, the width of the NPU's copy engine, eight words per step like the
    /// kernel's `copy_page()`.  (`memcpy_fromio()` and `memcpy_toio()` move 32 bits at a time
    /// on x86, which halves the bandwidth under QEMU.)
    fn copy_page(&self, pa: u64, page: &Page, to_dram: bool) -> Result {
        const STEP: usize = 8;
        self.with_dram(|base| {
            let io = Self::io(base, self.dram_size, pa, PAGE_SIZE)?.cast::<u64>();
            // SAFETY: `page` is a valid page the caller holds; the mapping is undone below.
            let host = unsafe { bindings::kmap_local_page(page.as_ptr()) }.cast::<u64>();
            let (src, dst) = if to_dram {
                (host.cast_const(), io)
            } else {
                (io.cast_const(), host)
            };
            for i in (0..PAGE_SIZE / 8).step_by(STEP) {
                let mut words = [0u64; STEP];
                // SAFETY: `io` is within the mapped BAR (checked above) and page-aligned, and
                // `host` maps a whole page: words `i..i + STEP` of each are valid and aligned.
                // Volatile, for the DRAM side: data moves as it is, as with `__raw_readq()`.
                unsafe {
                    for (k, w) in words.iter_mut().enumerate() {
                        *w = src.add(i + k).read_volatile();
                    }
                    for (k, w) in words.iter().enumerate() {
                        dst.add(i + k).write_volatile(*w);
                    }
                }
            }
            // SAFETY: `host` came from `kmap_local_page` above, on this CPU.
            unsafe { bindings::kunmap_local(host.cast()) };
            Ok(())
        })
    }

    /// The DRAM address of the last-level table that maps `va`, allocating the tables on the
    /// way if `alloc`; `None` if a level is missing and `alloc` is not set.
    fn leaf_locked(&self, hw: &mut Hw, pmap: &Pmap, va: usize, alloc: bool) -> Result<Option<u64>> {
        let mut table = pmap.root;
        for level in (1..LEVELS).rev() {
            let index = pt_index(va, level);
            let pte = self.read_pte(table, index)?;
            table = if pte & PTE_VALID != 0 {
                pte & PTE_ADDR
            } else if alloc {
                // Table pages stay until the page table is destroyed.
                let next = hw.alloc_pt(pmap.asid)?;
                self.zero(next, PAGE_SIZE)?;
                self.write_pte(table, index, next | PTE_VALID)?;
                next
            } else {
                return Ok(None);
            };
        }
        Ok(Some(table))
    }

    fn enter_locked(&self, hw: &mut Hw, pmap: &Pmap, va: usize, pfn: u64, prot: Prot) -> Result {
        // An address beyond the NPU's 48 bits (a 5-level process can map there) is one a job
        // cannot reach: the job fails with EFAULT, as for any address it may not touch.
        if va >> VA_BITS != 0 {
            return Err(EFAULT);
        }
        if pfn * PAGE_SIZE as u64 >= self.dram_size {
            return Err(EINVAL);
        }
        let table = self.leaf_locked(hw, pmap, va, true)?.ok_or(EINVAL)?;
        let write = if prot.writable() { PTE_WRITE } else { 0 };
        self.set_pte_locked(
            hw,
            pmap,
            va,
            table,
            (pfn * PAGE_SIZE as u64) | write | PTE_VALID,
        )
    }

    /// Maps `va` to host page `page` through a free aperture slot, which takes a reference to
    /// it; `ENOSPC` if none is free.
    fn enter_host_locked(
        &self,
        hw: &mut Hw,
        pmap: &Pmap,
        va: usize,
        page: &Page,
        prot: Prot,
    ) -> Result {
        if va >> VA_BITS != 0 {
            return Err(EFAULT);
        }
        let table = self.leaf_locked(hw, pmap, va, true)?.ok_or(EINVAL)?;
        let old = self.read_pte(table, pt_index(va, 0))?;
        check_replaced(pmap.asid, va, Hw::dram(old), None, hw.cached());
        // The slot the entry has now is given back first: it may be the only free one.
        self.set_pte_locked(hw, pmap, va, table, 0)?;
        let slot = (0..APERTURE_SLOTS)
            .map(|i| (hw.next_slot + i) % APERTURE_SLOTS)
            .find(|&i| hw.slot_owner[i] == 0)
            .ok_or(ENOSPC)?;
        hw.next_slot = (slot + 1) % APERTURE_SLOTS;
        hw.slot_owner[slot] = pmap.asid;
        // SAFETY: `page` is a valid page; the reference is the slot's until `put_slot`.
        unsafe { bindings::get_page(page.as_ptr()) };
        self.aperture[slot].store(page.as_ptr(), Release);
        let write = if prot.writable() { PTE_WRITE } else { 0 };
        let pte = ((slot as u64) << 12) | PTE_HOST | write | PTE_VALID;
        self.write_pte(table, pt_index(va, 0), pte)
    }

    /// Gives back aperture slot `slot` and its reference to the host page.  Translations
    /// through the slot go from the TLB too, as a GART flushes its own cache when an entry is
    /// freed: the slot may map another page next.
    fn put_slot(&self, hw: &mut Hw, slot: usize) {
        let pa = HOST_ADDR | ((slot as u64) << 12);
        for e in hw.tlb.iter_mut().filter(|e| e.valid && e.pa == pa) {
            e.valid = false;
        }
        if let Some(owner) = hw.slot_owner.get_mut(slot) {
            *owner = 0;
            let page = self.aperture[slot].swap(core::ptr::null_mut(), Release);
            if !page.is_null() {
                // SAFETY: the slot held a reference to `page` (see `enter_host_locked`).
                unsafe { bindings::put_page(page) };
            }
        }
    }

    /// Writes last-level entry `index` of `table`, giving back the aperture slot of the entry
    /// it replaces.
    fn set_pte_locked(&self, hw: &mut Hw, pmap: &Pmap, va: usize, table: u64, pte: u64) -> Result {
        let index = pt_index(va, 0);
        let old = self.read_pte(table, index)?;
        if pte & PTE_VALID != 0 {
            let new = Hw::dram(pte).map(|m| m.pfn);
            check_replaced(pmap.asid, va, Hw::dram(old), new, hw.cached());
        }
        self.write_pte(table, index, pte)?;
        hw.uses.account(pmap.asid, va, Hw::dram(old), Hw::dram(pte));
        if old & (PTE_VALID | PTE_HOST) == PTE_VALID | PTE_HOST {
            self.put_slot(hw, ((old & PTE_ADDR) >> 12) as usize);
        }
        Ok(())
    }

    /// Forgets the last-level entries under `table` of `level`, which maps from `base`, of a
    /// page table being destroyed.
    fn forget_locked(&self, hw: &mut Hw, pmap: &Pmap, table: u64, level: usize, base: usize) {
        for index in 0..ENTRIES {
            let Ok(pte) = self.read_pte(table, index) else {
                return;
            };
            if pte & PTE_VALID == 0 {
                continue;
            }
            let va = base | (index << (12 + 9 * level));
            if level == 0 {
                hw.uses.account(pmap.asid, va, Hw::dram(pte), None);
            } else {
                self.forget_locked(hw, pmap, pte & PTE_ADDR, level - 1, va);
            }
        }
    }

    /// Clears the last-level entries of `[va, va + len)`; table pages stay until the page
    /// table is destroyed.  One walk per last-level table (2 MiB).
    fn release_locked(&self, hw: &mut Hw, pmap: &Pmap, va: usize, len: usize) {
        let end = va.saturating_add(len);
        let mut at = va;
        while at < end {
            let next = (at | ((ENTRIES * PAGE_SIZE) - 1))
                .saturating_add(1)
                .min(end);
            if let Ok(Some(table)) = self.leaf_locked(hw, pmap, at, false) {
                for page in (at..next).step_by(PAGE_SIZE) {
                    let _ = self.set_pte_locked(hw, pmap, page, table, 0);
                }
            }
            at = next;
        }
    }

    /// Drops the TLB entries of `pmap` for `[va, va + len)`: one invalidation request.
    fn invalidate_locked(&self, hw: &mut Hw, pmap: &Pmap, va: usize, len: usize) {
        let (first, last) = (va / PAGE_SIZE, va.saturating_add(len).div_ceil(PAGE_SIZE));
        for e in hw.tlb.iter_mut() {
            if e.asid == pmap.asid && (first..last).contains(&e.vpn) {
                e.valid = false;
            }
        }
        self.tlb_invalidations.fetch_add(1, Relaxed);
    }

    /// Translates every `(va, write)` of `accesses` and, if all hit, runs `f` with their DRAM
    /// addresses, all under the hardware lock.  `Ok(Err(va))` names the first access that
    /// missed.
    pub(crate) fn access<const N: usize, R>(
        &self,
        pmap: &Pmap,
        accesses: [(usize, bool); N],
        f: impl FnOnce([u64; N]) -> Result<R>,
    ) -> Result<core::result::Result<R, (usize, bool)>> {
        let mut hw = self.hw.lock();
        let mut pas = [0u64; N];
        for (i, (va, write)) in accesses.into_iter().enumerate() {
            match self.translate_locked(&mut hw, pmap, va, write)? {
                Translation::Hit(pa) => pas[i] = pa,
                Translation::Miss => return Ok(Err((va, write))),
            }
        }
        Ok(Ok(f(pas)?))
    }
}

#[vtable]
impl GmMmu for NpuMmu {
    type Pmap = Pmap;

    fn peer_va_alloc_fixed(&self, _pmap: &Pmap, va: usize, len: usize) -> Result {
        // The NPU addresses the low 48 bits, all of a 4-level x86 process and the part where
        // mmap() places memory by default under 5-level paging; it reserves nothing else.
        if len == 0 || va >> VA_BITS != 0 {
            return Err(ERANGE);
        }
        Ok(())
    }

    fn peer_va_free(&self, _pmap: &Pmap, _va: usize, _len: usize) {}

    fn prepare_page(&self, pfn: u64, src: Option<&Page>) -> Result {
        let hw = self.hw.lock();
        hw.uses.check_unused(pfn, false, "fill", hw.cached());
        drop(hw);
        let pa = pfn * PAGE_SIZE as u64;
        match src {
            Some(src) => self.copy_page(pa, src, true),
            None => self.zero(pa, PAGE_SIZE),
        }
    }

    fn copy_to_host(&self, pfn: u64, dst: &Page) -> Result {
        let hw = self.hw.lock();
        hw.uses.check_unused(pfn, true, "copy out", hw.cached());
        drop(hw);
        self.copy_page(pfn * PAGE_SIZE as u64, dst, false)
    }

    fn pmap_create(&self) -> Result<Pmap> {
        let asid = self.next_asid.fetch_add(1, Relaxed);
        let root = self.hw.lock().alloc_pt(asid)?;
        self.zero(root, PAGE_SIZE)?;
        Ok(Pmap { asid, root })
    }

    fn pmap_destroy(&self, pmap: Pmap) {
        let mut hw = self.hw.lock();
        self.forget_locked(&mut hw, &pmap, pmap.root, LEVELS - 1, 0);
        for e in hw.tlb.iter_mut().filter(|e| e.asid == pmap.asid) {
            e.valid = false;
        }
        for owner in hw.pt_owner.iter_mut().filter(|o| **o == pmap.asid) {
            *owner = 0;
        }
        for slot in 0..APERTURE_SLOTS {
            if hw.slot_owner[slot] == pmap.asid {
                self.put_slot(&mut hw, slot);
            }
        }
    }

    fn pmap_enter(&self, pmap: &Pmap, va: usize, pfn: u64, prot: Prot) -> Result {
        let mut hw = self.hw.lock();
        self.enter_locked(&mut hw, pmap, va, pfn, prot)
    }

    fn pmap_enter_host(&self, pmap: &Pmap, va: usize, page: &Page, prot: Prot) -> Result {
        let mut hw = self.hw.lock();
        self.enter_host_locked(&mut hw, pmap, va, page, prot)
    }

    fn pmap_release(&self, pmap: &Pmap, va: usize, len: usize) {
        let mut hw = self.hw.lock();
        self.release_locked(&mut hw, pmap, va, len);
    }

    fn pmap_clear_young(&self, pmap: &Pmap, va: usize) -> bool {
        let mut hw = self.hw.lock();
        let Ok(Some(table)) = self.leaf_locked(&mut hw, pmap, va, false) else {
            return false;
        };
        let index = pt_index(va, 0);
        match self.read_pte(table, index) {
            Ok(pte) if pte & PTE_VALID != 0 && pte & PTE_ACCESSED != 0 => {
                // The walker sets the bit only on a TLB fill: drop the cached translation so
                // that the next use sets it again.
                let _ = self.write_pte(table, index, pte & !PTE_ACCESSED);
                let vpn = va / PAGE_SIZE;
                for e in hw.tlb.iter_mut() {
                    if e.asid == pmap.asid && e.vpn == vpn {
                        e.valid = false;
                    }
                }
                true
            }
            _ => false,
        }
    }

    fn tlb_invl_coalesced(&self, pmap: &Pmap, ranges: &[gmem::VaRange]) {
        // One invalidation request for all the ranges, as a device with a range-based
        // invalidation command would do it.
        let mut hw = self.hw.lock();
        for e in hw.tlb.iter_mut().filter(|e| e.asid == pmap.asid) {
            let va = e.vpn * PAGE_SIZE;
            if ranges.iter().any(|r| va >= r.start && va - r.start < r.len) {
                e.valid = false;
            }
        }
        drop(hw);
        self.tlb_invalidations.fetch_add(1, Relaxed);
    }

    fn tlb_invl(&self, pmap: &Pmap, va: usize, len: usize) {
        let mut hw = self.hw.lock();
        self.invalidate_locked(&mut hw, pmap, va, len);
    }

    fn peer_map(&self, pmap: &Pmap, va: usize, moves: &[gmem::Move<'_>], prot: Prot) -> Result {
        // The copy engine fills the pages; then one page-table update maps the whole run.
        for m in moves {
            self.prepare_page(m.pfn(), m.page().as_deref())?;
        }
        let mut hw = self.hw.lock();
        for (i, m) in moves.iter().enumerate() {
            self.enter_locked(&mut hw, pmap, va + i * PAGE_SIZE, m.pfn(), prot)?;
        }
        Ok(())
    }

    fn peer_unmap(&self, pmap: &Pmap, va: usize, moves: &[gmem::Move<'_>]) -> Result {
        // One page-table update and one invalidation for the run, then the copy engine.
        let len = moves.len() * PAGE_SIZE;
        let mut hw = self.hw.lock();
        self.release_locked(&mut hw, pmap, va, len);
        self.invalidate_locked(&mut hw, pmap, va, len);
        drop(hw);
        for m in moves {
            if let Some(dst) = m.page() {
                self.copy_to_host(m.pfn(), &dst)?;
            }
        }
        Ok(())
    }
}

#[cfg(CONFIG_GMEM_KUNIT_TEST)]
#[kunit_tests(gmem_npu_sim_mmu)]
mod tests {
    use super::*;
    use core::cell::UnsafeCell;

    /// Page-table pages plus 16 data pages, in host memory.
    fn npu() -> Result<Arc<NpuMmu>> {
        let size = PT_BYTES as usize + 16 * PAGE_SIZE;
        let mut ram = KVVec::with_capacity(size, GFP_KERNEL)?;
        for b in &mut ram.spare_capacity_mut()[..size] {
            b.write(UnsafeCell::new(0xa5));
        }
        // SAFETY: the first `size` elements were just initialised.
        unsafe { ram.inc_len(size) };
        NpuMmu::new(Dram::Ram(Ram(ram)), size as u64)
    }

    const DATA: u64 = PT_BYTES / PAGE_SIZE as u64;
    const VA: usize = 0x7f12_3456_7000;

    fn translate(npu: &NpuMmu, pmap: &Pmap, va: usize, write: bool) -> Option<u64> {
        match npu.access(pmap, [(va, write)], |[pa]| Ok(pa)) {
            Ok(Ok(pa)) => Some(pa),
            _ => None,
        }
    }

    fn pt_pages(npu: &NpuMmu) -> usize {
        npu.hw.lock().pt_owner.iter().filter(|o| **o != 0).count()
    }

    /// How many entries map DRAM page `pfn`, and how many of them writable.
    fn uses(npu: &NpuMmu, pfn: u64) -> (u16, u16) {
        let u = npu.hw.lock().uses.of(pfn);
        (u.maps, u.writable)
    }

    /// [`Uses::users`] of `pfn` with the TLB as it is.
    fn users(npu: &NpuMmu, pfn: u64, writes_only: bool) -> (u16, usize) {
        let hw = npu.hw.lock();
        hw.uses.users(pfn, writes_only, hw.cached())
    }

    #[test]
    fn users_of_a_page_are_found() -> Result {
        let npu = npu()?;
        let pmap = npu.pmap_create()?;
        let page = DATA + 6;
        npu.pmap_enter(&pmap, VA, page, Prot::READ)?;
        assert_eq!(users(&npu, page, false), (1, 0));
        // Only a writable mapping stops a copy out.
        assert_eq!(users(&npu, page, true), (0, 0));
        assert!(translate(&npu, &pmap, VA, false).is_some());
        assert_eq!(users(&npu, page, false), (1, 1));
        // Released but not invalidated: still in the TLB.
        npu.pmap_release(&pmap, VA, PAGE_SIZE);
        assert_eq!(users(&npu, page, false), (0, 1));
        npu.tlb_invl(&pmap, VA, PAGE_SIZE);
        assert_eq!(users(&npu, page, false), (0, 0));
        npu.pmap_destroy(pmap);
        Ok(())
    }

    #[test]
    fn a_write_through_a_read_only_translation_walks_again() -> Result {
        let npu = npu()?;
        let pmap = npu.pmap_create()?;
        npu.pmap_enter(&pmap, VA, DATA + 2, Prot::READ)?;
        let page = (DATA + 2) * PAGE_SIZE as u64;
        assert_eq!(translate(&npu, &pmap, VA, false), Some(page));
        assert_eq!(translate(&npu, &pmap, VA, true), None);
        // Mapped again writable: the next write sees it, with no invalidation.
        npu.pmap_enter(&pmap, VA, DATA + 2, Prot::WRITE)?;
        assert_eq!(translate(&npu, &pmap, VA, true), Some(page));
        assert_eq!(npu.tlb_invalidations.load(Relaxed), 0);
        npu.pmap_destroy(pmap);
        Ok(())
    }

    #[test]
    fn replacing_a_cached_mapping_is_seen() -> Result {
        let npu = npu()?;
        let pmap = npu.pmap_create()?;
        npu.pmap_enter(&pmap, VA, DATA + 1, Prot::READ)?;
        let old = Hw::dram(((DATA + 1) * PAGE_SIZE as u64) | PTE_VALID);
        let asid = pmap.asid;
        let seen = |va: usize, asid: u32, new: Option<u64>| {
            let hw = npu.hw.lock();
            crate::check::replaces_cached(asid, va, old, new, hw.cached())
        };
        // Not cached yet: nothing to see.
        assert!(!seen(VA, asid, Some(DATA + 2)));
        assert!(translate(&npu, &pmap, VA, false).is_some());
        // By another DRAM page, or by a host page.
        assert!(seen(VA, asid, Some(DATA + 2)));
        assert!(seen(VA, asid, None));
        // The same page (other rights), another address or another table: no.
        assert!(!seen(VA, asid, Some(DATA + 1)));
        assert!(!seen(VA + PAGE_SIZE, asid, Some(DATA + 2)));
        assert!(!seen(VA, asid + 1, Some(DATA + 2)));
        npu.pmap_destroy(pmap);
        Ok(())
    }

    #[test]
    fn mappings_of_each_page_are_counted() -> Result {
        let npu = npu()?;
        let pmap = npu.pmap_create()?;
        npu.pmap_enter(&pmap, VA, DATA + 3, Prot::WRITE)?;
        npu.pmap_enter(&pmap, VA + PAGE_SIZE, DATA + 3, Prot::READ)?;
        assert_eq!(uses(&npu, DATA + 3), (2, 1));
        // Replaced: the old page loses the entry.
        npu.pmap_enter(&pmap, VA, DATA + 4, Prot::READ)?;
        assert_eq!(
            (uses(&npu, DATA + 3), uses(&npu, DATA + 4)),
            ((1, 0), (1, 0))
        );
        npu.pmap_release(&pmap, VA + PAGE_SIZE, PAGE_SIZE);
        assert_eq!(uses(&npu, DATA + 3), (0, 0));
        // A host page is not DRAM's: the DRAM page it replaces is no longer mapped.
        let host = Page::alloc_page(GFP_KERNEL)?;
        npu.pmap_enter_host(&pmap, VA, &host, Prot::WRITE)?;
        assert_eq!(uses(&npu, DATA + 4), (0, 0));
        // What a destroyed page table mapped is mapped no more.
        npu.pmap_enter(&pmap, VA + 7 * (ENTRIES * PAGE_SIZE), DATA + 5, Prot::WRITE)?;
        npu.pmap_destroy(pmap);
        assert_eq!(uses(&npu, DATA + 5), (0, 0));
        Ok(())
    }

    #[test]
    fn enter_translate_release() -> Result {
        let npu = npu()?;
        let pmap = npu.pmap_create()?;
        assert_eq!(translate(&npu, &pmap, VA, false), None);
        npu.pmap_enter(&pmap, VA, DATA + 3, Prot::WRITE)?;
        let page = (DATA + 3) * PAGE_SIZE as u64;
        assert_eq!(translate(&npu, &pmap, VA + 0x10, true), Some(page + 0x10));
        // Root, and one table page for each of the three lower levels.
        assert_eq!(pt_pages(&npu), 4);
        npu.pmap_release(&pmap, VA, PAGE_SIZE);
        // The TLB still holds the translation until it is invalidated: that is why GMEM
        // invalidates after every release.
        assert_eq!(translate(&npu, &pmap, VA, false), Some(page));
        npu.tlb_invl(&pmap, VA, PAGE_SIZE);
        assert_eq!(translate(&npu, &pmap, VA, false), None);
        assert_eq!(npu.tlb_invalidations.load(Relaxed), 1);
        npu.pmap_destroy(pmap);
        assert_eq!(pt_pages(&npu), 0);
        Ok(())
    }

    #[test]
    fn accessed_bit_follows_use() -> Result {
        let npu = npu()?;
        let pmap = npu.pmap_create()?;
        // Not mapped: never young.
        assert!(!npu.pmap_clear_young(&pmap, VA));
        npu.pmap_enter(&pmap, VA, DATA, Prot::WRITE)?;
        npu.pmap_enter(&pmap, VA + PAGE_SIZE, DATA + 1, Prot::WRITE)?;
        // Mapped but unused: the bit is set by the walker, not by pmap_enter.
        assert!(!npu.pmap_clear_young(&pmap, VA));
        assert!(translate(&npu, &pmap, VA, false).is_some());
        assert!(npu.pmap_clear_young(&pmap, VA));
        assert!(!npu.pmap_clear_young(&pmap, VA));
        assert!(!npu.pmap_clear_young(&pmap, VA + PAGE_SIZE));
        // Clearing dropped the cached translation: the next use walks and sets the bit again.
        assert!(translate(&npu, &pmap, VA + 8, true).is_some());
        assert!(npu.pmap_clear_young(&pmap, VA));
        npu.pmap_release(&pmap, VA, 2 * PAGE_SIZE);
        npu.tlb_invl(&pmap, VA, 2 * PAGE_SIZE);
        npu.pmap_destroy(pmap);
        Ok(())
    }

    #[test]
    fn read_only_mapping_faults_on_write() -> Result {
        let npu = npu()?;
        let pmap = npu.pmap_create()?;
        npu.pmap_enter(&pmap, VA, DATA, Prot::READ)?;
        assert!(translate(&npu, &pmap, VA, false).is_some());
        assert_eq!(translate(&npu, &pmap, VA, true), None);
        // Upgrading the mapping (after an invalidation, as GMEM does) allows the write.
        npu.pmap_enter(&pmap, VA, DATA, Prot::WRITE)?;
        npu.tlb_invl(&pmap, VA, PAGE_SIZE);
        assert!(translate(&npu, &pmap, VA, true).is_some());
        npu.pmap_destroy(pmap);
        Ok(())
    }

    #[test]
    fn page_tables_are_separate() -> Result {
        let npu = npu()?;
        let (a, b) = (npu.pmap_create()?, npu.pmap_create()?);
        npu.pmap_enter(&a, VA, DATA + 1, Prot::WRITE)?;
        npu.pmap_enter(&b, VA, DATA + 2, Prot::WRITE)?;
        let page = |pfn: u64| Some(pfn * PAGE_SIZE as u64);
        assert_eq!(translate(&npu, &a, VA, false), page(DATA + 1));
        assert_eq!(translate(&npu, &b, VA, false), page(DATA + 2));
        npu.tlb_invl(&a, 0, usize::MAX);
        npu.pmap_destroy(a);
        assert_eq!(translate(&npu, &b, VA, false), page(DATA + 2));
        npu.pmap_destroy(b);
        Ok(())
    }

    #[test]
    fn bad_mappings_are_refused() -> Result {
        let npu = npu()?;
        let pmap = npu.pmap_create()?;
        assert_eq!(
            npu.pmap_enter(&pmap, 1 << VA_BITS, DATA, Prot::READ),
            Err(EFAULT)
        );
        assert_eq!(
            npu.pmap_enter(&pmap, VA, DATA + 16, Prot::READ),
            Err(EINVAL)
        );
        assert_eq!(
            npu.peer_va_alloc_fixed(&pmap, 1 << VA_BITS, PAGE_SIZE),
            Err(ERANGE)
        );
        assert_eq!(npu.peer_va_alloc_fixed(&pmap, PAGE_SIZE, 1 << 56), Ok(()));
        npu.pmap_destroy(pmap);
        Ok(())
    }

    #[test]
    fn pages_copy_in_and_out() -> Result {
        let npu = npu()?;
        let host = Page::alloc_page(GFP_KERNEL)?;
        let pattern = [0x3cu8; 64];
        for offset in (0..PAGE_SIZE).step_by(pattern.len()) {
            // SAFETY: `pattern` is valid for reads of its length.
            unsafe { host.write_raw(pattern.as_ptr(), offset, pattern.len())? };
        }
        npu.prepare_page(DATA + 5, Some(&host))?;
        let mut word = [0u8; 4];
        npu.read((DATA + 5) * PAGE_SIZE as u64 + 100, &mut word)?;
        assert_eq!(word, [0x3c; 4]);
        // Zero-fill, then copy out over the host page.
        npu.prepare_page(DATA + 5, None)?;
        npu.copy_to_host(DATA + 5, &host)?;
        let mut back = [0xffu8; 64];
        // SAFETY: `back` is valid for writes of its length.
        unsafe { host.read_raw(back.as_mut_ptr(), PAGE_SIZE - 64, 64)? };
        assert_eq!(back, [0u8; 64]);
        // Outside the DRAM.
        assert_eq!(npu.prepare_page(DATA + 16, None), Err(EFAULT));
        Ok(())
    }

    /// Aperture slots in use (each holds a reference to its page).
    fn slots(npu: &NpuMmu) -> usize {
        npu.hw.lock().slot_owner.iter().filter(|&&o| o != 0).count()
    }

    #[test]
    fn host_pages_are_reached_through_the_aperture() -> Result {
        let npu = npu()?;
        let pmap = npu.pmap_create()?;
        let page = Page::alloc_page(GFP_KERNEL | __GFP_ZERO)?;
        npu.pmap_enter_host(&pmap, VA, &page, Prot::WRITE)?;
        assert_eq!(slots(&npu), 1);
        let pa = translate(&npu, &pmap, VA + 8, true).ok_or(EFAULT)?;
        assert_ne!(pa & HOST_ADDR, 0);
        npu.write(pa, &0x1234_5678u32.to_ne_bytes())?;
        let mut word = [0u8; 4];
        // SAFETY: `page` is ours; the NPU wrote bytes 8..12 of it.
        unsafe {
            let host = bindings::kmap_local_page(page.as_ptr()).cast::<u8>();
            core::ptr::copy_nonoverlapping(host.add(8), word.as_mut_ptr(), 4);
            bindings::kunmap_local(host.cast());
        }
        assert_eq!(u32::from_ne_bytes(word), 0x1234_5678);
        let mut back = [0u8; 4];
        npu.read(pa, &mut back)?;
        assert_eq!(back, word);
        // A device page over it gives the slot (and the reference) back, and the slot's
        // translation leaves the TLB: the slot may map another page next.
        npu.pmap_enter(&pmap, VA, DATA, Prot::WRITE)?;
        assert_eq!(slots(&npu), 0);
        assert_eq!(
            translate(&npu, &pmap, VA, false),
            Some(DATA * PAGE_SIZE as u64)
        );
        npu.pmap_enter_host(&pmap, VA + PAGE_SIZE, &page, Prot::READ)?;
        assert_eq!(translate(&npu, &pmap, VA + PAGE_SIZE, true), None);
        npu.pmap_release(&pmap, VA, 2 * PAGE_SIZE);
        assert_eq!(slots(&npu), 0);
        npu.pmap_enter_host(&pmap, VA, &page, Prot::READ)?;
        npu.pmap_destroy(pmap);
        assert_eq!(slots(&npu), 0);
        Ok(())
    }

    #[test]
    fn a_run_moves_in_one_operation() -> Result {
        let npu = npu()?;
        let pmap = npu.pmap_create()?;
        let host = Page::alloc_page(GFP_KERNEL)?;
        let word = 0x1234_5678u32.to_le_bytes();
        // SAFETY: `word` is valid for reads of its length.
        unsafe { host.write_raw(word.as_ptr(), 8, word.len())? };
        // Three pages: the middle one is zero-filled.
        let moves = [
            gmem::Move::new(DATA + 1, Some(&host)),
            gmem::Move::new(DATA + 2, None),
            gmem::Move::new(DATA + 3, Some(&host)),
        ];
        npu.peer_map(&pmap, VA, &moves, Prot::WRITE)?;
        let pa = |i: u64| Some((DATA + 1 + i) * PAGE_SIZE as u64);
        for i in 0..3 {
            assert_eq!(
                translate(&npu, &pmap, VA + i * PAGE_SIZE, true),
                pa(i as u64)
            );
        }
        let mut b = [0u8; 4];
        npu.read((DATA + 3) * PAGE_SIZE as u64 + 8, &mut b)?;
        assert_eq!(b, word);
        npu.read((DATA + 2) * PAGE_SIZE as u64 + 8, &mut b)?;
        assert_eq!(b, [0; 4]);
        // Back: the run is unmapped with one invalidation, and copied out.
        let before = npu.tlb_invalidations.load(Relaxed);
        let out = Page::alloc_page(GFP_KERNEL | __GFP_ZERO)?;
        let back = [
            gmem::Move::new(DATA + 1, None),
            gmem::Move::new(DATA + 2, None),
            gmem::Move::new(DATA + 3, Some(&out)),
        ];
        npu.peer_unmap(&pmap, VA, &back)?;
        assert_eq!(npu.tlb_invalidations.load(Relaxed), before + 1);
        for i in 0..3 {
            assert_eq!(translate(&npu, &pmap, VA + i * PAGE_SIZE, false), None);
        }
        // SAFETY: `b` is valid for writes of its length.
        unsafe { out.read_raw(b.as_mut_ptr(), 8, b.len())? };
        assert_eq!(b, word);
        npu.pmap_destroy(pmap);
        Ok(())
    }
}
