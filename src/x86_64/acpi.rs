//! ACPI tables: RSDP → XSDT → FADT (hardware-reduced, with the sleep
//! control register that powers the VM off) + DSDT (`_S5`, pvpanic) and
//! MADT (one local APIC per vCPU, the IOAPIC). Built with acpi_tables.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use ember_devices::sleep::S5_SLEEP_TYPE;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::layout::{
    ACPI_END, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT, ACPI_START, COM1_IRQ, COM1_PORT,
    COM1_PORT_LEN, I8042_IRQ, I8042_PORT, IOAPIC_ADDR, LAPIC_ADDR, PVPANIC_PORT, VIRTIO_MMIO_SIZE,
};
use ember_devices::i8042::COMMAND_OFFSET as I8042_COMMAND_OFFSET;

const OEM_ID: [u8; 6] = *b"EMBER ";
const OEM_TABLE_ID: [u8; 8] = *b"EMBERVM ";
const OEM_REVISION: u32 = 1;
/// IA-PC boot architecture flags: an 8042 (the keyboard), no VGA, no CMOS
/// RTC.
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// "KVMKVMKVM" would be the usual; any value names the hypervisor.
const HYPERVISOR_ID: u64 = u64::from_le_bytes(*b"EMBERVMM");

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables need {size:#x} bytes, more than the {room:#x} reserved for them")]
    TooLarge { size: u64, room: u64 },
    #[error("cannot write ACPI tables")]
    Write(#[from] GuestMemoryError),
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

/// The DSDT's AML: `\_S5` (the SLP_TYP the sleep control device expects),
/// COM1 and the i8042's keyboard (hardware-reduced ACPI has no legacy PIC,
/// so their IRQs reach Linux only through these declarations) and the
/// pvpanic device.
fn dsdt_aml(virtio: &[(u64, u32)]) -> Vec<u8> {
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE, &0u8, &0u8]),
    );

    let com1_port = COM1_PORT as u16;
    let com1_io = aml::IO::new(com1_port, com1_port, 1, COM1_PORT_LEN as u8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let com1_res = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let com1_uid = aml::Name::new("_UID".into(), &0u8);
    let com1_crs = aml::Name::new("_CRS".into(), &com1_res);
    let com1 = aml::Device::new("COM1".into(), vec![&com1_hid, &com1_uid, &com1_crs]);

    // A keyboard controller with no mouse: Linux's i8042 driver then
    // probes no aux port (PNP0303 only, no PNP0F13).
    let kbd_data = aml::IO::new(I8042_PORT as u16, I8042_PORT as u16, 1, 1);
    let kbd_command = I8042_PORT as u16 + I8042_COMMAND_OFFSET as u16;
    let kbd_cmd = aml::IO::new(kbd_command, kbd_command, 1, 1);
    let kbd_irq = aml::Interrupt::new(true, true, false, false, I8042_IRQ);
    let kbd_res = aml::ResourceTemplate::new(vec![&kbd_data, &kbd_cmd, &kbd_irq]);
    let kbd_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303"));
    let kbd_crs = aml::Name::new("_CRS".into(), &kbd_res);
    let kbd = aml::Device::new("PS2K".into(), vec![&kbd_hid, &kbd_crs]);

    let panic_port = PVPANIC_PORT as u16;
    let panic_io = aml::IO::new(panic_port, panic_port, 1, 1);
    let panic_res = aml::ResourceTemplate::new(vec![&panic_io]);
    let panic_hid = aml::Name::new("_HID".into(), &"QEMU0001");
    let panic_crs = aml::Name::new("_CRS".into(), &panic_res);
    let pvpanic = aml::Device::new("PEVT".into(), vec![&panic_hid, &panic_crs]);

    let mut v = bytes_of(&s5);
    let scope = aml::Scope::new("\\_SB_".into(), vec![&com1, &kbd, &pvpanic]);
    v.extend(bytes_of(&scope));
    for (i, &(base, irq)) in virtio.iter().enumerate() {
        v.extend(virtio_mmio_device(i, base, irq));
    }
    v
}

/// A virtio-mmio device as Linux's virtio_mmio driver matches it in ACPI
/// ("LNRO0005"): its 4 KiB window and its interrupt.
fn virtio_mmio_device(index: usize, base: u64, irq: u32) -> Vec<u8> {
    let mem = aml::Memory32Fixed::new(true, base as u32, VIRTIO_MMIO_SIZE as u32);
    let int = aml::Interrupt::new(true, true, false, false, irq);
    let res = aml::ResourceTemplate::new(vec![&mem, &int]);
    let hid = aml::Name::new("_HID".into(), &"LNRO0005");
    let uid = aml::Name::new("_UID".into(), &(index as u8));
    let crs = aml::Name::new("_CRS".into(), &res);
    let name = format!("V{index:03X}");
    let dev = aml::Device::new(name.as_str().into(), vec![&hid, &uid, &crs]);
    let scope = aml::Scope::new("\\_SB_".into(), vec![&dev]);
    bytes_of(&scope)
}

/// MADT flags offset and its PCAT_COMPAT bit: the VM has the dual 8259
/// PICs (KVM's irqchip). Without it Linux sets up no legacy ISA IRQs, and
/// COM1's IRQ 4 never reaches the serial driver.
const MADT_FLAGS_OFFSET: usize = 40;
const MADT_PCAT_COMPAT: u32 = 1;
/// Offset of the checksum byte in every ACPI table header.
const CHECKSUM_OFFSET: usize = 9;

/// acpi_tables' MADT has no setter for its flags: set the bit in the
/// serialized table and fix the checksum.
fn with_pcat_compat(mut madt: Vec<u8>) -> Vec<u8> {
    let flags = &mut madt[MADT_FLAGS_OFFSET..MADT_FLAGS_OFFSET + 4];
    let value = u32::from_le_bytes([flags[0], flags[1], flags[2], flags[3]]) | MADT_PCAT_COMPAT;
    flags.copy_from_slice(&value.to_le_bytes());
    madt[CHECKSUM_OFFSET] = 0;
    madt[CHECKSUM_OFFSET] = super::byte_checksum(&madt);
    madt
}

fn io_register(port: u64) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port)
}

/// Lays the tables out from ACPI_START and writes them; returns the RSDP's
/// address for boot_params.
pub fn write_tables(
    mem: &GuestMemoryMmap,
    cpus: u8,
    virtio: &[(u64, u32)],
) -> Result<GuestAddress, AcpiError> {
    let align = |a: u64| (a + 15) & !15;
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    // XSDT: header + 2 entries.
    let fadt_addr = align(xsdt_addr + 36 + 2 * 8);
    let dsdt_addr = align(fadt_addr + acpi_tables::fadt::FADT::len() as u64);

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&dsdt_aml(virtio));
    let madt_addr = align(dsdt_addr + dsdt.len() as u64);

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = (IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
    fadt.sleep_control_reg = io_register(ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_register(ACPI_SLEEP_STATUS_PORT);
    fadt.hypervisor_vendor_identity = HYPERVISOR_ID.into();
    let fadt = fadt.finalize();

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR as u32),
    );
    for cpu in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR as u32, 0));
    let madt = with_pcat_compat(bytes_of(&madt));

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);

    let end = madt_addr + madt.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooLarge {
            size: end - ACPI_START,
            room: ACPI_END - ACPI_START,
        });
    }
    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    for (addr, bytes) in [
        (rsdp_addr, bytes_of(&rsdp)),
        (xsdt_addr, bytes_of(&xsdt)),
        (fadt_addr, bytes_of(&fadt)),
        (dsdt_addr, dsdt.as_slice().to_vec()),
        (madt_addr, madt),
    ] {
        mem.write_slice(&bytes, GuestAddress(addr))?;
    }
    Ok(GuestAddress(rsdp_addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    fn checksum_ok(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    fn table_at(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let len: u32 = mem.read_obj(GuestAddress(addr + 4)).unwrap();
        let mut b = vec![0u8; len as usize];
        mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }

    #[test]
    fn tables_chain_from_rsdp_with_valid_checksums() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let rsdp = write_tables(&mem, 3, &[(0xd000_0000, 5)]).unwrap();
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, rsdp).unwrap();
        assert_eq!(&r[..8], b"RSD PTR ");
        assert!(checksum_ok(&r[..20]) && checksum_ok(&r));
        let xsdt_addr = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let xsdt = table_at(&mem, xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert!(checksum_ok(&xsdt));
        let fadt_addr = u64::from_le_bytes(xsdt[36..44].try_into().unwrap());
        let madt_addr = u64::from_le_bytes(xsdt[44..52].try_into().unwrap());
        let fadt = table_at(&mem, fadt_addr);
        assert_eq!(&fadt[..4], b"FACP");
        assert!(checksum_ok(&fadt));
        let madt = table_at(&mem, madt_addr);
        assert_eq!(&madt[..4], b"APIC");
        assert!(checksum_ok(&madt));
        // 44-byte header, 3 local APICs of 8 bytes, 1 IOAPIC of 12.
        assert_eq!(madt.len(), 44 + 3 * 8 + 12);
        assert_eq!(madt[MADT_FLAGS_OFFSET] & 1, 1, "PCAT_COMPAT");
        let dsdt_addr = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let dsdt = table_at(&mem, dsdt_addr);
        assert_eq!(&dsdt[..4], b"DSDT");
        assert!(checksum_ok(&dsdt));
        let aml = &dsdt[36..];
        assert!(aml.windows(4).any(|w| w == b"_S5_"));
        assert!(aml.windows(8).any(|w| w == b"QEMU0001"));
        assert!(aml.windows(4).any(|w| w == b"COM1"));
        assert!(aml.windows(8).any(|w| w == b"LNRO0005"));
        // The keyboard: "PNP0303" as a compressed EISA id, and the FADT's
        // IA-PC flag that says an 8042 is there (Linux probes it only then).
        assert!(aml.windows(5).any(|w| w == [0x0c, 0x41, 0xd0, 0x03, 0x03]));
        let iapc = u16::from_le_bytes([fadt[109], fadt[110]]);
        assert_eq!(iapc & IAPC_8042, IAPC_8042);
    }
}
