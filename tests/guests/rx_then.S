# Reads the UART receive register once (as every console driver does), says
# "ready", then, by THEN: 0 resets through the i8042, 1 triple-faults,
# 2 halts forever with interrupts off.
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
        .if THEN == 2
        cli
1:      hlt
        jmp 1b
        .endif
        RESET
        PUTS_FN
ready:  .asciz "ready\n"
