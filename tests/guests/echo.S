# Says "ready", then echoes COM1 input in upper case until a newline.
        .set LSR, 0x3fd
        .text
        .globl _start
_start: lea ready(%rip), %rbx
        call puts
loop:   mov $LSR, %dx
1:      in (%dx), %al
        test $1, %al
        jz 1b
        mov $COM1, %dx
        in (%dx), %al
        cmp $'\n', %al
        je done
        cmp $'a', %al
        jb 2f
        cmp $'z', %al
        ja 2f
        sub $32, %al
2:      out %al, (%dx)
        jmp loop
done:   lea bye(%rip), %rbx
        call puts
        RESET
        PUTS_FN
ready:  .asciz "ready\n"
bye:    .asciz "\nbye\n"
