// SPDX-License-Identifier: GPL-2.0

//! `hmadvise(hnid, start, len, advice)`: where the pages of a peer-shared
//! range should live.
//!
//! The arguments are checked completely before anything is done, so a call
//! that fails leaves the address space as it was.  The checks, in order:
//! the advice, the alignment of `start`, `start + len` overflowing, the
//! node, and finally (against the address space) that every page of the
//! range is mapped and peer-shared.  When a range has both a hole and a
//! VMA that is not peer-shared, the one at the lower address decides the
//! error (`ENOMEM` or `EINVAL`).

use crate::{
    address_space::{cpu_fault_in, AddressSpace},
    device::{hnid_registered, DeviceOps},
    lpt::{DeviceId, Residency},
    migrate::park_home,
    policy::{device_bit, Attrs, Node},
};
use kernel::{
    bindings, current,
    ffi::c_int,
    mm::{
        virt::{flags, VmaRef},
        MmWithUser, MmapReadGuard,
    },
    page::PAGE_SIZE,
    prelude::*,
};

/// An advice `hmadvise(2)` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Advice {
    /// `MADV_PREFETCH`: move every page of the range to the node (or, for
    /// every node, to its preferred location).
    Prefetch,
    /// `MADV_DONTNEED`: drop the pages of the range held by the node (or by
    /// every node), so that the next access from anywhere reads zeros.
    DontNeed,
    /// `MADV_PREFERRED_LOCATION`: the pages should live on the node.
    Prefer,
    /// `MADV_NO_PREFERRED_LOCATION`: forget it (only where it is the node).
    NoPrefer,
    /// `MADV_PIN`: keep the pages on the device, never evicted.
    Pin,
    /// `MADV_UNPIN`: let them be evicted again (only where pinned to the
    /// node).
    Unpin,
    /// `MADV_ACCESSED_BY`: the device maps the pages where they are (in
    /// host memory) instead of moving them.
    AccessedBy,
    /// `MADV_NO_ACCESSED_BY`: it moves them again (only the node's, or
    /// every device's).
    NoAccessedBy,
    /// `MADV_READ_MOSTLY`: a device that reads a page gets a read-only
    /// copy, and the page stays home; a write drops every copy.
    ReadMostly,
    /// `MADV_NO_READ_MOSTLY`: one location per page again.
    NoReadMostly,
}

impl Advice {
    fn from_raw(advice: c_int) -> Result<Self> {
        match u32::try_from(advice) {
            Ok(bindings::MADV_PREFETCH) => Ok(Self::Prefetch),
            Ok(bindings::MADV_DONTNEED) => Ok(Self::DontNeed),
            Ok(bindings::MADV_PREFERRED_LOCATION) => Ok(Self::Prefer),
            Ok(bindings::MADV_NO_PREFERRED_LOCATION) => Ok(Self::NoPrefer),
            Ok(bindings::MADV_PIN) => Ok(Self::Pin),
            Ok(bindings::MADV_UNPIN) => Ok(Self::Unpin),
            Ok(bindings::MADV_ACCESSED_BY) => Ok(Self::AccessedBy),
            Ok(bindings::MADV_NO_ACCESSED_BY) => Ok(Self::NoAccessedBy),
            Ok(bindings::MADV_READ_MOSTLY) => Ok(Self::ReadMostly),
            Ok(bindings::MADV_NO_READ_MOSTLY) => Ok(Self::NoReadMostly),
            _ => Err(EINVAL),
        }
    }

    /// Whether the advice takes `GM_NODE_ALL`.
    fn takes_every_node(self) -> bool {
        !matches!(self, Self::Prefer | Self::Pin | Self::AccessedBy)
    }

    /// Whether the advice takes one node: all but read duplication, which
    /// is about every device at once.
    fn takes_a_node(self) -> bool {
        !matches!(self, Self::ReadMostly | Self::NoReadMostly)
    }
}

/// The node an advice is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// One node: an online host NUMA node or a device node.
    Node(c_int),
    /// Every node (`GM_NODE_ALL`); not for [`Advice::Prefer`],
    /// [`Advice::Pin`] and [`Advice::AccessedBy`].
    All,
}

/// A checked `hmadvise(2)` request over a non-empty, page-aligned range.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) target: Target,
    pub(crate) start: usize,
    /// Exclusive end; `start < end`.
    pub(crate) end: usize,
    pub(crate) advice: Advice,
}

impl Request {
    /// Checks the arguments that do not depend on the address space.
    ///
    /// `node_valid` says whether a node id names an online host node or a
    /// registered device node.  Returns `Ok(None)` for an empty range.
    pub(crate) fn parse(
        hnid: c_int,
        start: usize,
        len: usize,
        advice: c_int,
        node_valid: impl Fn(c_int) -> bool,
    ) -> Result<Option<Self>> {
        let advice = Advice::from_raw(advice)?;
        if start % PAGE_SIZE != 0 {
            return Err(EINVAL);
        }
        // Like madvise(), a length that is not a multiple of the page size
        // covers the last partial page.
        let len = len.checked_next_multiple_of(PAGE_SIZE).ok_or(EINVAL)?;
        let end = start.checked_add(len).ok_or(EINVAL)?;
        let target = match hnid {
            bindings::GM_NODE_ALL if advice.takes_every_node() => Target::All,
            nid if nid >= 0 && advice.takes_a_node() && node_valid(nid) => Target::Node(nid),
            _ => return Err(EINVAL),
        };
        if start == end {
            return Ok(None);
        }
        Ok(Some(Self {
            target,
            start,
            end,
            advice,
        }))
    }

    /// Carries the request out in `mm`.
    ///
    /// Every page of the range must be mapped (`ENOMEM` otherwise, like
    /// madvise()) and peer-shared (`EINVAL` otherwise); nothing is done
    /// unless the whole range passes.
    fn apply(&self, mm: &MmWithUser) -> Result {
        let mmap = mm.mmap_read_lock();
        self.for_each_vma(&mmap, |vma, _, _| {
            if vma.flags() & flags::PEER_SHARED == 0 {
                return Err(EINVAL);
            }
            Ok(())
        })?;
        // SAFETY: `mm` has a user and its mmap lock is held.
        let this = unsafe { AddressSpace::of(mm.as_raw()) };
        // A device node must be attached to this process.
        let device = match self.target {
            Target::Node(n) if !host_node_online(n) => {
                let id = DeviceId::try_from(n).map_err(|_| EINVAL)?;
                Some(this.and_then(|this| this.devices.get(id)).ok_or(EINVAL)?)
            }
            _ => None,
        };
        let (first, last) = (self.start / PAGE_SIZE, self.end / PAGE_SIZE);
        match (self.advice, device) {
            (
                Advice::Prefer
                | Advice::NoPrefer
                | Advice::Unpin
                | Advice::ReadMostly
                | Advice::NoReadMostly,
                _,
            ) => self.set_attrs(this.ok_or(EINVAL)?, None),
            // Pinned first, so that no eviction takes the pages as they arrive, then moved.
            (Advice::Pin, Some(device)) => {
                self.set_attrs(this.ok_or(EINVAL)?, Some(&*device))?;
                drop(mmap);
                device.prefetch(self.start, self.end)
            }
            // Pins are for devices.
            (Advice::Pin, None) => Err(EINVAL),
            // For a device that can map host pages.
            (Advice::AccessedBy, Some(device)) if device.maps_host() => {
                self.set_attrs(this.ok_or(EINVAL)?, Some(&*device))
            }
            (Advice::AccessedBy, _) => Err(EINVAL),
            // The device's mappings in place go: its next access moves the pages.
            (Advice::NoAccessedBy, device) => {
                let this = this.ok_or(EINVAL)?;
                self.set_attrs(this, None)?;
                let only = device.map(|d| d.id());
                this.unmap_in_place(self.start, self.end, only, true);
                Ok(())
            }
            // Every page to its preferred location: a prefetch per run of pages that has one.
            (Advice::Prefetch, None) if self.target == Target::All => {
                let Some(this) = this else {
                    return Ok(());
                };
                let mut runs = KVec::new();
                this.policy.for_each_run(first, last, |run| {
                    if let Some(node) = run.attrs.preferred {
                        runs.push((run.first, run.end, node), GFP_KERNEL)?;
                    }
                    Ok(())
                })?;
                drop(mmap);
                for (a, b, node) in runs {
                    let request = Request {
                        target: Target::Node(node.into()),
                        start: a * PAGE_SIZE,
                        end: b * PAGE_SIZE,
                        advice: Advice::Prefetch,
                    };
                    match request.apply(mm) {
                        // A device that is not attached (to a child of fork): the pages stay.
                        Err(e) if e == EINVAL => {}
                        done => done?,
                    }
                }
                Ok(())
            }
            // To a device: the device faults the whole range in, without the lock (a device
            // fault takes it itself).  Pages beyond what the device may hold push earlier
            // ones out: the end of the range stays on the device.
            (Advice::Prefetch, Some(device)) => {
                drop(mmap);
                device.prefetch(self.start, self.end)
            }
            // To a host node: device-resident and parked pages are faulted back into the
            // CPU page table, which copies them home.  Host pages stay where they are (host
            // nodes are one tier here).
            (Advice::Prefetch, None) => {
                let Some(this) = this else {
                    return Ok(());
                };
                // Device pages are copied out a run at a time and mapped in the CPU page
                // table; what is parked (evicted without the owner's mmap lock) is faulted
                // in after.
                park_home(this, Some(&mmap), first, last)?;
                let mut home = KVec::new();
                let mut pushed = Ok(());
                this.lpt.for_each_away_page(first, last, |vpn| {
                    if pushed.is_ok() {
                        pushed = home.push(vpn * PAGE_SIZE, GFP_KERNEL).map_err(Error::from);
                    }
                });
                pushed?;
                for (i, addr) in home.into_iter().enumerate() {
                    // After some progress, like a device prefetch (see `crate::fault`).
                    if i > 0 && i % 16 == 0 && kernel::current!().signal_pending() {
                        return Err(ERESTARTSYS);
                    }
                    // SAFETY: as above.
                    unsafe { cpu_fault_in(mm.as_raw(), addr) }?;
                }
                Ok(())
            }
            // On one device: its pages of the range go back to its allocator at once.
            (Advice::DontNeed, Some(device)) => {
                if let Some(this) = this {
                    let id = device.id();
                    this.drop_range(
                        first * PAGE_SIZE,
                        last * PAGE_SIZE,
                        |r| matches!(r, Residency::Device(p) if p.dev == id),
                    );
                }
                Ok(())
            }
            // Everywhere: like madvise(MADV_DONTNEED) under the mmap read lock.  Device and
            // parked pages have no PTE for the zap: they go as the discard begins, and no move
            // takes a page from the CPU page table until it ends.
            (Advice::DontNeed, None) if self.target == Target::All => {
                self.for_each_vma(&mmap, |vma, start, end| {
                    if let Some(this) = this {
                        this.dontneed_begin(start, end);
                    }
                    vma.zap_vma_range(start, end - start);
                    if let Some(this) = this {
                        this.dontneed_end(start, end);
                    }
                    Ok(())
                })
            }
            // In host memory: every page except those on a device (parked pages are host
            // memory).  Runs between device pages are zapped.
            (Advice::DontNeed, None) => {
                let mut skip = KVec::new();
                let mut pushed = Ok(());
                if let Some(this) = this {
                    this.lpt.for_each_device_page(first, last, |vpn, _| {
                        if pushed.is_ok() {
                            pushed = skip.push(vpn * PAGE_SIZE, GFP_KERNEL).map_err(Error::from);
                        }
                    });
                }
                pushed?;
                // Parked pages are host memory without a PTE: they go here, the zaps take the
                // rest.
                if let Some(this) = this {
                    this.drop_range(self.start, self.end, |r| matches!(r, Residency::Parked(_)));
                }
                let mut skip = skip.into_iter().peekable();
                self.for_each_vma(&mmap, |vma, start, end| {
                    let mut at = start;
                    while at < end {
                        let stop = match skip.peek() {
                            Some(&s) if s < end => s,
                            _ => end,
                        };
                        if stop > at {
                            vma.zap_vma_range(at, stop - at);
                        }
                        at = stop;
                        if at < end {
                            // A device page: keep it.
                            skip.next();
                            at += PAGE_SIZE;
                        }
                    }
                    Ok(())
                })
            }
        }
    }

    /// Changes the attributes of the range as the advice says.  `device` is
    /// the device to pin to.
    fn set_attrs(&self, this: &AddressSpace, device: Option<&dyn DeviceOps>) -> Result {
        let (first, last) = (self.start / PAGE_SIZE, self.end / PAGE_SIZE);
        // The node the advice names, if it names one (`None`: every node).
        let named = |n: Option<Node>| match self.target {
            Target::Node(node) => n.map(c_int::from) == Some(node),
            Target::All => true,
        };
        let unpin = this.unpin();
        match (self.advice, device) {
            (Advice::Prefer, _) => {
                let Target::Node(node) = self.target else {
                    return Err(EINVAL);
                };
                let node = Node::try_from(node).map_err(|_| EINVAL)?;
                let prefer = |a: Attrs| Attrs {
                    preferred: Some(node),
                    ..a
                };
                this.policy
                    .update(first, last, prefer, |_, _| Ok(()), unpin)
            }
            (Advice::NoPrefer, _) => {
                let forget = |a: Attrs| {
                    if named(a.preferred) {
                        Attrs {
                            preferred: None,
                            ..a
                        }
                    } else {
                        a
                    }
                };
                this.policy
                    .update(first, last, forget, |_, _| Ok(()), unpin)
            }
            (Advice::Pin, Some(device)) => {
                let id = device.id();
                let pin = |a: Attrs| Attrs {
                    pinned: Some(id),
                    ..a
                };
                this.policy
                    .update(first, last, pin, |_, pages| device.pin(pages), unpin)
            }
            (Advice::AccessedBy, Some(device)) => {
                let bit = device_bit(device.id());
                let by = |a: Attrs| Attrs {
                    accessed_by: a.accessed_by | bit,
                    ..a
                };
                this.policy.update(first, last, by, |_, _| Ok(()), unpin)
            }
            (Advice::NoAccessedBy, _) => {
                let bits = match self.target {
                    Target::Node(node) => DeviceId::try_from(node).map_or(0, device_bit),
                    Target::All => !0,
                };
                let not_by = |a: Attrs| Attrs {
                    accessed_by: a.accessed_by & !bits,
                    ..a
                };
                this.policy
                    .update(first, last, not_by, |_, _| Ok(()), unpin)
            }
            (Advice::ReadMostly | Advice::NoReadMostly, _) => {
                let on = self.advice == Advice::ReadMostly;
                let set = |a: Attrs| Attrs {
                    read_mostly: on,
                    ..a
                };
                this.policy.update(first, last, set, |_, _| Ok(()), unpin)?;
                if !on {
                    // One location per page again: the copies go.
                    this.drop_copies(self.start, self.end, true);
                }
                Ok(())
            }
            (Advice::Unpin, _) => {
                let unpinned = |a: Attrs| {
                    if named(a.pinned) {
                        Attrs { pinned: None, ..a }
                    } else {
                        a
                    }
                };
                this.policy
                    .update(first, last, unpinned, |_, _| Ok(()), unpin)
            }
            _ => Err(EINVAL),
        }
    }

    /// Calls `f(vma, start, end)` for each VMA of the range, clipped to it,
    /// in address order.  Fails with `ENOMEM` at the first unmapped page.
    fn for_each_vma(
        &self,
        mmap: &MmapReadGuard<'_>,
        mut f: impl FnMut(&VmaRef, usize, usize) -> Result,
    ) -> Result {
        let mut addr = self.start;
        while addr < self.end {
            let vma = mmap.vma_lookup(addr).ok_or(ENOMEM)?;
            let end = vma.end().min(self.end);
            f(vma, addr, end)?;
            addr = end;
        }
        Ok(())
    }
}

/// Whether `nid` is an online host NUMA node.
fn host_node_online(nid: c_int) -> bool {
    // SAFETY: `nr_node_ids` is set once during early boot and never changes
    // after that, long before any process can call hmadvise(2).
    let nr_node_ids = unsafe { bindings::nr_node_ids };
    // SAFETY: `nid` was just checked to be a valid index of the node masks.
    u32::try_from(nid).is_ok_and(|n| n < nr_node_ids) && unsafe { bindings::node_online(nid) }
}

pub(crate) fn hmadvise(hnid: c_int, start: usize, len: usize, advice: c_int) -> Result {
    let valid = |n| host_node_online(n) || hnid_registered(n);
    let Some(request) = Request::parse(hnid, start, len, advice, valid)? else {
        return Ok(());
    };
    let task = current!();
    let mm = task.mm().ok_or(EINVAL)?;
    request.apply(mm)
}

#[cfg(CONFIG_GMEM_KUNIT_TEST)]
#[kunit_tests(gmem_hmadvise)]
mod tests {
    use super::*;

    const PREFETCH: c_int = bindings::MADV_PREFETCH as c_int;
    const DONTNEED: c_int = bindings::MADV_DONTNEED as c_int;
    const PREFER: c_int = bindings::MADV_PREFERRED_LOCATION as c_int;
    const NO_PREFER: c_int = bindings::MADV_NO_PREFERRED_LOCATION as c_int;
    const PIN: c_int = bindings::MADV_PIN as c_int;
    const UNPIN: c_int = bindings::MADV_UNPIN as c_int;
    const ACCESSED_BY: c_int = bindings::MADV_ACCESSED_BY as c_int;
    const NO_ACCESSED_BY: c_int = bindings::MADV_NO_ACCESSED_BY as c_int;
    const READ_MOSTLY: c_int = bindings::MADV_READ_MOSTLY as c_int;
    const NO_READ_MOSTLY: c_int = bindings::MADV_NO_READ_MOSTLY as c_int;
    const BASE: usize = 0x7f00_0000_0000;

    /// Nodes 0 and 1 exist, nothing else.
    fn two_nodes(nid: c_int) -> bool {
        nid == 0 || nid == 1
    }

    fn parse(hnid: c_int, start: usize, len: usize, advice: c_int) -> Result<Option<Request>> {
        Request::parse(hnid, start, len, advice, two_nodes)
    }

    #[test]
    fn accepts_every_advice() {
        let r = parse(1, BASE, 2 * PAGE_SIZE, PREFETCH).unwrap().unwrap();
        assert_eq!(r.advice, Advice::Prefetch);
        assert_eq!(r.target, Target::Node(1));
        assert_eq!((r.start, r.end), (BASE, BASE + 2 * PAGE_SIZE));
        let r = parse(0, BASE, PAGE_SIZE, DONTNEED).unwrap().unwrap();
        assert_eq!(r.advice, Advice::DontNeed);
        for (raw, advice) in [
            (PREFER, Advice::Prefer),
            (NO_PREFER, Advice::NoPrefer),
            (PIN, Advice::Pin),
            (UNPIN, Advice::Unpin),
            (ACCESSED_BY, Advice::AccessedBy),
            (NO_ACCESSED_BY, Advice::NoAccessedBy),
        ] {
            assert_eq!(
                parse(1, BASE, PAGE_SIZE, raw).unwrap().unwrap().advice,
                advice
            );
        }
        let all = bindings::GM_NODE_ALL;
        for (raw, advice) in [
            (READ_MOSTLY, Advice::ReadMostly),
            (NO_READ_MOSTLY, Advice::NoReadMostly),
        ] {
            assert_eq!(
                parse(all, BASE, PAGE_SIZE, raw).unwrap().unwrap().advice,
                advice
            );
        }
    }

    #[test]
    fn rejects_unknown_advice() {
        for advice in [-1, 0, 1, 3, 25, 199, 209, c_int::MAX, c_int::MIN] {
            assert_eq!(parse(0, BASE, PAGE_SIZE, advice), Err(EINVAL));
        }
    }

    #[test]
    fn rejects_unaligned_start() {
        for start in [BASE + 1, BASE + PAGE_SIZE / 2, BASE + PAGE_SIZE - 1] {
            assert_eq!(parse(0, start, PAGE_SIZE, PREFETCH), Err(EINVAL));
        }
    }

    #[test]
    fn rounds_len_up_to_pages() {
        let r = parse(0, BASE, 1, PREFETCH).unwrap().unwrap();
        assert_eq!(r.end, BASE + PAGE_SIZE);
        let r = parse(0, BASE, PAGE_SIZE + 1, PREFETCH).unwrap().unwrap();
        assert_eq!(r.end, BASE + 2 * PAGE_SIZE);
    }

    #[test]
    fn rejects_overflow() {
        assert_eq!(parse(0, BASE, usize::MAX, PREFETCH), Err(EINVAL));
        assert_eq!(
            parse(0, BASE, usize::MAX - PAGE_SIZE + 2, PREFETCH),
            Err(EINVAL)
        );
        let top = usize::MAX - PAGE_SIZE + 1;
        assert_eq!(parse(0, top, PAGE_SIZE, PREFETCH), Err(EINVAL));
        assert!(parse(0, top - PAGE_SIZE, PAGE_SIZE, PREFETCH).is_ok());
    }

    #[test]
    fn checks_node() {
        assert_eq!(parse(2, BASE, PAGE_SIZE, PREFETCH), Err(EINVAL));
        assert_eq!(parse(-2, BASE, PAGE_SIZE, DONTNEED), Err(EINVAL));
        assert_eq!(parse(c_int::MAX, BASE, PAGE_SIZE, PREFETCH), Err(EINVAL));
        // Every node: to drop pages, to move each to its preferred location,
        // to undo an attribute; not to prefer or pin.
        let all = bindings::GM_NODE_ALL;
        for advice in [PREFETCH, DONTNEED, NO_PREFER, UNPIN, NO_ACCESSED_BY] {
            let r = parse(all, BASE, PAGE_SIZE, advice).unwrap().unwrap();
            assert_eq!(r.target, Target::All);
        }
        for advice in [PREFER, PIN, ACCESSED_BY] {
            assert_eq!(parse(all, BASE, PAGE_SIZE, advice), Err(EINVAL));
            assert_eq!(parse(2, BASE, PAGE_SIZE, advice), Err(EINVAL));
        }
        // Read duplication is for every device at once: no node.
        for advice in [READ_MOSTLY, NO_READ_MOSTLY] {
            assert_eq!(parse(0, BASE, PAGE_SIZE, advice), Err(EINVAL));
            assert_eq!(parse(1, BASE, PAGE_SIZE, advice), Err(EINVAL));
        }
    }

    #[test]
    fn empty_range_is_a_no_op_after_the_checks() {
        assert_eq!(parse(0, BASE, 0, PREFETCH), Ok(None));
        assert_eq!(parse(2, BASE, 0, PREFETCH), Err(EINVAL));
        assert_eq!(parse(0, BASE + 1, 0, PREFETCH), Err(EINVAL));
        assert_eq!(parse(0, BASE, 0, 7), Err(EINVAL));
    }

    #[test]
    fn host_nodes() {
        // The guest boots with node 0 online, always.
        assert!(host_node_online(0));
        assert!(!host_node_online(-1));
        assert!(!host_node_online(c_int::MAX));
    }
}
