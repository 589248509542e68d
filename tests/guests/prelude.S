# Shared by the tiny test guests: entered in 64-bit mode with RSI -> zero page.
        .code64
        .set COM1, 0x3f8
        .set I8042_CMD, 0x64

# puts: print the NUL-terminated string at %rbx. Clobbers al, dx, rbx.
        .macro PUTS_FN
puts:   mov $COM1, %dx
1:      movb (%rbx), %al
        test %al, %al
        jz 2f
        out %al, (%dx)
        inc %rbx
        jmp 1b
2:      ret
        .endm

# puthex: print %rax as 16 hex digits. Clobbers rax, rcx, rdx, rdi.
        .macro PUTHEX_FN
puthex: mov $16, %ecx
# puthexn: print the top %ecx hex digits of %rax. Same clobbers.
puthexn:
        mov %rax, %rdi
1:      rol $4, %rdi
        mov %edi, %eax
        and $0xf, %eax
        cmp $10, %al
        jb 2f
        add $('a' - '0' - 10), %al
2:      add $'0', %al
        mov $COM1, %dx
        out %al, (%dx)
        dec %ecx
        jnz 1b
        ret
        .endm

# reset: ask the i8042 to pulse the reset line (a clean reboot for Ember).
        .macro RESET
        mov $I8042_CMD, %dx
        mov $0xfe, %al
        out %al, (%dx)
        hlt
        .endm
