# Says "ready", then halts with interrupts off: the vCPU sleeps in KVM.
        .text
        .globl _start
_start: lea ready(%rip), %rbx
        call puts
        cli
1:      hlt
        jmp 1b
        PUTS_FN
ready:  .asciz "ready\n"
