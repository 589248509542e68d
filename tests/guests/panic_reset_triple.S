# Raises pvpanic, then pulses the i8042 reset line, then triple-faults: the
# first event is the VM's end, whatever the later ones race to report.
        .set PVPANIC, 0x505
        .text
        .globl _start
_start: mov $PVPANIC, %dx
        mov $1, %al
        out %al, (%dx)
        mov $I8042_CMD, %dx
        mov $0xfe, %al
        out %al, (%dx)
        movabs $0x8000000000, %rax
        mov (%rax), %rax
        hlt
