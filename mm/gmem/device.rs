// SPDX-License-Identifier: GPL-2.0

//! Devices as the core sees them: something that holds pages of a peer-shared range in its own
//! memory and maps them in its own page table.
//!
//! [`DeviceOps`] is the part of a device the core needs to keep the logical page table true:
//! stop the device's access to a page, copy a page home and free device memory.  (A change of
//! access rights, mprotect, also just stops the device's access: the device faults again and
//! gets a mapping with the new rights.)  A driver's `GmMmu` implementation provides it; the core only ever
//! reaches a device through the [`DeviceList`] of the address space the device is attached to,
//! so a page can only live on a device that is attached.

use crate::lpt::{DeviceId, DevicePage};
use kernel::{
    alloc::KVec,
    new_spinlock,
    page::Page,
    prelude::*,
    sync::{Arc, SpinLock},
};

/// The operations the core needs from a device.
///
/// They may sleep; the core never calls them with a spinlock held.
pub(crate) trait DeviceOps: Send + Sync {
    /// The device's node id (`hnid`).
    fn id(&self) -> DeviceId;

    /// Removes the device's mapping of `va` (which maps `page`) and invalidates the device
    /// TLB for it.  When this returns, the device no longer reads or writes the page.
    fn unmap(&self, va: usize, page: DevicePage);

    /// Copies the device page into the host page `dst`.
    fn copy_to_host(&self, page: DevicePage, dst: &Page) -> Result;

    /// Returns a device page to the device's allocator.
    fn free(&self, page: DevicePage);
}

/// The devices attached to one address space.
///
/// A spinlock, not a mutex: the MMU notifier looks devices up, and notifiers run from reclaim,
/// so nothing that allocates with reclaim may hold this lock (attach allocates atomically).
#[pin_data]
pub(crate) struct DeviceList {
    #[pin]
    devices: SpinLock<KVec<Arc<dyn DeviceOps>>>,
}

impl DeviceList {
    /// An empty list.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            devices <- new_spinlock!(KVec::new(), "gmem_device_list"),
        })
    }

    /// Attaches a device.  Fails with `EEXIST` if one with the same id is attached.
    pub(crate) fn attach(&self, device: Arc<dyn DeviceOps>) -> Result {
        let mut devices = self.devices.lock();
        if devices.iter().any(|d| d.id() == device.id()) {
            return Err(EEXIST);
        }
        devices.push(device, GFP_ATOMIC)?;
        Ok(())
    }

    /// The attached device `id`.
    pub(crate) fn get(&self, id: DeviceId) -> Option<Arc<dyn DeviceOps>> {
        self.devices.lock().iter().find(|d| d.id() == id).cloned()
    }

    /// Gives a device page back to its device: unmap it at `va`, then free it.
    ///
    /// A page of a device that is no longer attached was freed when the device detached.
    pub(crate) fn release(&self, va: usize, page: DevicePage) {
        if let Some(device) = self.get(page.dev) {
            device.unmap(va, page);
            device.free(page);
        }
    }
}

/// A device for KUnit: records every operation it receives and keeps page contents in host
/// pages, so that copies can be checked.
#[cfg(CONFIG_GMEM_KUNIT_TEST)]
pub(crate) mod fake {
    use super::*;
    use kernel::{new_mutex, sync::Mutex};

    /// One operation a [`FakeDevice`] received.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Op {
        Unmap(usize, u64),
        CopyToHost(u64),
        Free(u64),
    }

    /// A device whose page `pfn` holds the byte `pfn as u8` everywhere.
    #[pin_data]
    pub(crate) struct FakeDevice {
        pub(crate) id: DeviceId,
        /// Fail copies of this pfn (`u64::MAX`: none).
        pub(crate) failing_pfn: u64,
        #[pin]
        ops: Mutex<KVec<Op>>,
    }

    impl FakeDevice {
        pub(crate) fn new(id: DeviceId, failing_pfn: u64) -> Result<Arc<Self>> {
            Arc::pin_init(
                pin_init!(Self {
                    id,
                    failing_pfn,
                    ops <- new_mutex!(KVec::new(), "gmem_fake_device"),
                }),
                GFP_KERNEL,
            )
        }

        fn record(&self, op: Op) {
            let _ = self.ops.lock().push(op, GFP_KERNEL);
        }

        /// Takes the operations received so far.
        pub(crate) fn take_ops(&self) -> KVec<Op> {
            core::mem::take(&mut *self.ops.lock())
        }
    }

    impl DeviceOps for FakeDevice {
        fn id(&self) -> DeviceId {
            self.id
        }

        fn unmap(&self, va: usize, page: DevicePage) {
            self.record(Op::Unmap(va, page.pfn));
        }

        fn copy_to_host(&self, page: DevicePage, dst: &Page) -> Result {
            self.record(Op::CopyToHost(page.pfn));
            if page.pfn == self.failing_pfn {
                return Err(EIO);
            }
            let bytes = [page.pfn as u8; 64];
            for offset in (0..kernel::page::PAGE_SIZE).step_by(bytes.len()) {
                // SAFETY: `bytes` is valid for reads of its length, and the destination range is
                // within the page.
                unsafe { dst.write_raw(bytes.as_ptr(), offset, bytes.len())? };
            }
            Ok(())
        }

        fn free(&self, page: DevicePage) {
            self.record(Op::Free(page.pfn));
        }
    }
}
