# Prints a line on COM1, then resets through the i8042.
        .text
        .globl _start
_start: lea msg(%rip), %rbx
        call puts
        RESET
        PUTS_FN
msg:    .asciz "Hello from a tiny guest\n"
