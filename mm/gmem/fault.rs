// SPDX-License-Identifier: GPL-2.0

//! CPU faults on peer-shared ranges.
//!
//! core MM handles a CPU fault on a page that is not present in a peer-shared VMA as an
//! anonymous fault, with two calls into GMEM around it (see `do_anonymous_page()`):
//!
//! - [`cpu_fault_begin`], after the new host page is allocated and before the page table lock
//!   is taken (it may sleep).  It claims the page's entry in the logical page table (marks it
//!   busy) and, if the page lives on a device, stops the device's access to it, copies it into
//!   the new host page and frees the device page.  If another fault or migration owns the entry
//!   it returns [`Begin::Busy`]: the fault returns without installing anything and the access
//!   is retried, so nobody waits with a lock held.
//! - [`cpu_fault_end`], under the page table lock once the PTE is installed (or when core MM
//!   gave up), records the page as host-resident and releases the entry.
//!
//! If core MM gives up after a page was copied home (which only happens when the address space
//! is being torn down), the copy is lost with the address space.

use crate::{
    device::DeviceList,
    lpt::{DevicePage, GmMapping, LogicalPageTable, Residency},
};
use kernel::{page::Page, prelude::*};

/// What [`cpu_fault_begin`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Begin {
    /// The entry is ours; install the host page, then call [`cpu_fault_end`].
    Proceed,
    /// Someone else is moving the page: return and let the access retry.
    Busy,
}

/// Claims page `vpn` (virtual address `va`) for a CPU fault that installs `dst`.
pub(crate) fn cpu_fault_begin(
    lpt: &LogicalPageTable,
    devices: &DeviceList,
    vpn: usize,
    va: usize,
    dst: &Page,
) -> Result<Begin> {
    loop {
        let from_device = {
            let mut guard = lpt.lock();
            match guard.get_mut(vpn) {
                Some(m) if m.busy() => return Ok(Begin::Busy),
                Some(m) => {
                    m.set_busy(true);
                    match m.residency() {
                        Residency::Device(page) => {
                            // The page is ours to move; until it is installed it is nowhere.
                            m.set(Residency::Nowhere);
                            Some(page)
                        }
                        _ => None,
                    }
                }
                None => {
                    drop(guard);
                    match lpt.insert_mapping(vpn, GmMapping::claimed()) {
                        // Raced with another fault on the same page: look again.
                        Err(e) if e == EBUSY => continue,
                        Err(e) => return Err(e),
                        Ok(()) => return Ok(Begin::Proceed),
                    }
                }
            }
        };
        let Some(page) = from_device else {
            return Ok(Begin::Proceed);
        };
        return match bring_home(devices, va, page, dst) {
            Ok(()) => Ok(Begin::Proceed),
            Err(e) => {
                // The device copy is still good: give the entry its page back.
                let mut guard = lpt.lock();
                match guard.get_mut(vpn) {
                    Some(m) => {
                        m.set(Residency::Device(page));
                        m.set_busy(false);
                    }
                    // Unmapped meanwhile: nobody else knows the device page.
                    None => {
                        drop(guard);
                        devices.release(va, page);
                    }
                }
                Err(e)
            }
        };
    }
}

/// Stops the device's access to `page`, copies it into `dst` and frees it.
fn bring_home(devices: &DeviceList, va: usize, page: DevicePage, dst: &Page) -> Result {
    // A page can only live on an attached device; a detached device took its pages with it.
    let device = devices.get(page.dev).ok_or(EIO)?;
    // The device must not write after the copy, or the write is lost.
    device.unmap(va, page);
    device.copy_to_host(page, dst)?;
    device.free(page);
    Ok(())
}

/// Ends the CPU fault on page `vpn`: records it as host-resident if `installed`.
pub(crate) fn cpu_fault_end(lpt: &LogicalPageTable, vpn: usize, installed: bool) {
    let mut guard = lpt.lock();
    if let Some(m) = guard.get_mut(vpn) {
        if m.busy() {
            if installed {
                m.set(Residency::Host);
            }
            m.set_busy(false);
        }
    }
}

#[cfg(CONFIG_GMEM_KUNIT_TEST)]
#[kunit_tests(gmem_fault)]
mod tests {
    use super::*;
    use crate::device::fake::{FakeDevice, Op};
    use kernel::{page::PAGE_SIZE, sync::Arc};

    struct Setup {
        lpt: Pin<KBox<LogicalPageTable>>,
        devices: Pin<KBox<DeviceList>>,
        fake: Arc<FakeDevice>,
        page: Page,
    }

    fn setup(failing_pfn: u64) -> Result<Setup> {
        let devices = KBox::pin_init(DeviceList::new(), GFP_KERNEL)?;
        let fake = FakeDevice::new(7, failing_pfn)?;
        devices.attach(fake.clone())?;
        Ok(Setup {
            lpt: KBox::pin_init(LogicalPageTable::new(), GFP_KERNEL)?,
            devices,
            fake,
            page: Page::alloc_page(GFP_KERNEL | __GFP_ZERO)?,
        })
    }

    fn byte_at(page: &Page, offset: usize) -> Result<u8> {
        let mut b = 0u8;
        // SAFETY: `b` is valid for a one-byte write and `offset` is within the page.
        unsafe { page.read_raw(&mut b, offset, 1)? };
        Ok(b)
    }

    const VA: usize = 0x7f00_0000_0000;
    const VPN: usize = VA / PAGE_SIZE;

    #[test]
    fn first_touch_records_host() -> Result {
        let s = setup(u64::MAX)?;
        assert_eq!(
            cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page)?,
            Begin::Proceed
        );
        assert_eq!(s.lpt.residency(VPN), Some(Residency::Nowhere));
        cpu_fault_end(&s.lpt, VPN, true);
        assert_eq!(s.lpt.residency(VPN), Some(Residency::Host));
        assert_eq!(s.fake.take_ops().len(), 0);
        Ok(())
    }

    #[test]
    fn busy_entry_makes_the_fault_retry() -> Result {
        let s = setup(u64::MAX)?;
        assert_eq!(
            cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page)?,
            Begin::Proceed
        );
        // A second fault on the same page while the first is under way.
        assert_eq!(
            cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page)?,
            Begin::Busy
        );
        cpu_fault_end(&s.lpt, VPN, false);
        // The first fault gave up: the page is still nowhere, and free to claim again.
        assert_eq!(s.lpt.residency(VPN), Some(Residency::Nowhere));
        assert_eq!(
            cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page)?,
            Begin::Proceed
        );
        Ok(())
    }

    #[test]
    fn device_page_comes_home() -> Result {
        let s = setup(u64::MAX)?;
        let page = DevicePage { dev: 7, pfn: 0x42 };
        s.lpt.insert(VPN, Residency::Device(page))?;
        assert_eq!(
            cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page)?,
            Begin::Proceed
        );
        // The device stopped accessing the page before it was copied, then freed it.
        assert_eq!(
            s.fake.take_ops(),
            [Op::Unmap(VA, 0x42), Op::CopyToHost(0x42), Op::Free(0x42)]
        );
        assert_eq!(byte_at(&s.page, 0)?, 0x42);
        assert_eq!(byte_at(&s.page, PAGE_SIZE - 1)?, 0x42);
        cpu_fault_end(&s.lpt, VPN, true);
        assert_eq!(s.lpt.residency(VPN), Some(Residency::Host));
        Ok(())
    }

    #[test]
    fn failed_copy_keeps_the_device_page() -> Result {
        let s = setup(0x42)?;
        let page = DevicePage { dev: 7, pfn: 0x42 };
        s.lpt.insert(VPN, Residency::Device(page))?;
        assert_eq!(
            cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page),
            Err(EIO)
        );
        assert_eq!(s.lpt.residency(VPN), Some(Residency::Device(page)));
        // Nothing was freed; the entry is not left busy.
        assert_eq!(
            s.fake.take_ops(),
            [Op::Unmap(VA, 0x42), Op::CopyToHost(0x42)]
        );
        let guard = s.lpt.lock();
        assert!(!guard.get(VPN).map(|m| m.busy()).unwrap_or(true));
        Ok(())
    }

    #[test]
    fn page_of_a_detached_device_is_an_error() -> Result {
        let s = setup(u64::MAX)?;
        s.lpt
            .insert(VPN, Residency::Device(DevicePage { dev: 9, pfn: 1 }))?;
        assert_eq!(
            cpu_fault_begin(&s.lpt, &s.devices, VPN, VA, &s.page),
            Err(EIO)
        );
        assert_eq!(s.fake.take_ops().len(), 0);
        Ok(())
    }
}
