/* SPDX-License-Identifier: MIT */
/*
 * Probes for uintr_conform that need exact control of RSP and RFLAGS, so they
 * are functions of their own (no compiler red zone below RSP to disturb).
 */
	.text

/* uint64_t testui_flags(uint64_t rflags): RFLAGS after TESTUI run with rflags loaded */
	.globl	testui_flags
	.type	testui_flags, @function
testui_flags:
	pushq	%rdi
	popfq
	.byte	0xf3, 0x0f, 0x01, 0xed		/* TESTUI */
	pushfq
	popq	%rax
	pushq	$0x202
	popfq
	ret
	.size	testui_flags, .-testui_flags

/*
 * uint64_t uiret_probe(uint64_t rflags): build a UIRET frame (RIP, RFLAGS, RSP
 * from low to high address) that returns to the next label with the current
 * RSP, execute UIRET, return the RFLAGS it produced.
 */
	.globl	uiret_probe
	.type	uiret_probe, @function
uiret_probe:
	movq	%rsp, %rax
	pushq	%rax				/* RSP */
	pushq	%rdi				/* RFLAGS */
	leaq	1f(%rip), %rcx
	pushq	%rcx				/* RIP */
	.byte	0xf3, 0x0f, 0x01, 0xec		/* UIRET */
1:	pushfq
	popq	%rax
	pushq	$0x202
	popfq
	ret
	.size	uiret_probe, .-uiret_probe

/*
 * void frame_probe(struct expect *out): record the RIP right after STUI, the
 * RSP and RFLAGS at STUI, then STUI.  A user interrupt already in UIRR is
 * delivered before the instruction at 1:, with exactly those values.
 */
	.globl	frame_probe
	.type	frame_probe, @function
frame_probe:
	leaq	1f(%rip), %rax
	movq	%rax, 0(%rdi)
	movq	%rsp, 8(%rdi)
	pushfq
	popq	%rax
	movq	%rax, 16(%rdi)
	.byte	0xf3, 0x0f, 0x01, 0xef		/* STUI */
1:	nop
	ret
	.size	frame_probe, .-frame_probe

/*
 * raw_entry: a bare UIHANDLER recording what the CPU pushed and where.
 * Only %rax is used, and saved; RFLAGS comes back from the frame with UIRET.
 */
	.globl	raw_entry
	.type	raw_entry, @function
raw_entry:
	movq	%rsp, raw_entry_rsp(%rip)
	pushq	%rax
	movq	8(%rsp), %rax
	movq	%rax, raw_vec(%rip)
	movq	16(%rsp), %rax
	movq	%rax, raw_rip(%rip)
	movq	24(%rsp), %rax
	movq	%rax, raw_rflags(%rip)
	movq	32(%rsp), %rax
	movq	%rax, raw_rsp(%rip)
	lock incq raw_count(%rip)
	popq	%rax
	addq	$8, %rsp
	.byte	0xf3, 0x0f, 0x01, 0xec		/* UIRET */
	.size	raw_entry, .-raw_entry

	.section .note.GNU-stack, "", @progbits
