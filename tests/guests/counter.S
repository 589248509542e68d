# Counts in %r12 and in memory, polling COM1 for input on every turn (a
# port read each time, so a pause often lands on an I/O exit), and prints
# "n=<r12> m=<memory count>" every 0x400 turns. Input 'q' resets.
        .set LSR, 0x3fd
        .text
        .globl _start
_start: xor %r12, %r12
        lea ready(%rip), %rbx
        call puts
turn:   inc %r12
        incq count(%rip)
        mov $LSR, %dx
        in (%dx), %al
        test $1, %al
        jz 1f
        mov $COM1, %dx
        in (%dx), %al
        cmp $'q', %al
        jne 1f
        RESET
1:      test $0x3ff, %r12
        jnz turn
        lea n(%rip), %rbx
        call puts
        mov %r12, %rax
        call puthex
        lea m(%rip), %rbx
        call puts
        mov count(%rip), %rax
        call puthex
        mov $COM1, %dx
        mov $'\n', %al
        out %al, (%dx)
        jmp turn
        PUTS_FN
        PUTHEX_FN
ready:  .asciz "ready\n"
n:      .asciz "n="
m:      .asciz " m="
        .data
        .balign 8
count:  .quad 0
