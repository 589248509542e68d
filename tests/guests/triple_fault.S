# Reads an unmapped address with an empty IDT: #PF -> #GP -> #DF -> shutdown.
        .text
        .globl _start
_start: lea msg(%rip), %rbx
        call puts
        movabs $0x8000000000, %rax
        mov (%rax), %rax
        hlt
        PUTS_FN
msg:    .asciz "about to triple fault\n"
