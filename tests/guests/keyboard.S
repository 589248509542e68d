# Says "ready", then prints every byte the i8042 hands over as two hex
# digits and a space, polling its status register (interrupts off); resets
# after the last byte of Ctrl-Alt-Del (Ctrl released: 0x9d in scan code
# set 1, which the controller translates to at power-on).
        .text
        .globl _start
_start: lea ready(%rip), %rbx
        call puts
poll:   mov $I8042_CMD, %dx
        in (%dx), %al
        test $1, %al
        jz poll
        mov $0x60, %dx
        in (%dx), %al
        movzbl %al, %esi
        mov %esi, %eax
        shr $4, %eax
        call hexdigit
        mov %esi, %eax
        call hexdigit
        mov $' ', %al
        out %al, (%dx)
        cmp $0x9d, %esi
        jne poll
        mov $'\n', %al
        out %al, (%dx)
        RESET
# hexdigit: print the low four bits of %eax. Leaves %dx at COM1.
hexdigit:
        and $0xf, %eax
        cmp $10, %al
        jb 1f
        add $('a' - '0' - 10), %al
1:      add $'0', %al
        mov $COM1, %dx
        out %al, (%dx)
        ret
        PUTS_FN
ready:  .asciz "ready\n"
