# Writes the i8042's configuration byte, says "ready", then prints every byte the i8042 hands over as two hex
# digits and a space, polling its status register (interrupts off); resets
# after the last byte of Ctrl-Alt-Del (Ctrl released: 0x9d in scan code
# set 1, which the controller translates to at power-on).
        .text
        .globl _start
_start: mov $I8042_CMD, %dx             # as a driver does: the config byte
        mov $0x60, %al                  # (interrupts, translation on)
        out %al, (%dx)
        mov $0x60, %dx
        mov $0x65, %al
        out %al, (%dx)
        lea ready(%rip), %rbx
        call puts
poll:   mov $I8042_CMD, %dx
        in (%dx), %al
        test $1, %al
        jz poll
        mov $0x60, %dx
        in (%dx), %al
        movzbl %al, %esi
        mov %rsi, %rax
        shl $56, %rax
        mov $2, %ecx
        call puthexn
        mov $' ', %al
        out %al, (%dx)
        cmp $0x9d, %esi
        jne poll
        mov $'\n', %al
        out %al, (%dx)
        RESET
        PUTHEX_FN
        PUTS_FN
ready:  .asciz "ready\n"
