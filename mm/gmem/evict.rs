// SPDX-License-Identifier: GPL-2.0

//! Eviction: making room in a full device's memory.
//!
//! When a device allocation finds the device's memory full (or at the limit an administrator
//! set in sysfs), the allocating path evicts a batch of pages to host memory and retries.  The
//! batch is the free reserve: the faults that follow find free pages without waiting.
//!
//! The victim is chosen by the clock of [`crate::devmem::DeviceMemory::pick_victim`]: a page
//! mapped since the hand last passed gets a second chance; a page whose entry is busy (a fault
//! or another move is using it) or that a running job holds (`gm_context_hold()`) is never
//! taken.  Before the memory of a device that reports use fills up, the worker ages the
//! pages once ([`age_pages`]), so that the first eviction knows which the device used since.
//! Eviction copies the page into a host page, charged to the memory cgroup of the
//! process the page belongs to, and maps it in that process's CPU page table
//! ([`crate::migrate::map_home`], one page table lock per run): it becomes an ordinary
//! anonymous page, on the LRU and swappable.  Eviction may run in any process (the one whose
//! allocation found the memory full), so it only *tries* the owner's mmap lock; when it cannot
//! get it (a writer holds it or waits: mmap, munmap, mremap), or the owner is exiting, the
//! owner's pages stay on the device and the clock moves on to other pages.  Only when no
//! candidate's owner can be had does an allocation park the copies in the logical page table
//! ([`Residency::Parked`]) instead, so that it still makes progress; the next access from the
//! CPU or a device moves a parked page where it is needed.  A page whose owner's cgroup is at
//! its limit stays on the device.
//!
//! Lock order: the device memory's spinlock, then the owner's device list lock, then the
//! context's hold list and the owner's logical page table lock (all taken only to claim the
//! victim).

use crate::{
    address_space::AddressSpace,
    device::{device_arc, Device, DeviceOps, Stats},
    devmem::{reserve, DeviceMemory, DmemCgroup, LimitPool, Refused, Victim, EVICT_BATCH},
    lpt::{Claim, DeviceId, DevicePage, ParkedPage, Residency},
    migrate::map_run_home,
    policy::Attrs,
    trace,
};
use kernel::{
    alloc::KVec,
    mm::{Mm, MmWithUser},
    page::{Page, PAGE_SIZE},
    prelude::*,
    sync::Arc,
    workqueue::{self, WorkItem},
};

/// Allocates a page of `dev` charged to dmem cgroup `cgroup`, making room when the memory is
/// full (any cold page goes) or the cgroup at its limit (a page of that cgroup goes).  Below
/// the low mark of the free reserve, wakes the worker that refills it; below the aging mark
/// for the first time since the memory was last half free, wakes it to age the pages.
pub(crate) fn alloc_page(dev: &Device, cgroup: Option<&DmemCgroup>) -> Result<u64> {
    let pfn = loop {
        match dev.try_alloc_page(cgroup) {
            Ok(pfn) => break pfn,
            // Full: make room, a reserve for the faults that follow too.
            Err(Refused::Full) => {
                make_room(dev, None)?;
            }
            // The task's dmem cgroup is at its limit: make room in it.
            Err(Refused::Limit(pool)) => {
                make_room(dev, Some(&pool))?;
            }
            Err(Refused::Error(e)) => return Err(e),
        }
    };
    if let Some(memory) = dev.memory() {
        let free = memory.free_pages();
        // `wants_aging()` first: it must see every fall below the aging mark.
        if memory.wants_aging(free) || free < reserve(memory.limit()).0 {
            // SAFETY: every `Device` lives in the `Arc` that `gm_dev_create()` made, and `dev`
            // is borrowed from a live reference to it.
            let this = unsafe { device_arc(dev.as_raw()) };
            // Already queued: the worker is on it.
            let _ = workqueue::system_unbound().enqueue(this);
        }
    }
    Ok(pfn)
}

/// Evicts a batch of cold pages of `dev` (under `limit`, see [`evict`]) to make room for an
/// allocation: pages whose owner's mmap lock can be had, which become anonymous memory; only
/// if there are none (every candidate's owner is busy or exiting), pages that are then parked.
fn make_room(dev: &Device, limit: Option<&LimitPool>) -> Result {
    // Pages that prefer the device go only when nothing else can.
    for spare in [Evict::Spare, Evict::Any] {
        let done = match evict(dev, EVICT_BATCH, limit, spare) {
            Err(e) if e == EAGAIN => evict(dev, EVICT_BATCH, limit, spare.parking()),
            done => done,
        };
        match done {
            Err(e) if e == ENOSPC && spare == Evict::Spare => continue,
            done => return done.map(|_| ()),
        }
    }
    Err(ENOMEM)
}

/// Which pages an eviction may take, and what it does with those whose owner is busy.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Evict {
    /// Not the pages that prefer the device (`MADV_PREFERRED_LOCATION`); pages whose owner is
    /// busy stay.
    Spare,
    /// Any page; pages whose owner is busy stay.
    Any,
    /// As [`Evict::Spare`], but pages whose owner is busy are parked.
    SpareParking,
    /// As [`Evict::Any`], but pages whose owner is busy are parked.
    AnyParking,
}

impl Evict {
    /// The same pages, parking those whose owner is busy.
    fn parking(self) -> Self {
        match self {
            Self::Spare | Self::SpareParking => Self::SpareParking,
            Self::Any | Self::AnyParking => Self::AnyParking,
        }
    }

    /// Whether pages that prefer the device stay.
    fn spares(self) -> bool {
        matches!(self, Self::Spare | Self::SpareParking)
    }
}

/// The worker that keeps a device's free reserve: makes a due aging turn of the clock, then
/// evicts cold pages until the high mark.
impl WorkItem for Device {
    type Pointer = Arc<Device>;

    fn run(this: Arc<Device>) {
        let Some(memory) = this.memory() else {
            return;
        };
        if memory.take_aging() {
            age(&this, memory);
        }
        while memory.free_pages() < reserve(memory.limit()).1 {
            // Nothing left to evict (all busy or held): the allocating path waits instead.  It
            // never takes pages that prefer the device: that is for real pressure only.
            if evict(&this, EVICT_BATCH, None, Evict::Spare).is_err() {
                break;
            }
        }
    }
}

/// A page claimed for eviction.
struct Claimed {
    victim: Victim,
    ctx: Arc<dyn DeviceOps>,
    /// The host page to copy into, until [`copy_out`] takes it.
    host: Option<Page>,
}

/// Evicts up to `count` cold pages of `dev` to host memory, as one batch: the pages are
/// claimed, then, for each owner, their device mappings are removed with one TLB invalidation
/// and they are copied out and mapped in the owner's CPU page table, under its mmap lock.  With
/// `limit`, only pages whose eviction makes room under that dmem cgroup limit are taken.
///
/// Eviction may run in any process and under another mmap lock, so it only tries the owner's:
/// the pages of an owner whose lock it cannot get (or that is exiting) stay on the device, and
/// the clock moves on to other pages; with [`Evict::parking`], they are copied out and parked
/// in the logical page table instead.  Pages pinned to the device never go; with
/// [`Evict::Spare`], neither do pages that prefer it.  Returns how many went; `EAGAIN` if none
/// did because their owners were busy, `ENOSPC` if none could go but pages that prefer the
/// device, `ENOMEM` if none could go at all.
pub(crate) fn evict(
    dev: &Device,
    count: usize,
    limit: Option<&LimitPool>,
    how: Evict,
) -> Result<usize> {
    let park = matches!(how, Evict::SpareParking | Evict::AnyParking);
    let memory = dev.memory().ok_or(ENOMEM)?;
    // Everything is allocated before the first claim, so that every claim is ended.
    let mut batch = KVec::with_capacity(count, GFP_KERNEL)?;
    let mut pages = KVec::with_capacity(count, GFP_KERNEL)?;
    let mut copies = KVec::with_capacity(count, GFP_KERNEL)?;
    let mut claims = KVec::with_capacity(count, GFP_KERNEL)?;
    let mut hosts = KVec::with_capacity(count, GFP_KERNEL)?;
    while hosts.len() < count {
        let Ok(host) = Page::alloc_page(GFP_KERNEL) else {
            break;
        };
        // Cannot fail: the capacity is there.
        hosts.push(host, GFP_KERNEL)?;
    }
    let mut spared = false;
    let picked = pick_cold(
        memory,
        hosts.len(),
        |v| {
            if limit.is_some_and(|l| !l.evicting_helps(v.pool)) {
                return None;
            }
            // SAFETY: as in `claim`, which is called under the same lock.
            let attrs = unsafe { &*(v.space as *const AddressSpace) }
                .policy
                .attrs(v.vpn);
            match verdict(attrs, dev.id, how) {
                Verdict::Go => claim(dev, v, true),
                Verdict::Spared => {
                    spared = true;
                    None
                }
                Verdict::Never => None,
            }
        },
        // A read-only copy gets no second chance: dropping it costs only a new copy, and one
        // given back would outlive an invalidation that ran while it was claimed (which
        // leaves claimed copies to their holders), mapped again by the next fault while the
        // CPU may write the page.  Neither is the device asked: its answer changes nothing.
        |v, (ctx, _, copy)| !*copy && ctx.clear_young(v.vpn * PAGE_SIZE),
        |v, (ctx, claim, copy)| {
            if copy {
                drop_copy(dev, &v, &ctx, claim);
            } else {
                give_back(dev, memory, v, &ctx, claim);
            }
        },
    )?;
    if picked.is_empty() {
        let err = if spared { ENOSPC } else { ENOMEM };
        trace::evict(dev.id, count, 0, &Err(err));
        return Err(err);
    }
    let mut dropped = 0;
    for ((victim, (ctx, claim, copy)), host) in picked.into_iter().zip(hosts) {
        if copy {
            drop_copy(dev, &victim, &ctx, claim);
            dropped += 1;
            continue;
        }
        // Cannot fail: the capacity is there.
        let _ = claims.push_within_capacity(Some(claim));
        let _ = copies.push_within_capacity(None);
        let _ = batch.push_within_capacity(Claimed {
            victim,
            ctx,
            host: Some(host),
        });
    }
    // A run of pages of one context (one owner) at a time: usually the whole batch.
    let mut busy = 0;
    let mut start = 0;
    while start < batch.len() {
        let ctx = &batch[start].ctx;
        let len = batch[start..]
            .iter()
            .take_while(|c| Arc::ptr_eq(&c.ctx, ctx))
            .count();
        let run = start..start + len;
        start += len;
        // SAFETY: `begin_move` keeps the address space until `move_done`.
        let this = unsafe { &*(batch[run.start].victim.space as *const AddressSpace) };
        // SAFETY: the address space lives as long as its mm, which is therefore not freed.
        let mm = unsafe { Mm::from_raw(this.mm()) };
        // Dropped with `mmput_async()`: never the exit of the owner's mm here, where its
        // evictions (this one) are under way.
        let mm = mm.mmget_not_zero().map(MmWithUser::into_mmput_async);
        // Only tried: the caller may hold another mmap lock (its own fault's), and a writer of
        // this one (mremap) may be waiting for this eviction.
        let mmap = mm.as_deref().and_then(|mm| mm.mmap_read_trylock());
        if mmap.is_none() && !park {
            // Not taken: the pages stay, their claims end below, and the clock has moved on.
            for c in &mut batch[run] {
                c.host = None;
            }
            busy += len;
            continue;
        }
        pages.clear();
        for c in &batch[run.clone()] {
            let page = DevicePage {
                dev: dev.id,
                pfn: c.victim.pfn,
            };
            // Cannot fail: the capacity is there.
            let _ = pages.push_within_capacity((c.victim.vpn * PAGE_SIZE, page));
        }
        batch[run.start].ctx.unmap_many(&pages);
        for k in run.clone() {
            copies[k] = copy_out(dev, &mut batch[k]);
        }
        let Some(mmap) = mmap else {
            continue;
        };
        // Into the owner's CPU page table, a run of consecutive pages at a time.
        let mut k = run.start;
        while k < run.end {
            let vpn = batch[k].victim.vpn;
            let n = batch[k..run.end]
                .iter()
                .enumerate()
                .take_while(|(i, c)| c.victim.vpn == vpn + i)
                .count();
            map_run_home(
                this,
                &mmap,
                vpn,
                &mut copies[k..k + n],
                &mut claims[k..k + n],
            );
            k += n;
        }
    }
    let mut done = dropped;
    for ((c, copy), claim) in batch.into_iter().zip(copies).zip(claims) {
        if finish(dev, c, copy, claim) {
            done += 1;
        }
    }
    let ret = match done {
        0 if busy > 0 => Err(EAGAIN),
        0 => Err(ENOMEM),
        _ => Ok(done),
    };
    trace::evict(dev.id, count, done, &ret);
    ret
}

/// What the attributes of a page of device `dev` say about evicting it.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Go,
    /// It prefers the device, and `how` spares such pages.
    Spared,
    /// It is pinned to the device.
    Never,
}

fn verdict(attrs: Attrs, dev: DeviceId, how: Evict) -> Verdict {
    if attrs.pinned == Some(dev) {
        Verdict::Never
    } else if how.spares() && attrs.preferred == Some(dev) {
        Verdict::Spared
    } else {
        Verdict::Go
    }
}

/// The eviction policy: picks up to `count` pages with the clock of `memory`, and asks the
/// device before it takes one.  `claim` takes a page from its owner under the device memory's
/// lock (`None` if it cannot: the page is moving or a job holds it); `young`, with no lock
/// held, tests and clears the device's accessed bit of a claimed page; `give_back` returns a
/// claimed page that stays.
///
/// A page the device used since the hand last passed gets a second chance, as a page GMEM saw
/// mapped or faulted on does in [`DeviceMemory::pick_victim`], and a page it used on two
/// passes in a row a third ([`DeviceMemory::keep`]).  At most two turns of the clock (two
/// chances per page in use) are given per call: a device that uses every page still gets
/// room.
fn pick_cold<C>(
    memory: &DeviceMemory,
    count: usize,
    mut claim: impl FnMut(&Victim) -> Option<C>,
    mut young: impl FnMut(&Victim, &C) -> bool,
    mut give_back: impl FnMut(Victim, C),
) -> Result<KVec<(Victim, C)>> {
    let mut picked = KVec::with_capacity(count, GFP_KERNEL)?;
    let mut chances = 2 * memory.usage().used;
    while picked.len() < count {
        let Some((victim, c)) = next_claimed(memory, &mut claim) else {
            break;
        };
        if chances > 0 && memory.keep(victim.pfn, young(&victim, &c)) {
            chances -= 1;
            give_back(victim, c);
            continue;
        }
        // Cannot fail: the capacity is there.
        picked.push((victim, c), GFP_KERNEL)?;
    }
    Ok(picked)
}

/// The aging turn of the clock over the pages of `dev` (see [`DeviceMemory::take_aging`]): the
/// accessed bits of the pages in use are read and cleared, and no page is taken.  Read-only
/// copies, which get no second chance, are left alone.
fn age(dev: &Device, memory: &DeviceMemory) {
    age_pages(
        memory,
        |v| claim(dev, v, false),
        |v, (ctx, _, _)| ctx.clear_young(v.vpn * PAGE_SIZE),
        |v, (ctx, claim, _)| give_back(dev, memory, v, &ctx, claim),
    );
}

/// Turns the clock of `memory` once without taking a page: each page in use that `claim`
/// takes (see [`pick_cold`]) is judged by `young`, as an eviction would, and given back.
///
/// Without it, the first eviction from a memory whose pages were all used since they were
/// mapped (filled by a stream, and some used again) turns a whole round clearing bits, then
/// takes the first pages of the next round, whatever the device used between: nothing told
/// them apart.  After an aging turn ahead of need, a page the device keeps using is young on
/// the eviction's pass, and the stream's pages, not used since, are taken first.
fn age_pages<C>(
    memory: &DeviceMemory,
    mut claim: impl FnMut(&Victim) -> Option<C>,
    mut young: impl FnMut(&Victim, &C) -> bool,
    mut give_back: impl FnMut(Victim, C),
) {
    for _ in 0..memory.usage().used {
        let Some((victim, c)) = next_claimed(memory, &mut claim) else {
            break;
        };
        memory.keep(victim.pfn, young(&victim, &c));
        give_back(victim, c);
    }
}

/// The next page of `memory` the clock's hand finds and `claim` takes, with what `claim`
/// returned; `None` if none could be taken in two turns.
fn next_claimed<C>(
    memory: &DeviceMemory,
    claim: &mut impl FnMut(&Victim) -> Option<C>,
) -> Option<(Victim, C)> {
    let mut claimed = None;
    let victim = memory.pick_victim(|v| {
        claimed = claim(v);
        claimed.is_some()
    })?;
    Some((victim, claimed?))
}

/// Claims `v`, a page of `dev`, from its address space for eviction: the context it is
/// mapped in, if the page is not busy and no job holds it, and whether it is a read-only copy
/// (`MADV_READ_MOSTLY`), which is just dropped; copies only if `copies`.  Runs under the
/// device memory's lock.
fn claim(dev: &Device, v: &Victim, copies: bool) -> Option<(Arc<dyn DeviceOps>, Claim, bool)> {
    // SAFETY: `v.space` holds an allocated page of this device: an address space frees its
    // device pages (taking the device memory lock, which the caller holds) before it goes, and
    // waits for evictions it is part of (`begin_move`).
    let this = unsafe { &*(v.space as *const AddressSpace) };
    let page = DevicePage {
        dev: dev.id,
        pfn: v.pfn,
    };
    let mut claim = None;
    let ctx = this.devices.get_if(dev.id, |ctx| {
        if !ctx.held(v.vpn * PAGE_SIZE) {
            claim = this
                .begin_move(v.vpn, Residency::Device(page))
                .map(|c| (c, false))
                .or_else(|| {
                    copies
                        .then(|| this.begin_copy_move(v.vpn, page).map(|c| (c, true)))
                        .flatten()
                });
        }
        claim.is_some()
    })?;
    let (claim, copy) = claim?;
    Some((ctx, claim, copy))
}

/// Evicts `victim`, a read-only copy claimed by [`claim`]: the host has the data, so the copy
/// is unmapped and freed.
fn drop_copy(dev: &Device, victim: &Victim, ctx: &Arc<dyn DeviceOps>, claim: Claim) {
    let page = DevicePage {
        dev: dev.id,
        pfn: victim.pfn,
    };
    trace::copy(dev.id, victim.vpn * PAGE_SIZE, 1, false);
    ctx.unmap(victim.vpn * PAGE_SIZE, page);
    // SAFETY: `begin_move` keeps the address space until `move_done`.
    let this = unsafe { &*(victim.space as *const AddressSpace) };
    // Gone meanwhile or not, the claim's holder frees what it holds.
    this.lpt.erase_claimed(claim);
    ctx.free(page);
    Stats::inc(&dev.stats.evictions);
    this.move_done();
}

/// Gives a claimed page back to its owner: it stays on the device.
fn give_back(
    dev: &Device,
    memory: &DeviceMemory,
    victim: Victim,
    ctx: &Arc<dyn DeviceOps>,
    claim: Claim,
) {
    memory.unpick(victim.pfn);
    let page = DevicePage {
        dev: dev.id,
        pfn: victim.pfn,
    };
    end(&victim, ctx, claim, Residency::Device(page));
}

/// Copies a claimed, unmapped page out into a host page charged to the owner's memory
/// cgroup; `None` if that failed (the page stays on the device).
fn copy_out(dev: &Device, c: &mut Claimed) -> Option<ParkedPage> {
    let page = DevicePage {
        dev: dev.id,
        pfn: c.victim.pfn,
    };
    let host = c.host.take()?;
    // SAFETY: `begin_move` keeps the address space (and so its mm) until `end` is done.
    let mm = unsafe { &*(c.victim.space as *const AddressSpace) }.mm();
    // The host page is charged to the owner's memory cgroup, which may be at its limit: then
    // the page stays on the device, and the caller looks for another victim.
    let copy = ParkedPage::charged(host, mm, false).ok()?;
    c.ctx.copy_to_host(page, &copy.page()).ok()?;
    trace::migrate(
        c.victim.vpn * PAGE_SIZE,
        1,
        0,
        dev.id.into(),
        copy.page().nid(),
    );
    Some(copy)
}

/// Ends the eviction of `c`: the copy was mapped in the CPU page table (`copy` and `claim`
/// both gone), or is parked; or the copy failed and the page stays on the device.  Returns
/// whether the page left the device.
fn finish(dev: &Device, c: Claimed, copy: Option<ParkedPage>, claim: Option<Claim>) -> bool {
    let Claimed { victim, ctx, .. } = c;
    let page = DevicePage {
        dev: dev.id,
        pfn: victim.pfn,
    };
    let (now, claim) = match (copy, claim) {
        // Mapped in the CPU page table; or the page was dropped while it was being mapped,
        // and the copy is nobody's.  Either way the device page is free.
        (copy, None) => {
            drop(copy);
            ctx.free(page);
            Stats::inc(&dev.stats.evictions);
            // SAFETY: `begin_move` keeps the address space until `move_done`.
            unsafe { &*(victim.space as *const AddressSpace) }.move_done();
            return true;
        }
        (Some(copy), Some(claim)) => {
            ctx.free(page);
            Stats::inc(&dev.stats.evictions);
            (Residency::Parked(copy.into_raw()), claim)
        }
        (None, Some(claim)) => {
            if let Some(memory) = dev.memory() {
                memory.unpick(victim.pfn);
            }
            (Residency::Device(page), claim)
        }
    };
    let left = !matches!(now, Residency::Device(_));
    end(&victim, &ctx, claim, now);
    left
}

/// Ends the claim of `victim`, recording where it lives `now`; if its range was unmapped
/// meanwhile, releases what `now` holds, which is nobody's.
fn end(victim: &Victim, ctx: &Arc<dyn DeviceOps>, claim: Claim, now: Residency) {
    // SAFETY: `begin_move` keeps the address space until `move_done` below.
    let this = unsafe { &*(victim.space as *const AddressSpace) };
    if !this.end_move(claim, now) {
        match now {
            // SAFETY: the parked page was never recorded: it is ours.
            Residency::Parked(raw) => drop(unsafe { ParkedPage::from_raw(raw) }),
            Residency::Device(page) => {
                ctx.unmap(victim.vpn * PAGE_SIZE, page);
                ctx.free(page);
            }
            _ => {}
        }
    }
    // From here on the address space may go.
    this.move_done();
}

#[cfg(CONFIG_GMEM_KUNIT_TEST)]
#[kunit_tests(gmem_evict)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Device memory with `n` pages in use, page `i` mapped at virtual page `100 + i`.
    fn memory(n: usize) -> Result<(Pin<KBox<DeviceMemory>>, KVec<u64>)> {
        let mem = DeviceMemory::new(0, 4 * MIB, false)?;
        let mut pfns = KVec::new();
        for i in 0..n {
            let pfn = mem.alloc()?;
            mem.set_owner(pfn, 0x1000, 100 + i);
            pfns.push(pfn, GFP_KERNEL)?;
        }
        Ok((mem, pfns))
    }

    fn vpns(picked: &[(Victim, ())]) -> Result<KVec<usize>> {
        let mut v = KVec::new();
        for (victim, ()) in picked {
            v.push(victim.vpn, GFP_KERNEL)?;
        }
        v.sort_unstable();
        Ok(v)
    }

    #[test]
    fn pages_the_device_used_stay() -> Result {
        let (mem, _pfns) = memory(4)?;
        // The device used pages 100 and 102 (their accessed bits are set once).
        let mut used = [true, false, true, false];
        let mut given_back = 0;
        let picked = pick_cold(
            &mem,
            2,
            |_| Some(()),
            |v, ()| core::mem::take(&mut used[v.vpn - 100]),
            |v, ()| {
                given_back += 1;
                mem.unpick(v.pfn);
            },
        )?;
        assert_eq!(&vpns(&picked)?[..], &[101, 103]);
        assert_eq!(given_back, 2);
        // The bits were cleared: without new use, those pages go next.
        let next = pick_cold(&mem, 2, |_| Some(()), |_, ()| false, |_, ()| {})?;
        assert_eq!(&vpns(&next)?[..], &[100, 102]);
        Ok(())
    }

    /// Gives back pages picked for eviction: they stay.
    fn unpick_all(mem: &DeviceMemory, picked: KVec<(Victim, ())>) {
        for (v, ()) in picked {
            mem.unpick(v.pfn);
        }
    }

    /// Picks `count` pages of `mem` (page `i` mapped at virtual page `100 + i`) for a device
    /// that used page `i` once if `used[i]`; pages given a chance go back.
    fn pick_used(
        mem: &DeviceMemory,
        count: usize,
        used: &mut [bool],
    ) -> Result<KVec<(Victim, ())>> {
        pick_cold(
            mem,
            count,
            |_| Some(()),
            |v, ()| core::mem::take(&mut used[v.vpn - 100]),
            |v, ()| mem.unpick(v.pfn),
        )
    }

    #[test]
    fn a_page_used_on_every_pass_outlives_a_stream() -> Result {
        let (mem, _pfns) = memory(4)?;
        // The device uses page 100; the clock passes it and takes 101.
        let picked = pick_used(&mem, 1, &mut [true, false, false, false])?;
        assert_eq!(&vpns(&picked)?[..], &[101]);
        unpick_all(&mem, picked);
        // A stream used every page once, and the device used page 100 again: the hand turns a
        // whole round clearing bits, then takes the stream's pages, not page 100.
        let picked = pick_used(&mem, 3, &mut [true; 4])?;
        assert_eq!(&vpns(&picked)?[..], &[101, 102, 103]);
        Ok(())
    }

    #[test]
    fn an_aged_clock_keeps_the_pages_used_since() -> Result {
        // A stream used every page once, and the device used page 100 again.  With no history
        // the clock cannot tell them apart: it clears every bit in a round, then takes the
        // first page of the next one, page 100.
        let (mem, _pfns) = memory(4)?;
        let picked = pick_used(&mem, 1, &mut [true; 4])?;
        assert_eq!(&vpns(&picked)?[..], &[100]);
        // With an aging turn when the stream had made every page young, and page 100 used
        // since, the eviction takes a stream page at once...
        let (mem, _pfns) = memory(4)?;
        let mut used = [true; 4];
        let mut given_back = 0;
        age_pages(
            &mem,
            |_| Some(()),
            |v, ()| core::mem::take(&mut used[v.vpn - 100]),
            |v, ()| {
                given_back += 1;
                mem.unpick(v.pfn);
            },
        );
        assert_eq!(given_back, 4);
        assert_eq!(used, [false; 4]);
        let picked = pick_used(&mem, 1, &mut [true, false, false, false])?;
        assert_eq!(&vpns(&picked)?[..], &[101]);
        unpick_all(&mem, picked);
        // ...and page 100, young on two passes, is kept for one more without use.
        let picked = pick_used(&mem, 3, &mut [false; 4])?;
        assert_eq!(&vpns(&picked)?[..], &[101, 102, 103]);
        Ok(())
    }

    #[test]
    fn a_device_that_uses_everything_still_gets_room() -> Result {
        let (mem, _pfns) = memory(4)?;
        let mut asked = 0;
        // Every page is always young: after two chances per page in use, pages are taken.
        let picked = pick_cold(
            &mem,
            3,
            |_| Some(()),
            |_, ()| {
                asked += 1;
                true
            },
            |v, ()| mem.unpick(v.pfn),
        )?;
        assert_eq!(picked.len(), 3);
        assert_eq!(asked, 8);
        Ok(())
    }

    #[test]
    fn pinned_pages_stay_and_preferred_ones_go_last() -> Result {
        let (mem, _pfns) = memory(6)?;
        let policy = KBox::pin_init(crate::policy::Policy::new(), GFP_KERNEL)?;
        let set = |first, end, attrs: Attrs| {
            policy.update(first, end, move |_| attrs, |_, _| Ok(()), |_, _| {})
        };
        let (pinned, preferred) = (
            |dev| Attrs {
                pinned: Some(dev),
                ..Attrs::default()
            },
            |node| Attrs {
                preferred: Some(node),
                ..Attrs::default()
            },
        );
        // Pages 100 and 101 are pinned to device 0 (this one), 102 and 103 prefer it, 104
        // prefers device 1 and 105 is pinned there.
        set(100, 102, pinned(0))?;
        set(102, 104, preferred(0))?;
        set(104, 105, preferred(1))?;
        set(105, 106, pinned(1))?;
        let pick = |how| {
            pick_cold(
                &mem,
                6,
                |v| (verdict(policy.attrs(v.vpn), 0, how) == Verdict::Go).then_some(()),
                |_, ()| false,
                |v, ()| mem.unpick(v.pfn),
            )
        };
        let spared = pick(Evict::Spare)?;
        assert_eq!(&vpns(&spared)?[..], &[104, 105]);
        unpick_all(&mem, spared);
        let any = pick(Evict::AnyParking)?;
        assert_eq!(&vpns(&any)?[..], &[102, 103, 104, 105]);
        Ok(())
    }

    #[test]
    fn unclaimable_pages_are_not_taken() -> Result {
        let (mem, pfns) = memory(3)?;
        // A job holds the first page (the claim fails), and the device never tracks use.
        let held = pfns[0];
        let picked = pick_cold(
            &mem,
            3,
            |v| (v.pfn != held).then_some(()),
            |_, ()| false,
            |_, ()| {},
        )?;
        assert_eq!(&vpns(&picked)?[..], &[101, 102]);
        // Nothing left to claim: an empty pick, not an error.
        let none = pick_cold(
            &mem,
            1,
            |v| (v.pfn != held).then_some(()),
            |_, ()| false,
            |_, ()| {},
        )?;
        assert!(none.is_empty());
        Ok(())
    }
}
