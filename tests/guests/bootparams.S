# Prints the command line and the e820 map that boot_params (RSI) carries.
        .set CMD_LINE_PTR, 0x228
        .set E820_ENTRIES, 0x1e8
        .set E820_TABLE, 0x2d0
        .text
        .globl _start
_start: mov %rsi, %r12
        lea l_cmd(%rip), %rbx
        call puts
        mov CMD_LINE_PTR(%r12), %ebx
        call puts
        lea l_nl(%rip), %rbx
        call puts
        movzbl E820_ENTRIES(%r12), %r13d
        lea E820_TABLE(%r12), %r14
next:   test %r13d, %r13d
        jz done
        lea l_e820(%rip), %rbx
        call puts
        mov (%r14), %rax
        call puthex
        lea l_sp(%rip), %rbx
        call puts
        mov 8(%r14), %rax
        call puthex
        lea l_sp(%rip), %rbx
        call puts
        mov 16(%r14), %eax
        call puthex
        lea l_nl(%rip), %rbx
        call puts
        add $20, %r14
        dec %r13d
        jmp next
done:   lea l_end(%rip), %rbx
        call puts
        RESET
        PUTS_FN
        PUTHEX_FN
l_cmd:  .asciz "CMDLINE "
l_e820: .asciz "E820 "
l_sp:   .asciz " "
l_nl:   .asciz "\n"
l_end:  .asciz "END\n"
