// SPDX-License-Identifier: GPL-2.0

//! `/proc/<pid>/gmem_maps`: the attributes of a process's peer-shared memory and where its
//! pages are, in the style of `numa_maps`.
//!
//! One line per piece of a peer-shared VMA whose attributes are uniform, in address order:
//!
//! ```text
//! 7f0000000000-7f0000200000 preferred=4 accessed_by=none read_mostly=0 pinned=none N0=12 N4=500
//! ```
//!
//! `N<node>=<pages>` counts the pages of the piece that each node holds: a host NUMA node for
//! pages in host memory (mapped by the CPU, or parked after an eviction), a device's node id for
//! pages on the device.  Pages being moved are on no node.  A page of a read-mostly range
//! (`read_mostly=1`, `MADV_READ_MOSTLY`) counts for its host node and once more for each device
//! that holds a read-only copy of it.  `accessed_by` lists the devices that map the pages in
//! place (`MADV_ACCESSED_BY`).

use crate::{
    address_space::AddressSpace,
    policy::{devices, Node, Span},
};
use kernel::{
    bindings,
    ffi::c_int,
    fmt,
    mm::{
        virt::{flags, VmaRef},
        MmWithUser,
    },
    page::PAGE_SIZE,
    prelude::*,
    seq_file::{seq_print, SeqFile},
};

/// A node, or `none`.
struct Shown(Option<Node>);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(node) => write!(f, "{node}"),
            None => f.write_str("none"),
        }
    }
}

/// Devices, as bits (see `crate::policy::device_bit`): `none`, or their node ids with commas.
struct ShownDevices(u64);

impl fmt::Display for ShownDevices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("none");
        }
        for (i, dev) in devices(self.0).enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{dev}")?;
        }
        Ok(())
    }
}

/// Pages per node, in a table with room for every node.
struct Counts(KVec<(c_int, usize)>);

impl Counts {
    fn add(&mut self, node: c_int) {
        if let Some(c) = self.0.iter_mut().find(|c| c.0 == node) {
            c.1 += 1;
        } else {
            // Cannot fail: there is room for every host node and every device.
            let _ = self.0.push_within_capacity((node, 1));
        }
    }
}

/// Writes the lines of `mm` (see the module documentation).  Nothing for a process without
/// peer-shared memory.
pub(crate) fn show(m: &SeqFile, mm: &MmWithUser) -> Result {
    // SAFETY: the caller holds a user of `mm`: its address space lives as long.
    let Some(this) = (unsafe { AddressSpace::of(mm.as_raw()) }) else {
        return Ok(());
    };
    // SAFETY: `nr_node_ids` is set during early boot and never changes afterwards.
    let host_nodes = unsafe { bindings::nr_node_ids } as usize;
    let mut counts = Counts(KVec::with_capacity(host_nodes + 64, GFP_KERNEL)?);
    let _mmap = mm.mmap_read_lock();
    let mut addr = 0;
    loop {
        // SAFETY: the mmap lock is held.
        let vma = unsafe { bindings::find_vma(mm.as_raw(), addr) };
        if vma.is_null() {
            return Ok(());
        }
        // SAFETY: `vma` is a VMA of `mm`, valid while its mmap lock (`mmap`) is held.
        let vma = unsafe { VmaRef::from_raw(vma) };
        addr = vma.end();
        if vma.flags() & flags::PEER_SHARED == 0 {
            continue;
        }
        let (first, end) = (vma.start() / PAGE_SIZE, vma.end() / PAGE_SIZE);
        this.policy.for_each_run(first, end, |run| {
            show_run(m, this, vma, &mut counts, run);
            Ok(())
        })?;
    }
}

/// Writes the line of `run`, a piece of `vma`.
fn show_run(m: &SeqFile, this: &AddressSpace, vma: &VmaRef, counts: &mut Counts, run: Span) {
    counts.0.clear();
    // One look per page, so that a page that moves meanwhile counts once at most.
    for vpn in run.first..run.end {
        if let Some(node) = vma
            .page_nid(vpn * PAGE_SIZE)
            .or_else(|| this.lpt.away_node(vpn))
        {
            counts.add(node);
        }
    }
    // A read-only copy counts for its device too: a read-mostly page has several locations.
    this.lpt.for_each_copy(run.first, run.end, |_, dev, page| {
        if page.is_some() {
            counts.add(dev.into());
        }
    });
    counts.0.sort_unstable_by_key(|c| c.0);
    seq_print!(
        m,
        "{:08x}-{:08x} preferred={} accessed_by={} read_mostly={} pinned={}",
        run.first * PAGE_SIZE,
        run.end * PAGE_SIZE,
        Shown(run.attrs.preferred),
        ShownDevices(run.attrs.accessed_by),
        u8::from(run.attrs.read_mostly),
        Shown(run.attrs.pinned),
    );
    for (node, pages) in counts.0.iter() {
        seq_print!(m, " N{}={}", node, pages);
    }
    seq_print!(m, "\n");
}
