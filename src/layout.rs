//! Every guest-physical address, I/O port and IRQ number Ember uses, each
//! with the reason it is where it is. Nothing else in Ember names one.

/// Guest page size.
pub const PAGE_SIZE: u64 = 0x1000;

// ---- Low memory: boot structures written by Ember before the first KVM_RUN.
/// GDT for the 64-bit entry (Linux boot protocol wants flat __BOOT_CS/__BOOT_DS).
pub const GDT_ADDR: u64 = 0x500;
/// An empty IDT: the kernel installs its own before enabling interrupts.
pub const IDT_ADDR: u64 = 0x520;
/// setup_data (boot protocol 2.09+) chained from the zero page: a random
/// seed for the guest kernel's RNG (SETUP_RNG_SEED).
pub const SETUP_DATA_ADDR: u64 = 0x6000;
/// The "zero page": struct boot_params handed to the kernel in RSI.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack top for the boot vCPU (grows down, below the page tables).
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// Identity page tables: PML4, one PDPT, four PDs of 2 MiB pages = 4 GiB,
/// enough to reach the LAPIC/IOAPIC pages a tiny guest may touch.
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
pub const PD_COUNT: u64 = 4;
/// The kernel command line (NUL-terminated).
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Room for the command line: Linux x86 COMMAND_LINE_SIZE, NUL included.
pub const CMDLINE_MAX: usize = 2048;
/// End of conventional memory: the EBDA starts here on a PC, so e820 stops
/// the first RAM range at this address.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP floating pointer: at the start of the last KiB of base memory,
/// the second place Linux's MP-table scan looks (x86_64/mptable.rs says
/// why the place matters).
pub const MP_FLOATING_POINTER_ADDR: u64 = EBDA_START;
/// The BIOS area, reserved in e820: the ACPI tables and the MP table.
pub const BIOS_AREA_START: u64 = 0xe0000;
pub const BIOS_AREA_END: u64 = 0x100000;
/// ACPI tables (RSDP first) in the BIOS read-only area that Linux scans
/// for "RSD PTR " when boot_params carries no RSDP address.
pub const ACPI_START: u64 = BIOS_AREA_START;
pub const ACPI_END: u64 = 0xf0000;
/// The MP configuration table, in the upper half of the BIOS area (e820
/// reserved, like the ACPI tables).
pub const MPTABLE_CONFIG_ADDR: u64 = 0xf0000;
pub const MPTABLE_CONFIG_END: u64 = BIOS_AREA_END;
/// What Ember writes below 1 MiB after the kernel is loaded: a kernel
/// segment overlapping any of these would be silently overwritten.
pub const BOOT_RESERVED: [(u64, u64, &str); 9] = [
    (GDT_ADDR, IDT_ADDR + 0x100, "the GDT and IDT"),
    (
        SETUP_DATA_ADDR,
        SETUP_DATA_ADDR + PAGE_SIZE,
        "the setup data",
    ),
    (ZERO_PAGE_ADDR, ZERO_PAGE_ADDR + PAGE_SIZE, "the zero page"),
    (
        BOOT_STACK_TOP & !(PAGE_SIZE - 1),
        PML4_ADDR,
        "the boot stack",
    ),
    (PML4_ADDR, PD_ADDR + PD_COUNT * PAGE_SIZE, "the page tables"),
    (
        CMDLINE_ADDR,
        CMDLINE_ADDR + CMDLINE_MAX as u64,
        "the command line",
    ),
    (
        MP_FLOATING_POINTER_ADDR,
        MP_FLOATING_POINTER_ADDR + 16,
        "the MP floating pointer",
    ),
    (ACPI_START, ACPI_END, "the ACPI tables"),
    (MPTABLE_CONFIG_ADDR, MPTABLE_CONFIG_END, "the MP table"),
];
/// Lowest address a kernel may load at (1 MiB, HIMEM_START).
pub const HIMEM_START: u64 = 0x100000;

// ---- The MMIO gap below 4 GiB: no RAM here, devices only.
/// Guest RAM above this address moves to 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Virtio-mmio windows, one 4 KiB window per device.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC and local APIC, where KVM's in-kernel irqchip emulates them.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM's TSS and identity-map pages (needed on Intel VMX): 3 pages just
/// below the top of the gap's BIOS area, away from everything above.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

// ---- I/O ports.
/// COM1, the console: 8 byte-wide 8250 registers.
pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_PORT_LEN: u64 = 8;
/// i8042 data port 0x60 .. command port 0x64: the keyboard, and the reset
/// line for `reboot=k`.
pub const I8042_PORT: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;
/// pvpanic, at QEMU's default port, declared in the DSDT as QEMU0001.
pub const PVPANIC_PORT: u64 = 0x505;
/// ACPI hardware-reduced sleep control and status registers (FADT), one
/// device covering both ports.
pub const ACPI_SLEEP_CONTROL_PORT: u64 = 0x510;
pub const ACPI_SLEEP_STATUS_PORT: u64 = 0x511;
pub const ACPI_SLEEP_PORT_LEN: u64 = 2;

// ---- IRQs (GSIs on the in-kernel IOAPIC).
/// The i8042's keyboard IRQ (ISA IRQ 1).
pub const I8042_IRQ: u32 = 1;
/// COM1's ISA IRQ.
pub const COM1_IRQ: u32 = 4;
/// First IRQ for virtio-mmio devices; one each, upward.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last usable IOAPIC pin (KVM's IOAPIC has 24).
pub const IRQ_MAX: u32 = 23;
/// Virtio devices that fit: one IRQ each from VIRTIO_IRQ_BASE to IRQ_MAX.
pub const MAX_VIRTIO_DEVICES: usize = (IRQ_MAX - VIRTIO_IRQ_BASE + 1) as usize;

/// MMIO window and IRQ of virtio device `index`.
pub fn virtio_slot(index: usize) -> (u64, u32) {
    (
        VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE,
        VIRTIO_IRQ_BASE + index as u32,
    )
}

/// Highest number of vCPUs the MADT can describe with 8-bit APIC IDs
/// (255 is the broadcast ID).
pub const MAX_CPUS: u8 = 254;
