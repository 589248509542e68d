# The boot CPU wakes the others with INIT/SIPI; each prints its APIC ID and
# counts itself in; the boot CPU reports when all NCPUS are up.
# NCPUS is defined by the test before this file.
        .set COUNTER, 0x1f000
        .set ICR_LOW, 0xfee00300
        .set INIT_ALL_BUT_SELF, 0x000c4500
        .set SIPI_ALL_BUT_SELF, 0x000c4610   # vector 0x10 -> 0x10000

        .section .tramp, "ax"
        .code16
ap:     mov $0x1000, %ax
        mov %ax, %ds
        mov $1, %eax
        cpuid
        shr $24, %ebx
        add $'0', %bl
        mov %bl, %al
        mov $COM1, %dx
        out %al, (%dx)
        lock incw (COUNTER - 0x10000)
        cli
1:      hlt
        jmp 1b

        .text
        .code64
        .globl _start
_start: movl $0, COUNTER
        lea bsp(%rip), %rbx
        call puts
        mov $ICR_LOW, %eax
        movl $INIT_ALL_BUT_SELF, (%rax)
        mov $1000, %ecx
1:      dec %ecx
        jnz 1b
        movl $SIPI_ALL_BUT_SELF, (%rax)
        mov $5000000, %ecx
2:      cmpw $(NCPUS - 1), COUNTER
        je 3f
        dec %ecx
        jnz 2b
        lea timeout(%rip), %rbx
        call puts
        RESET
3:      lea allup(%rip), %rbx
        call puts
        RESET
        PUTS_FN
bsp:    .asciz "BSP up\n"
allup:  .asciz "\nALL UP\n"
timeout: .asciz "\nTIMEOUT\n"
