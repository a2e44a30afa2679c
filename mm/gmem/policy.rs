// SPDX-License-Identifier: GPL-2.0

//! Range attributes: what `hmadvise(2)` was told about where the pages of a peer-shared range
//! should live (its preferred location, a pin on a device), kept until changed.
//!
//! The attributes of an address space are a sorted array of disjoint spans of pages, each with
//! the attributes that differ from the default; neighbours with equal attributes are merged.
//! They are kept by address, like the logical page table, not in the VMA: VMA split and merge
//! change nothing, and the address space follows the rest of the mappings' life itself
//! (`crate::address_space`): mremap moves the spans, munmap drops them, fork copies all but
//! the pins (like `mlock()`, a pin is not inherited), and the attributes that name a device go
//! when the device leaves the process.
//!
//! A spinlock protects the array, because eviction reads a page's attributes under the device
//! memory's lock.  Nothing is allocated under it: a change builds the new array in one
//! allocated before the lock is taken, and an unmap, from an MMU notifier that may not
//! allocate with reclaim, cuts the array in place, in a spare slot that every rebuild leaves
//! (or one allocated without reclaim).  If there is none, the cut span keeps its part inside
//! the hole until the next mapping there resets it ([`Policy::reset`]).
//!
//! Pins are accounted against the device's limit by the caller's `charge` and `release`
//! callbacks, called under the lock with the exact number of pages that gained or lost a pin:
//! what the devices account is always what the arrays say.

use crate::lpt::{device_slot, DeviceId};
use core::sync::atomic::{AtomicBool, Ordering};
use kernel::{
    alloc::{flags::GFP_NOWAIT, Flags},
    new_spinlock,
    prelude::*,
    sync::SpinLock,
};

/// A node: a host NUMA node or a device's node id (`hnid`).
pub(crate) type Node = u16;

/// The attributes of a page.  The default is what a page has until `hmadvise(2)` says more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Attrs {
    /// Where the page should live (`MADV_PREFERRED_LOCATION`).
    pub(crate) preferred: Option<Node>,
    /// The device the page is pinned to (`MADV_PIN`): it is never evicted from there.
    pub(crate) pinned: Option<DeviceId>,
    /// The devices that map the page where it is, in host memory (`MADV_ACCESSED_BY`): one
    /// bit per device, see [`device_bit`].
    pub(crate) accessed_by: u64,
    /// Devices read copies of the pages, which the host keeps (`MADV_READ_MOSTLY`).
    pub(crate) read_mostly: bool,
}

/// The bit of device `dev` in [`Attrs::accessed_by`]: device node ids are the 64 ids after the
/// host nodes'.
pub(crate) fn device_bit(dev: DeviceId) -> u64 {
    device_slot(dev).map_or(0, |slot| 1 << slot)
}

/// The device node ids whose bits are set in `bits` (see [`device_bit`]), in order.
pub(crate) fn devices(bits: u64) -> impl Iterator<Item = DeviceId> {
    // SAFETY: as in `device_bit`.
    let first = unsafe { kernel::bindings::nr_node_ids };
    (0..64u32)
        .filter(move |b| bits & (1 << b) != 0)
        .filter_map(move |b| DeviceId::try_from(first + b).ok())
}

impl Attrs {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Pages `first..end` with the same attributes, not the default ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) first: usize,
    pub(crate) end: usize,
    pub(crate) attrs: Attrs,
}

impl Span {
    fn pages(&self) -> usize {
        self.end - self.first
    }
}

/// Room left after every rebuild for unmaps that cut a span in two.
const SPARE: usize = 4;

/// The attributes of one address space's pages.
#[pin_data]
pub(crate) struct Policy {
    /// Disjoint, sorted, merged spans.
    #[pin]
    spans: SpinLock<KVec<Span>>,
    /// Whether `spans` may be non-empty: lets the paths that only read skip the lock when no
    /// attribute was ever set.
    used: AtomicBool,
}

/// Calls `f(first, end, attrs)` for each piece of `first..end` with uniform attributes, holes
/// (default attributes) included, in order.
fn pieces(spans: &[Span], first: usize, end: usize, mut f: impl FnMut(usize, usize, Attrs)) {
    let mut at = first;
    let i = spans.partition_point(|s| s.end <= first);
    for s in spans[i..].iter().take_while(|s| s.first < end) {
        if s.first > at {
            f(at, s.first, Attrs::default());
        }
        let (a, b) = (s.first.max(at), s.end.min(end));
        f(a, b, s.attrs);
        at = b;
    }
    if at < end {
        f(at, end, Attrs::default());
    }
}

/// Appends `span` to `out`, merged with the last span if they touch with equal attributes.
/// Spans with the default attributes are left out.  Never allocates: the caller reserved room.
fn push(out: &mut KVec<Span>, span: Span) {
    if span.attrs.is_default() || span.first >= span.end {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.end == span.first && last.attrs == span.attrs {
            last.end = span.end;
            return;
        }
    }
    // Cannot fail: every caller reserved a slot for each span it may push.
    let _ = out.push_within_capacity(span);
}

/// Appends the parts of `spans` outside `first..end`, clipped, to `out` (before: `true` for the
/// parts below `first`, `false` for those from `end` on).
fn outside(spans: &[Span], first: usize, end: usize, below: bool, out: &mut KVec<Span>) {
    for s in spans {
        if below && s.first < first {
            push(
                out,
                Span {
                    end: s.end.min(first),
                    ..*s
                },
            );
        } else if !below && s.end > end {
            push(
                out,
                Span {
                    first: s.first.max(end),
                    ..*s
                },
            );
        }
    }
}

impl Policy {
    /// No attributes.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            spans <- new_spinlock!(KVec::new(), "gmem_as::policy"),
            used: AtomicBool::new(false),
        })
    }

    /// The attributes of page `vpn`.
    pub(crate) fn attrs(&self, vpn: usize) -> Attrs {
        if !self.used.load(Ordering::Acquire) {
            return Attrs::default();
        }
        let spans = self.spans.lock();
        let i = spans.partition_point(|s| s.end <= vpn);
        match spans.get(i) {
            Some(s) if s.first <= vpn => s.attrs,
            _ => Attrs::default(),
        }
    }

    /// Replaces the array with one that `build` makes from it, in an array of room for
    /// `room(len)` spans allocated before the lock is taken.  `build` runs under the lock; if
    /// it fails, nothing changes.
    fn rebuild<R>(
        &self,
        flags: Flags,
        room: impl Fn(usize) -> usize,
        mut build: impl FnMut(&[Span], &mut KVec<Span>) -> Result<R>,
    ) -> Result<R> {
        let mut len = self.spans.lock().len();
        loop {
            let want = room(len) + SPARE;
            let mut fresh = KVec::with_capacity(want, flags)?;
            let mut spans = self.spans.lock();
            if room(spans.len()) + SPARE > want {
                // It grew meanwhile: allocate again, outside the lock.
                len = spans.len();
                continue;
            }
            let ret = build(&spans, &mut fresh)?;
            if !fresh.is_empty() {
                self.used.store(true, Ordering::Release);
            }
            core::mem::swap(&mut *spans, &mut fresh);
            drop(spans);
            // The old array is freed here, outside the lock.
            return Ok(ret);
        }
    }

    /// Sets the attributes of pages `first..end` to what `f` makes of them.
    ///
    /// Pages that `f` pins to a device (that were not pinned to it) are first given to
    /// `charge(device, pages)`, in one call: `f` pins to one device at most.  If it fails,
    /// nothing changes.  Then `release(device, pages)` is called for the pages that lose a
    /// pin.  Both run under the lock.
    pub(crate) fn update(
        &self,
        first: usize,
        end: usize,
        f: impl Fn(Attrs) -> Attrs,
        mut charge: impl FnMut(DeviceId, usize) -> Result,
        mut release: impl FnMut(DeviceId, usize),
    ) -> Result {
        // Below, the range (each span and hole of it), above: at most twice the spans, and one.
        self.rebuild(
            GFP_KERNEL_ACCOUNT,
            |len| 2 * len + 3,
            |spans, out| {
                let mut gained: Option<(DeviceId, usize)> = None;
                pieces(spans, first, end, |a, b, old| {
                    let new = f(old);
                    if let Some(dev) = new.pinned.filter(|&d| old.pinned != Some(d)) {
                        let g = gained.get_or_insert((dev, 0));
                        debug_assert_eq!(g.0, dev);
                        g.1 += b - a;
                    }
                });
                if let Some((dev, pages)) = gained {
                    charge(dev, pages)?;
                }
                outside(spans, first, end, true, out);
                pieces(spans, first, end, |a, b, old| {
                    let new = f(old);
                    if let Some(dev) = old.pinned.filter(|&d| new.pinned != Some(d)) {
                        release(dev, b - a);
                    }
                    push(
                        out,
                        Span {
                            first: a,
                            end: b,
                            attrs: new,
                        },
                    );
                });
                outside(spans, first, end, false, out);
                Ok(())
            },
        )
    }

    /// Gives pages `first..end` the default attributes again, for a new mapping there.
    pub(crate) fn reset(
        &self,
        first: usize,
        end: usize,
        release: impl FnMut(DeviceId, usize),
    ) -> Result {
        if !self.used.load(Ordering::Acquire) {
            return Ok(());
        }
        {
            let spans = self.spans.lock();
            let i = spans.partition_point(|s| s.end <= first);
            if spans.get(i).is_none_or(|s| s.first >= end) {
                return Ok(());
            }
        }
        self.update(first, end, |_| Attrs::default(), |_, _| Ok(()), release)
    }

    /// Drops the attributes of pages `first..end`, which were unmapped, without allocating
    /// with reclaim (from an MMU notifier): a span the range cuts in two takes a spare slot.
    /// Without one, the span stays whole and its part in the range is dropped when a mapping
    /// is made there ([`Policy::reset`]).
    pub(crate) fn unmap(&self, first: usize, end: usize, mut release: impl FnMut(DeviceId, usize)) {
        if !self.used.load(Ordering::Acquire) {
            return;
        }
        let mut spans = self.spans.lock();
        let i = spans.partition_point(|s| s.end <= first);
        let Some(&s) = spans.get(i) else {
            return;
        };
        if s.first < first && s.end > end {
            // The hole is inside one span: it becomes two.
            if spans.len() == spans.capacity() && spans.reserve(1, GFP_NOWAIT).is_err() {
                return;
            }
            if let Some(dev) = s.attrs.pinned {
                release(dev, end - first);
            }
            spans[i].end = first;
            // Cannot fail: there is room.
            let _ = spans.push_within_capacity(Span { first: end, ..s });
            spans[i + 1..].rotate_right(1);
            return;
        }
        for s in spans[i..].iter_mut().take_while(|s| s.first < end) {
            let (a, b) = (s.first.max(first), s.end.min(end));
            if let Some(dev) = s.attrs.pinned {
                release(dev, b - a);
            }
            if s.first < first {
                s.end = first;
            } else if s.end > end {
                s.first = end;
            } else {
                // Emptied: removed below.
                s.end = s.first;
            }
        }
        spans.retain(|s| s.first < s.end);
    }

    /// Moves the attributes of the `pages` pages at `old` to `new`, over what `new..` had
    /// (mremap).  Pins move with their pages.
    pub(crate) fn move_range(
        &self,
        old: usize,
        new: usize,
        pages: usize,
        flags: Flags,
        mut release: impl FnMut(DeviceId, usize),
    ) -> Result {
        if !self.used.load(Ordering::Acquire) {
            return Ok(());
        }
        // Each span leaves at most three pieces around the two ranges, and one moved.
        self.rebuild(
            flags,
            |len| 4 * len,
            |spans, out| {
                for s in spans {
                    let mut rest = [(s.first, s.end), (0, 0), (0, 0)];
                    for (a, b) in [(old, old + pages), (new, new + pages)] {
                        let mut cut = [(0, 0); 3];
                        let mut n = 0;
                        for &(x, y) in rest.iter().filter(|(x, y)| x < y) {
                            if y <= a || x >= b {
                                cut[n] = (x, y);
                                n += 1;
                                continue;
                            }
                            if x < a {
                                cut[n] = (x, a);
                                n += 1;
                            }
                            if y > b {
                                cut[n] = (b, y);
                                n += 1;
                            }
                            // What `new..` had goes.
                            if a == new {
                                if let Some(dev) = s.attrs.pinned {
                                    release(dev, y.min(b) - x.max(a));
                                }
                            }
                        }
                        rest = cut;
                    }
                    for &(x, y) in rest.iter().filter(|(x, y)| x < y) {
                        // Cannot fail: there is room.
                        let _ = out.push_within_capacity(Span {
                            first: x,
                            end: y,
                            attrs: s.attrs,
                        });
                    }
                }
                for s in spans {
                    let (a, b) = (s.first.max(old), s.end.min(old + pages));
                    if a < b {
                        // Cannot fail: there is room.
                        let _ = out.push_within_capacity(Span {
                            first: a - old + new,
                            end: b - old + new,
                            attrs: s.attrs,
                        });
                    }
                }
                normalize(out);
                Ok(())
            },
        )
    }

    /// Gives `child` (new, with no attributes) the attributes of `self` but the pins (fork).
    pub(crate) fn fork(&self, child: &Policy) -> Result {
        if !self.used.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut copy = KVec::new();
        loop {
            let len = self.spans.lock().len();
            copy.reserve(len, GFP_KERNEL_ACCOUNT)?;
            let spans = self.spans.lock();
            if spans.len() > copy.capacity() {
                continue;
            }
            for s in spans.iter() {
                let attrs = Attrs {
                    pinned: None,
                    ..s.attrs
                };
                push(&mut copy, Span { attrs, ..*s });
            }
            break;
        }
        child.rebuild(
            GFP_KERNEL_ACCOUNT,
            |_| copy.len(),
            |_, out| {
                for s in &copy {
                    push(out, *s);
                }
                Ok(())
            },
        )
    }

    /// Forgets device `dev` (it left the process): it is nobody's preferred location, holds no
    /// pin and accesses nothing in place any more.  In place, never allocates.
    pub(crate) fn forget(&self, dev: DeviceId, mut release: impl FnMut(DeviceId, usize)) {
        if !self.used.load(Ordering::Acquire) {
            return;
        }
        let mut spans = self.spans.lock();
        for s in spans.iter_mut() {
            if s.attrs.preferred == Some(dev) {
                s.attrs.preferred = None;
            }
            s.attrs.accessed_by &= !device_bit(dev);
            if s.attrs.pinned == Some(dev) {
                release(dev, s.pages());
                s.attrs.pinned = None;
            }
        }
        normalize(&mut spans);
    }

    /// Which of the `n` (at most 512) pages from `first` on have attributes that `pick`
    /// accepts: bit `i % 64` of word `i / 64` for page `first + i`.
    fn pages_where(&self, first: usize, n: usize, pick: impl Fn(&Attrs) -> bool) -> [u64; 8] {
        let mut bits = [0u64; 8];
        let end = first + n.min(512);
        if !self.used.load(Ordering::Acquire) {
            return bits;
        }
        let spans = self.spans.lock();
        let i = spans.partition_point(|s| s.end <= first);
        for s in spans[i..].iter().take_while(|s| s.first < end) {
            if pick(&s.attrs) {
                for k in s.first.max(first) - first..s.end.min(end) - first {
                    bits[k / 64] |= 1 << (k % 64);
                }
            }
        }
        bits
    }

    /// Which of the `n` (at most 512) pages from `first` on prefer a node other than `node`, as
    /// bits (see [`Policy::pages_where`]).
    pub(crate) fn preferring_other(&self, first: usize, n: usize, node: Node) -> [u64; 8] {
        self.pages_where(first, n, |a| a.preferred.is_some_and(|p| p != node))
    }

    /// Which of the `n` (at most 512) pages from `first` on device `dev` accesses in place, as
    /// bits (see [`Policy::pages_where`]).
    pub(crate) fn accessed_in_place(&self, first: usize, n: usize, dev: DeviceId) -> [u64; 8] {
        let bit = device_bit(dev);
        self.pages_where(first, n, |a| a.accessed_by & bit != 0)
    }

    /// Which of the `n` (at most 512) pages from `first` on are read-mostly, as bits (see
    /// [`Policy::pages_where`]).
    pub(crate) fn read_mostly(&self, first: usize, n: usize) -> [u64; 8] {
        self.pages_where(first, n, |a| a.read_mostly)
    }

    /// Calls `f(span)` for each piece of `first..end` with uniform attributes (holes included,
    /// with the default ones), after the lock is dropped: `f` may sleep.
    pub(crate) fn for_each_run(
        &self,
        first: usize,
        end: usize,
        mut f: impl FnMut(Span) -> Result,
    ) -> Result {
        if !self.used.load(Ordering::Acquire) {
            return f(Span {
                first,
                end,
                attrs: Attrs::default(),
            });
        }
        let mut runs = KVec::new();
        loop {
            let len = self.spans.lock().len();
            runs.reserve(2 * len + 1, GFP_KERNEL)?;
            let spans = self.spans.lock();
            if 2 * spans.len() + 1 > runs.capacity() {
                continue;
            }
            runs.clear();
            pieces(&spans, first, end, |a, b, attrs| {
                // Cannot fail: there is room.
                let _ = runs.push_within_capacity(Span {
                    first: a,
                    end: b,
                    attrs,
                });
            });
            break;
        }
        runs.into_iter().try_for_each(f)
    }

    /// How many pages are pinned, to any device.
    #[cfg(CONFIG_GMEM_KUNIT_TEST)]
    fn pinned(&self) -> usize {
        let spans = self.spans.lock();
        spans
            .iter()
            .filter(|s| s.attrs.pinned.is_some())
            .map(Span::pages)
            .sum()
    }
}

/// Sorts `spans`, merges neighbours with equal attributes and drops the default ones, in place.
fn normalize(spans: &mut KVec<Span>) {
    spans.sort_unstable_by_key(|s| s.first);
    let mut kept = 0;
    for i in 0..spans.len() {
        let s = spans[i];
        if s.attrs.is_default() || s.first >= s.end {
            continue;
        }
        if kept > 0 && spans[kept - 1].end == s.first && spans[kept - 1].attrs == s.attrs {
            spans[kept - 1].end = s.end;
            continue;
        }
        spans[kept] = s;
        kept += 1;
    }
    spans.truncate(kept);
}

#[cfg(CONFIG_GMEM_KUNIT_TEST)]
#[kunit_tests(gmem_policy)]
mod tests {
    use super::*;

    fn policy() -> Result<Pin<KBox<Policy>>> {
        KBox::pin_init(Policy::new(), GFP_KERNEL)
    }

    fn prefer(node: Node) -> impl Fn(Attrs) -> Attrs {
        move |a| Attrs {
            preferred: Some(node),
            ..a
        }
    }

    fn pin(dev: DeviceId) -> impl Fn(Attrs) -> Attrs {
        move |a| Attrs {
            pinned: Some(dev),
            ..a
        }
    }

    fn none(_: DeviceId, _: usize) {}

    /// Changes the attributes of pages `first..end` with `f`, pinning nothing.
    fn set(p: &Policy, first: usize, end: usize, f: impl Fn(Attrs) -> Attrs) -> Result {
        p.update(first, end, f, |_, _| Ok(()), none)
    }

    fn spans(p: &Policy) -> KVec<(usize, usize, Option<Node>, Option<DeviceId>)> {
        // Room first: nothing is allocated under the policy lock (lockdep knows it as taken in
        // MMU notifiers, which reclaim may run).
        let mut v = KVec::with_capacity(64, GFP_KERNEL).unwrap();
        for s in p.spans.lock().iter() {
            v.push_within_capacity((s.first, s.end, s.attrs.preferred, s.attrs.pinned))
                .unwrap();
        }
        v
    }

    #[test]
    fn set_splits_and_merges() -> Result {
        let p = policy()?;
        assert_eq!(p.attrs(5), Attrs::default());
        set(&p, 10, 20, prefer(3))?;
        set(&p, 14, 16, prefer(4))?;
        assert_eq!(
            &spans(&p)[..],
            &[
                (10, 14, Some(3), None),
                (14, 16, Some(4), None),
                (16, 20, Some(3), None)
            ]
        );
        assert_eq!(p.attrs(15).preferred, Some(4));
        assert_eq!(p.attrs(20), Attrs::default());
        // Setting it back merges the three.
        set(&p, 12, 18, prefer(3))?;
        assert_eq!(&spans(&p)[..], &[(10, 20, Some(3), None)]);
        // Clearing the middle leaves two; clearing everything, none.
        p.update(
            12,
            14,
            |a| Attrs {
                preferred: None,
                ..a
            },
            |_, _| Ok(()),
            none,
        )?;
        assert_eq!(
            &spans(&p)[..],
            &[(10, 12, Some(3), None), (14, 20, Some(3), None)]
        );
        p.reset(0, 100, none)?;
        assert!(spans(&p).is_empty());
        Ok(())
    }

    #[test]
    fn pins_are_charged_once_and_released() -> Result {
        let p = policy()?;
        let mut charged = 0;
        p.update(
            0,
            8,
            pin(7),
            |_, n| {
                charged += n;
                Ok(())
            },
            none,
        )?;
        // The overlap costs nothing more.
        p.update(
            4,
            12,
            pin(7),
            |_, n| {
                charged += n;
                Ok(())
            },
            none,
        )?;
        assert_eq!(charged, 12);
        assert_eq!(p.pinned(), 12);
        // Pinned elsewhere: charged there, released here.
        let mut released = 0;
        p.update(
            10,
            12,
            pin(8),
            |d, n| {
                assert_eq!((d, n), (8, 2));
                Ok(())
            },
            |d, n| {
                assert_eq!(d, 7);
                released += n;
            },
        )?;
        assert_eq!(released, 2);
        // A refused charge changes nothing.
        assert_eq!(
            p.update(0, 20, pin(9), |_, _| Err(ENOSPC), none),
            Err(ENOSPC)
        );
        assert_eq!(
            &spans(&p)[..],
            &[(0, 10, None, Some(7)), (10, 12, None, Some(8))]
        );
        Ok(())
    }

    #[test]
    fn unmap_cuts_in_place() -> Result {
        let p = policy()?;
        set(&p, 0, 10, pin(7))?;
        set(&p, 20, 30, prefer(1))?;
        let mut released = 0;
        // A hole inside a span: two spans, from the spare room.
        p.unmap(3, 5, |_, n| released += n);
        // Across the end of one and the start of the next.
        p.unmap(8, 22, |_, n| released += n);
        assert_eq!(released, 2 + 2);
        assert_eq!(
            &spans(&p)[..],
            &[
                (0, 3, None, Some(7)),
                (5, 8, None, Some(7)),
                (22, 30, Some(1), None)
            ]
        );
        // All of it.
        p.unmap(0, 100, |_, n| released += n);
        assert_eq!(released, 4 + 6);
        assert!(spans(&p).is_empty());
        Ok(())
    }

    #[test]
    fn move_range_carries_pins() -> Result {
        let p = policy()?;
        set(&p, 10, 20, pin(7))?;
        set(&p, 20, 24, prefer(2))?;
        set(&p, 100, 102, prefer(5))?;
        // 10..22 to 98..110: the old attributes of 100..102 go.
        p.move_range(10, 98, 12, GFP_KERNEL, |_, _| {
            panic!("nothing pinned was overwritten")
        })?;
        assert_eq!(
            &spans(&p)[..],
            &[
                (22, 24, Some(2), None),
                (98, 108, None, Some(7)),
                (108, 110, Some(2), None)
            ]
        );
        assert_eq!(p.pinned(), 10);
        Ok(())
    }

    #[test]
    fn fork_drops_pins_and_forget_drops_a_device() -> Result {
        let p = policy()?;
        set(&p, 0, 10, pin(7))?;
        set(&p, 5, 15, prefer(7))?;
        set(&p, 15, 20, prefer(1))?;
        let child = policy()?;
        p.fork(&child)?;
        assert_eq!(
            &spans(&child)[..],
            &[(5, 15, Some(7), None), (15, 20, Some(1), None)]
        );
        let mut released = 0;
        p.forget(7, |d, n| {
            assert_eq!(d, 7);
            released += n;
        });
        assert_eq!(released, 10);
        assert_eq!(&spans(&p)[..], &[(15, 20, Some(1), None)]);
        Ok(())
    }

    #[test]
    fn pages_preferring_another_node() -> Result {
        let p = policy()?;
        assert_eq!(p.preferring_other(0, 512, 9), [0; 8]);
        set(&p, 60, 70, prefer(1))?;
        set(&p, 70, 80, prefer(9))?;
        set(&p, 560, 700, prefer(1))?;
        let bits = p.preferring_other(0, 512, 9);
        assert_eq!(bits[0], !0 << 60);
        assert_eq!(bits[1], (1 << 6) - 1);
        assert_eq!(&bits[2..], &[0; 6]);
        // Relative to `first`, and clipped to it.
        let bits = p.preferring_other(64, 512, 9);
        assert_eq!(bits[0], (1 << 6) - 1);
        assert_eq!(bits[7], !0 << 48);
        Ok(())
    }

    #[test]
    fn accessed_in_place_by_device_bits() -> Result {
        // SAFETY: as in `device_bit`.
        let first = unsafe { kernel::bindings::nr_node_ids } as DeviceId;
        let (a, b) = (first + 3, first + 5);
        assert_eq!(device_bit(a), 1 << 3);
        assert_eq!(device_bit(first - 1), 0);
        assert_eq!(device_bit(first + 64), 0);
        let p = policy()?;
        let by = |dev: DeviceId| {
            move |x: Attrs| Attrs {
                accessed_by: x.accessed_by | device_bit(dev),
                ..x
            }
        };
        set(&p, 10, 20, by(a))?;
        set(&p, 15, 30, by(b))?;
        assert_eq!(p.attrs(16).accessed_by, device_bit(a) | device_bit(b));
        let mut ids = devices(p.attrs(16).accessed_by);
        assert_eq!(
            (ids.next(), ids.next(), ids.next()),
            (Some(a), Some(b), None)
        );
        assert_eq!(p.accessed_in_place(0, 64, a)[0], ((1 << 10) - 1) << 10);
        assert_eq!(p.accessed_in_place(0, 64, b)[0], ((1 << 15) - 1) << 15);
        // A device that leaves takes its bit along.
        p.forget(a, none);
        assert_eq!(p.accessed_in_place(0, 64, a), [0; 8]);
        assert_eq!(&spans(&p)[..], &[(15, 30, None, None)]);
        Ok(())
    }

    #[test]
    fn read_mostly_bits_merge_with_other_attributes() -> Result {
        let p = policy()?;
        let read_mostly = |on: bool| {
            move |x: Attrs| Attrs {
                read_mostly: on,
                ..x
            }
        };
        set(&p, 8, 24, prefer(1))?;
        set(&p, 16, 40, read_mostly(true))?;
        assert!(!p.attrs(15).read_mostly && p.attrs(16).read_mostly && p.attrs(39).read_mostly);
        assert_eq!(p.attrs(20).preferred, Some(1));
        assert_eq!(p.read_mostly(0, 64)[0], ((1 << 24) - 1) << 16);
        // Off again: the spans merge back.
        set(&p, 16, 40, read_mostly(false))?;
        assert_eq!(p.read_mostly(0, 64), [0; 8]);
        assert_eq!(&spans(&p)[..], &[(8, 24, Some(1), None)]);
        // Fork passes it on.
        set(&p, 100, 110, read_mostly(true))?;
        let child = policy()?;
        p.fork(&child)?;
        assert!(child.attrs(105).read_mostly);
        Ok(())
    }

    #[test]
    fn runs_cover_holes() -> Result {
        let p = policy()?;
        set(&p, 4, 6, prefer(1))?;
        let mut runs = KVec::new();
        p.for_each_run(0, 8, |s| {
            runs.push((s.first, s.end, s.attrs.preferred), GFP_KERNEL)?;
            Ok(())
        })?;
        assert_eq!(&runs[..], &[(0, 4, None), (4, 6, Some(1)), (6, 8, None)]);
        Ok(())
    }
}
