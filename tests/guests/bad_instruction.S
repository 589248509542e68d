# int3 at ring 0: an emulating host cannot run it (emulation failure);
# hardware KVM raises #BP, which the empty IDT turns into a triple fault.
# A crash either way.
        .text
        .globl _start
_start: int3
