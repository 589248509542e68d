# Reads the UART receive register once (as every console driver does), says
# "ready", then, by THEN: 0 resets through the i8042, 1 triple-faults,
# 2 halts forever with interrupts off, 3 powers off through ACPI S5.
        .text
        .globl _start
_start: mov $COM1, %dx
        in (%dx), %al
        lea ready(%rip), %rbx
        call puts
        .if THEN == 1
        movabs $0x8000000000, %rax
        mov (%rax), %rax
        .endif
        .if THEN == 3
        mov $0x510, %dx
        mov $((5 << 2) | (1 << 5)), %al
        out %al, (%dx)
        .endif
        .if THEN == 2
        cli
1:      hlt
        jmp 1b
        .endif
        RESET
        PUTS_FN
ready:  .asciz "ready\n"
