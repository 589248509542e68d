# Says "ready", then prints a '.' after every 2000 turns of a busy loop,
# forever: output that stops while the guest is paused.
        .text
        .globl _start
_start: lea ready(%rip), %rbx
        call puts
        mov $COM1, %dx
1:      mov $2000, %ecx
2:      dec %ecx
        jnz 2b
        mov $'.', %al
        out %al, (%dx)
        jmp 1b
        PUTS_FN
ready:  .asciz "ready\n"
