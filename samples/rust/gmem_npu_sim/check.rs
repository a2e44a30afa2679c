// SPDX-License-Identifier: GPL-2.0

//! What the simulated NPU checks about the GMEM core, as a test device: the promises the core
//! makes to a driver about the pages it hands over.  A broken promise is a `pr_err!` naming
//! the page, and a WARN, which fails every test that sees it.
//!
//! - A page the core fills (`prepare_page`, `peer_map`) is mapped nowhere and cached in no
//!   TLB entry: otherwise an engine could see another page's data, or another process's.
//! - A page it copies out (`copy_to_host`, `peer_unmap`) is mapped writable nowhere: a write
//!   after the copy would be lost.
//! - A mapping it replaces (`pmap_enter`, `pmap_enter_host` over a valid entry) is not cached
//!   in the TLB: nothing would invalidate it, and the engines would go on using the old page.
//!
//! None of this is the MMU's work; [`crate::mmu`] only tells [`Uses`] what its page-table
//! entries and TLB hold.

use kernel::prelude::*;

/// A DRAM page that a last-level entry maps, and whether writable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mapped {
    pub(crate) pfn: u64,
    pub(crate) writable: bool,
}

/// A valid TLB entry that translates to DRAM.
pub(crate) struct Cached {
    pub(crate) asid: u32,
    pub(crate) vpn: usize,
    pub(crate) page: Mapped,
}

/// The last-level entries that map one DRAM page.
#[derive(Clone, Copy, Default)]
pub(crate) struct PageUse {
    pub(crate) maps: u16,
    pub(crate) writable: u16,
    /// The page table and address of the last entry that mapped it.
    asid: u32,
    va: usize,
}

/// What maps each page of the DRAM.
pub(crate) struct Uses(KVVec<PageUse>);

impl Uses {
    /// Nothing mapped yet in a DRAM of `pages` pages.
    pub(crate) fn new(pages: usize) -> Result<Self> {
        Ok(Self(KVVec::from_elem(
            PageUse::default(),
            pages,
            GFP_KERNEL,
        )?))
    }

    /// What maps page `pfn`.
    pub(crate) fn of(&self, pfn: u64) -> PageUse {
        self.0.get(pfn as usize).copied().unwrap_or_default()
    }

    /// Counts a last-level entry of `asid` at `va` that mapped `old` and maps `new` now.
    pub(crate) fn account(
        &mut self,
        asid: u32,
        va: usize,
        old: Option<Mapped>,
        new: Option<Mapped>,
    ) {
        if let Some(m) = old {
            if let Some(u) = self.0.get_mut(m.pfn as usize) {
                u.maps = u.maps.saturating_sub(1);
                if m.writable {
                    u.writable = u.writable.saturating_sub(1);
                }
            }
        }
        if let Some(m) = new {
            if let Some(u) = self.0.get_mut(m.pfn as usize) {
                u.maps = u.maps.saturating_add(1);
                if m.writable {
                    u.writable = u.writable.saturating_add(1);
                }
                u.asid = asid;
                u.va = va;
            }
        }
    }

    /// How many entries map page `pfn` (writable ones only, with `writes_only`), and how many
    /// of the TLB's entries `cached` hold it (writable ones only).
    pub(crate) fn users(
        &self,
        pfn: u64,
        writes_only: bool,
        cached: impl Iterator<Item = Cached>,
    ) -> (u16, usize) {
        let u = self.of(pfn);
        let maps = if writes_only { u.writable } else { u.maps };
        let held = cached
            .filter(|c| c.page.pfn == pfn && (c.page.writable || !writes_only))
            .count();
        (maps, held)
    }

    /// Warns if page `pfn`, about to be filled (or, with `writes_only`, copied out), is
    /// mapped (writable) or cached in the TLB.
    pub(crate) fn check_unused(
        &self,
        pfn: u64,
        writes_only: bool,
        what: &str,
        cached: impl Iterator<Item = Cached>,
    ) {
        let (maps, held) = self.users(pfn, writes_only, cached);
        if maps != 0 || held != 0 {
            let u = self.of(pfn);
            pr_err!(
                "{what} of page {pfn:#x}: {maps} mappings (last {:#x} of table {}), {held} TLB entries\n",
                u.va,
                u.asid
            );
            kernel::warn_on!(true);
        }
    }
}

/// Whether replacing the entry of `asid` at `va`, which mapped `old`, by one that maps DRAM
/// page `new` (`None`: a host page) leaves `old` cached in the TLB's entries `cached`.
pub(crate) fn replaces_cached(
    asid: u32,
    va: usize,
    old: Option<Mapped>,
    new: Option<u64>,
    mut cached: impl Iterator<Item = Cached>,
) -> bool {
    let Some(old) = old.filter(|o| Some(o.pfn) != new) else {
        return false;
    };
    let vpn = va / kernel::page::PAGE_SIZE;
    cached.any(|c| c.asid == asid && c.vpn == vpn && c.page.pfn == old.pfn)
}

/// Reports a mapping the TLB caches that is replaced (see [`replaces_cached`]), with a WARN.
pub(crate) fn check_replaced(
    asid: u32,
    va: usize,
    old: Option<Mapped>,
    new: Option<u64>,
    cached: impl Iterator<Item = Cached>,
) {
    if let Some(o) = old.filter(|_| replaces_cached(asid, va, old, new, cached)) {
        pr_err!(
            "mapping of {va:#x} in table {asid} replaced while the TLB caches page {:#x}\n",
            o.pfn
        );
        kernel::warn_on!(true);
    }
}
