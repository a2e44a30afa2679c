// SPDX-License-Identifier: GPL-2.0

//! A simulated NPU that uses GMEM for shared virtual memory.
//!
//! Each QEMU `ivshmem-plain` device (PCI 1af4:1110) is one NPU; its BAR 2 is the NPU's DRAM.
//! The NPU has its own MMU ([`mmu`]: a page table in its DRAM and a software TLB) and a compute
//! engine, a kernel worker that runs jobs on the virtual addresses of a process, reading and
//! writing only through that MMU.  A translation miss is a device fault, handed to GMEM; with
//! `faultable=0` the NPU behaves like a device without fault support, and the driver has GMEM
//! make every operand resident before the job starts.
//!
//! Userspace interface: `gmem_npu_sim_uapi.h`; one misc device `/dev/gmem_npuN` per NPU.

use core::sync::atomic::{AtomicU32, Ordering::Relaxed};
use kernel::{
    c_str, current,
    device::Core,
    fs::File,
    gmem::{self, Access, AddressSpace, Caps, Fault},
    io::Io,
    ioctl::{_IO, _IOR, _IOWR},
    miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration},
    new_condvar, new_mutex, new_work,
    page::PAGE_SIZE,
    pci,
    prelude::*,
    sync::{Arc, Completion, CondVar, Mutex},
    transmute::{AsBytes, FromBytes},
    uaccess::{UserPtr, UserSlice},
    workqueue::{self, impl_has_work, Work, WorkItem},
};

mod check;
mod mmu;
use mmu::NpuMmu;

const GMEM_NPU_INFO_FAULTABLE: u32 = 1 << 0;
const GMEM_NPU_OP_FILL32: u32 = 1;
const GMEM_NPU_OP_COPY: u32 = 2;
const GMEM_NPU_OP_ADD32: u32 = 3;
const GMEM_NPU_OP_SUM32: u32 = 4;
const GMEM_NPU_JOB_ENGINES_MASK: u32 = 0x7;
const MAGIC: u32 = b'N' as u32;

/// `struct gmem_npu_info`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Info {
    hnid: u32,
    page_size: u32,
    dram_size: u64,
    flags: u32,
    reserved: u32,
}

/// `struct gmem_npu_job`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Job {
    op: u32,
    flags: u32,
    dst: u64,
    src0: u64,
    src1: u64,
    len: u64,
    value: u64,
}

/// `struct gmem_npu_stats`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Stats {
    faults: u64,
    zero_fills: u64,
    migrations_to_dev: u64,
    migrations_to_host: u64,
    evictions: u64,
    tlb_invalidations: u64,
    resident_pages: u64,
    dram_pages: u64,
    fault_batches: u64,
    prefetched_pages: u64,
}

// SAFETY: plain `repr(C)` integers without padding; every bit pattern is valid.
unsafe impl FromBytes for Job {}
// SAFETY: as above.
unsafe impl AsBytes for Job {}
// SAFETY: as above.
unsafe impl AsBytes for Info {}
// SAFETY: as above.
unsafe impl AsBytes for Stats {}

const IOC_INFO: u32 = _IOR::<Info>(MAGIC, 0);
const IOC_ATTACH: u32 = _IO(MAGIC, 1);
const IOC_RUN: u32 = _IOWR::<Job>(MAGIC, 2);
const IOC_STATS: u32 = _IOR::<Stats>(MAGIC, 3);

/// Names of the misc devices, one per NPU in probe order.
const NAMES: [&CStr; 8] = [
    c_str!("gmem_npu0"),
    c_str!("gmem_npu1"),
    c_str!("gmem_npu2"),
    c_str!("gmem_npu3"),
    c_str!("gmem_npu4"),
    c_str!("gmem_npu5"),
    c_str!("gmem_npu6"),
    c_str!("gmem_npu7"),
];
static PROBED: AtomicU32 = AtomicU32::new(0);

/// One NPU: its MMU and DRAM, and its registration with GMEM.
struct Npu {
    mmu: Arc<NpuMmu>,
    gm: gmem::Device<NpuMmu>,
    faultable: bool,
}

/// A process attached to an NPU.
struct Attached {
    ctx: gmem::Context<NpuMmu>,
}

/// An open `/dev/gmem_npuN`.
#[pin_data]
struct NpuFile {
    npu: Arc<Npu>,
    #[pin]
    attached: Mutex<Option<Arc<Attached>>>,
}

/// What the PCI core keeps per bound device.
#[pin_data]
struct NpuDriverData {
    npu: Arc<Npu>,
    #[pin]
    misc: MiscDeviceRegistration<NpuFile>,
}

#[vtable]
impl MiscDevice for NpuFile {
    type Ptr = Pin<KBox<Self>>;

    fn open(_file: &File, misc: &MiscDeviceRegistration<Self>) -> Result<Pin<KBox<Self>>> {
        let misc = core::ptr::from_ref(misc);
        // SAFETY: every registration of `NpuFile` is the `misc` field of an `NpuDriverData`,
        // alive while its misc device can be opened.
        let data = unsafe { &*kernel::container_of!(misc, NpuDriverData, misc) };
        KBox::try_pin_init(
            try_pin_init!(NpuFile {
                npu: data.npu.clone(),
                attached <- new_mutex!(None),
            }),
            GFP_KERNEL,
        )
    }

    fn ioctl(me: Pin<&NpuFile>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        let user = UserSlice::new(UserPtr::from_addr(arg), kernel::ioctl::_IOC_SIZE(cmd));
        match cmd {
            IOC_INFO => user.writer().write(&me.info())?,
            IOC_ATTACH => me.attach()?,
            IOC_RUN => {
                let (mut reader, mut writer) = user.reader_writer();
                let mut job: Job = reader.read()?;
                me.run(&mut job)?;
                writer.write(&job)?;
            }
            IOC_STATS => user.writer().write(&me.stats())?,
            _ => return Err(ENOTTY),
        }
        Ok(0)
    }
}

impl NpuFile {
    fn info(&self) -> Info {
        let stats = self.npu.gm.stats();
        Info {
            hnid: self.npu.gm.hnid(),
            page_size: PAGE_SIZE as u32,
            dram_size: stats.dram_pages * PAGE_SIZE as u64,
            flags: if self.npu.faultable {
                GMEM_NPU_INFO_FAULTABLE
            } else {
                0
            },
            reserved: 0,
        }
    }

    fn stats(&self) -> Stats {
        let s = self.npu.gm.stats();
        Stats {
            faults: s.faults,
            zero_fills: s.zero_fills,
            migrations_to_dev: s.migrations_to_dev,
            migrations_to_host: s.migrations_to_host,
            evictions: s.evictions,
            tlb_invalidations: self.npu.mmu.tlb_invalidations.load(Relaxed),
            resident_pages: s.resident_pages,
            dram_pages: s.dram_pages,
            fault_batches: s.fault_batches,
            prefetched_pages: s.prefetched,
        }
    }

    /// Attaches the calling process.  `EBUSY` if this file is attached already.
    fn attach(&self) -> Result {
        let mut attached = self.attached.lock();
        if attached.is_some() {
            return Err(EBUSY);
        }
        let ctx = AddressSpace::current(current!())?.attach(&self.npu.gm)?;
        *attached = Some(Arc::new(Attached { ctx }, GFP_KERNEL)?);
        Ok(())
    }

    /// Runs `job` on its engines and waits for them.
    fn run(&self, request: &mut Job) -> Result {
        validate(request)?;
        let attached = self.attached.lock().clone().ok_or(EINVAL)?;
        let job = *request;
        let len = job.len as usize;
        let engines = (job.flags & GMEM_NPU_JOB_ENGINES_MASK) as usize + 1;
        // Each engine takes whole pages of the job's bytes (a multiple of 4 each).  A job
        // may be nearly as long as the address space (it fails with EFAULT where nothing is
        // mapped): the arithmetic must not overflow.
        let share = len
            .div_ceil(engines)
            .checked_next_multiple_of(PAGE_SIZE)
            .unwrap_or(len);
        let parts = len.div_ceil(share);
        let faults = Arc::pin_init(FaultBuffer::new(parts)?, GFP_KERNEL)?;
        let mut works = KVec::with_capacity(parts, GFP_KERNEL)?;
        for e in 0..parts {
            let (mine, buffer) = (attached.clone(), faults.clone());
            let work = Arc::pin_init(
                pin_init!(JobWork {
                    work <- new_work!("gmem_npu_sim::job"),
                    done <- Completion::new(),
                    npu: self.npu.clone(),
                    attached <- new_mutex!(Some(mine)),
                    job,
                    part: (e * share, share.saturating_mul(e + 1).min(len)),
                    faults: buffer,
                    result <- new_mutex!(Err(EINVAL)),
                }),
                GFP_KERNEL,
            )?;
            works.push(work, GFP_KERNEL)?;
        }
        drop(attached);
        for work in &works {
            let _ = workqueue::system().enqueue(work.clone());
        }
        let mut value = if job.op == GMEM_NPU_OP_SUM32 {
            0
        } else {
            job.value
        };
        let mut result = Ok(());
        for work in &works {
            work.done.wait_for_completion();
            match *work.result.lock() {
                Ok(part) if job.op == GMEM_NPU_OP_SUM32 => value = value.wrapping_add(part),
                Ok(_) => {}
                Err(e) => result = result.and(Err(e)),
            }
        }
        result?;
        request.value = value;
        Ok(())
    }
}

/// Checks a job before anything moves: `EINVAL` for a bad op, flags, length or alignment, or
/// operands that wrap around the address space.
fn validate(job: &Job) -> Result {
    if job.flags & !GMEM_NPU_JOB_ENGINES_MASK != 0 || job.len == 0 || job.len % 4 != 0 {
        return Err(EINVAL);
    }
    for (addr, _) in operands(job)? {
        if addr % 4 != 0 || addr.checked_add(job.len).is_none() {
            return Err(EINVAL);
        }
    }
    Ok(())
}

/// The addresses a job uses and whether it writes them (sources first).
fn operands(job: &Job) -> Result<KVec<(u64, bool)>> {
    let list: &[(u64, bool)] = match job.op {
        GMEM_NPU_OP_FILL32 => &[(job.dst, true)],
        GMEM_NPU_OP_COPY => &[(job.src0, false), (job.dst, true)],
        GMEM_NPU_OP_ADD32 => &[(job.src0, false), (job.src1, false), (job.dst, true)],
        GMEM_NPU_OP_SUM32 => &[(job.src0, false)],
        _ => return Err(EINVAL),
    };
    let mut v = KVec::with_capacity(list.len(), GFP_KERNEL)?;
    for op in list {
        v.push(*op, GFP_KERNEL)?;
    }
    Ok(v)
}

/// The NPU's fault buffer, shared by the engines of one job.
///
/// An engine that misses in the TLB records its fault and stalls.  When no engine of the job
/// is running any more, the last one to stall (or to finish) hands every recorded fault to
/// GMEM as one batch, the way a GPU driver drains its fault buffer, and the stalled engines
/// replay.
#[pin_data]
struct FaultBuffer {
    #[pin]
    inner: Mutex<Faults>,
    #[pin]
    replay: CondVar,
}

struct Faults {
    /// Faults not served yet: one per stalled engine.
    pending: KVec<Fault>,
    /// The last batch served, with each fault's status.
    served: KVec<Fault>,
    /// Engines neither stalled nor finished.
    running: usize,
    /// Batches served so far.
    batches: u64,
}

impl FaultBuffer {
    /// A buffer for a job of `engines` engines, all running.
    fn new(engines: usize) -> Result<impl PinInit<Self>> {
        let faults = Faults {
            pending: KVec::with_capacity(engines, GFP_KERNEL)?,
            served: KVec::with_capacity(engines, GFP_KERNEL)?,
            running: engines,
            batches: 0,
        };
        Ok(pin_init!(FaultBuffer {
            inner <- new_mutex!(faults, "gmem_npu_sim::faults"),
            replay <- new_condvar!("gmem_npu_sim::replay"),
        }))
    }

    /// Records a fault at `va` and stalls the engine until a batch served it.
    fn stall(&self, ctx: &gmem::Context<NpuMmu>, va: usize, access: Access) -> Result {
        let mut g = self.inner.lock();
        // Cannot fail: one fault per engine, and the buffer has room for all of them.
        g.pending
            .push_within_capacity(Fault::new(va, access))
            .map_err(|_| EINVAL)?;
        g.running -= 1;
        let batch = g.batches;
        if g.running == 0 {
            Self::serve(ctx, &mut g);
            self.replay.notify_all();
        }
        while g.batches == batch {
            self.replay.wait(&mut g);
        }
        g.served
            .iter()
            .find(|f| f.va() == va)
            .map_or(Err(EINVAL), Fault::status)
    }

    /// An engine is done: if it was the last one running, serves what the others recorded.
    fn finish(&self, ctx: &gmem::Context<NpuMmu>) {
        let mut g = self.inner.lock();
        g.running -= 1;
        if g.running == 0 && !g.pending.is_empty() {
            Self::serve(ctx, &mut g);
            self.replay.notify_all();
        }
    }

    /// Hands the recorded faults to GMEM, with the buffer locked: every engine of the job is
    /// stalled or finished.  The stalled ones run again.
    fn serve(ctx: &gmem::Context<NpuMmu>, g: &mut Faults) {
        core::mem::swap(&mut g.pending, &mut g.served);
        g.pending.clear();
        // Each fault's status says how it went.
        let _ = ctx.fault_batch(&mut g.served);
        g.running += g.served.len();
        g.batches += 1;
    }
}

/// An engine's share of a job.
#[pin_data]
struct JobWork {
    #[pin]
    work: Work<JobWork>,
    #[pin]
    done: Completion,
    npu: Arc<Npu>,
    /// The context the job runs in, until the engine is done: dropped before the submitter is
    /// woken, so that a close() right after the job detaches the device before it returns.
    #[pin]
    attached: Mutex<Option<Arc<Attached>>>,
    job: Job,
    /// The engine's bytes of the job: `part.0..part.1` of each operand.
    part: (usize, usize),
    faults: Arc<FaultBuffer>,
    #[pin]
    result: Mutex<Result<u64>>,
}

impl_has_work! {
    impl HasWork<Self> for JobWork { self.work }
}

impl WorkItem for JobWork {
    type Pointer = Arc<JobWork>;

    fn run(this: Arc<JobWork>) {
        let attached = this.attached.lock().take();
        let result = attached.map_or(Err(EINVAL), |a| {
            let result = execute(&this.npu, &a.ctx, &this.job, this.part, &this.faults);
            this.faults.finish(&a.ctx);
            result
        });
        *this.result.lock() = result;
        this.done.complete_all();
    }
}

/// Words the engine processes per step: at most a page of each operand.
const STEP: usize = PAGE_SIZE;

/// An engine: runs bytes `from..to` of `job` through the NPU's MMU, reporting its faults
/// through `faults`.  Returns its part of the job's `value`.
fn execute(
    npu: &Npu,
    ctx: &gmem::Context<NpuMmu>,
    job: &Job,
    (from, to): (usize, usize),
    faults: &FaultBuffer,
) -> Result<u64> {
    let mut holds = KVec::new();
    if !npu.faultable {
        // A device without fault support: everything must be resident before it starts, and
        // stay so (held against eviction) until it ends.
        for (addr, write) in operands(job)? {
            let addr = addr + from as u64;
            let start = addr as usize & !(PAGE_SIZE - 1);
            // The last page of the address space has no end: it is no user address.
            let end = (addr as usize + (to - from))
                .checked_next_multiple_of(PAGE_SIZE)
                .ok_or(EFAULT)?;
            holds.push(ctx.hold(start, end - start)?, GFP_KERNEL)?;
            let access = if write { Access::WRITE } else { Access::READ };
            ctx.fault_range(start, end - start, access)?;
        }
    }
    let mut scratch = KVVec::from_elem(0u8, 3 * STEP, GFP_KERNEL)?;
    let (a, rest) = scratch.split_at_mut(STEP);
    let (b, c) = rest.split_at_mut(STEP);
    let pmap = ctx.pmap();
    let mut sum = 0u64;
    let mut done = from;
    let mut misses = 0;
    while done < to {
        let at = |base: u64| base as usize + done;
        let room = |va: usize| PAGE_SIZE - va % PAGE_SIZE;
        let mut seg = to - done;
        for (addr, _) in operands(job)? {
            seg = seg.min(room(at(addr)));
        }
        let mmu = &npu.mmu;
        let r = match job.op {
            GMEM_NPU_OP_FILL32 => mmu.access(pmap, [(at(job.dst), true)], |[d]| {
                for w in a[..seg].chunks_exact_mut(4) {
                    w.copy_from_slice(&(job.value as u32).to_le_bytes());
                }
                mmu.write(d, &a[..seg])
            })?,
            GMEM_NPU_OP_COPY => mmu.access(
                pmap,
                [(at(job.src0), false), (at(job.dst), true)],
                |[s, d]| {
                    mmu.read(s, &mut a[..seg])?;
                    mmu.write(d, &a[..seg])
                },
            )?,
            GMEM_NPU_OP_ADD32 => mmu.access(
                pmap,
                [
                    (at(job.src0), false),
                    (at(job.src1), false),
                    (at(job.dst), true),
                ],
                |[s0, s1, d]| {
                    mmu.read(s0, &mut a[..seg])?;
                    mmu.read(s1, &mut b[..seg])?;
                    for ((x, y), z) in a[..seg]
                        .chunks_exact(4)
                        .zip(b[..seg].chunks_exact(4))
                        .zip(c[..seg].chunks_exact_mut(4))
                    {
                        let x = u32::from_le_bytes([x[0], x[1], x[2], x[3]]);
                        let y = u32::from_le_bytes([y[0], y[1], y[2], y[3]]);
                        z.copy_from_slice(&x.wrapping_add(y).to_le_bytes());
                    }
                    mmu.write(d, &c[..seg])
                },
            )?,
            _ => mmu.access(pmap, [(at(job.src0), false)], |[s]| {
                mmu.read(s, &mut a[..seg])?;
                for x in a[..seg].chunks_exact(4) {
                    sum = sum.wrapping_add(u64::from(u32::from_le_bytes([x[0], x[1], x[2], x[3]])));
                }
                Ok(())
            })?,
        };
        match r {
            Ok(()) => {
                done += seg;
                misses = 0;
            }
            // A translation miss: a device fault.  Without fault support it is the job's end.
            Err((va, write)) => {
                misses += 1;
                if !npu.faultable || misses > 64 {
                    return Err(EFAULT);
                }
                faults.stall(ctx, va, if write { Access::WRITE } else { Access::READ })?;
            }
        }
    }
    Ok(if job.op == GMEM_NPU_OP_SUM32 {
        sum
    } else {
        job.value
    })
}

struct NpuDriver;

kernel::pci_device_table!(
    PCI_TABLE,
    MODULE_PCI_TABLE,
    <NpuDriver as pci::Driver>::IdInfo,
    [(
        pci::DeviceId::from_id(pci::Vendor::REDHAT_QUMRANET, 0x1110),
        ()
    )]
);

impl pci::Driver for NpuDriver {
    type IdInfo = ();
    type Data<'bound> = NpuDriverData;

    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: &'bound Self::IdInfo,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        pin_init::pin_init_scope(move || {
            let index = PROBED.fetch_add(1, Relaxed) as usize;
            let name = *NAMES.get(index).ok_or(ENODEV)?;
            pdev.enable_device_mem()?;
            let bar = pdev.iomap_region(2, c_str!("gmem_npu_sim"))?;
            let size = bar.maxsize() as u64;
            if size <= mmu::PT_BYTES {
                return Err(ENODEV);
            }
            let mmu = NpuMmu::new(mmu::Dram::Bar(bar.into_devres()?), size)?;
            let faultable = *module_parameters::faultable.value() != 0;
            let caps = if faultable { Caps::FAULT } else { Caps::NONE };
            let gm = gmem::Device::new(mmu.clone(), caps, name)?;
            // Everything after the page tables is GMEM's to manage.
            gm.register_physmem(mmu::PT_BYTES, size - mmu::PT_BYTES)?;
            dev_info!(
                pdev,
                "{}: {} MiB of DRAM, hnid {}, {}\n",
                name,
                size >> 20,
                gm.hnid(),
                if faultable { "faulting" } else { "prefaulted" }
            );
            let npu = Arc::new(Npu { mmu, gm, faultable }, GFP_KERNEL)?;
            Ok(try_pin_init!(NpuDriverData {
                npu,
                misc <- MiscDeviceRegistration::register(MiscDeviceOptions { name }),
            }))
        })
    }
}

kernel::module_pci_driver! {
    type: NpuDriver,
    name: "gmem_npu_sim",
    authors: ["GMEM developers"],
    description: "Simulated NPU using GMEM (QEMU ivshmem-plain)",
    license: "GPL",
    params: {
        faultable: u8 {
            default: 1,
            description: "1: the NPU raises device faults; 0: the driver prefaults every job",
        },
    },
}
