/* SPDX-License-Identifier: MIT */
/*
 * uintr_entry: the address libuintr registers as UIHANDLER.
 *
 * At entry the CPU has pushed (architecture, "Delivery"):
 *   [rsp] = vector, [rsp+8] = RIP, [rsp+16] = RFLAGS, [rsp+24] = RSP
 * with UIF = 0.  The interrupted code may be anywhere, so every register the
 * C calling convention lets a callee clobber is saved here, plus the
 * extended state (XSAVE with all components enabled in XCR0, or FXSAVE),
 * then the thread's C handler runs and UIRET resumes the thread.  RFLAGS
 * needs no saving: UIRET reloads it from the frame.
 */
	.text
	.globl	uintr_entry
	.type	uintr_entry, @function
	.p2align 4
uintr_entry:
	pushq	%rax
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	pushq	%r8
	pushq	%r9
	pushq	%r10
	pushq	%r11
	pushq	%rbp
	movq	%rsp, %rbp
	/* 10 pushes: vector at 80(%rbp), struct uintr_frame at 88(%rbp) */
	subq	uintr_xsave_size(%rip), %rsp
	andq	$-64, %rsp
	cld				/* the ABI wants DF = 0 at a call */
	cmpb	$0, uintr_use_xsave(%rip)
	je	1f
	/* XRSTOR faults on a non-zero header beyond XSTATE_BV, which XSAVE leaves alone */
	xorl	%eax, %eax
	movq	%rax, 512(%rsp)
	movq	%rax, 520(%rsp)
	movq	%rax, 528(%rsp)
	movq	%rax, 536(%rsp)
	movq	%rax, 544(%rsp)
	movq	%rax, 552(%rsp)
	movq	%rax, 560(%rsp)
	movq	%rax, 568(%rsp)
	movl	$-1, %eax
	movl	$-1, %edx
	xsave64	(%rsp)
	jmp	2f
1:	fxsave64 (%rsp)
2:	leaq	88(%rbp), %rdi
	movq	80(%rbp), %rsi
	movq	uintr_tls_fn@gottpoff(%rip), %rax
	movq	%fs:(%rax), %rax
	testq	%rax, %rax
	jz	3f
	call	*%rax
3:	cmpb	$0, uintr_use_xsave(%rip)
	je	4f
	movl	$-1, %eax
	movl	$-1, %edx
	xrstor64 (%rsp)
	jmp	5f
4:	fxrstor64 (%rsp)
5:	movq	%rbp, %rsp
	popq	%rbp
	popq	%r11
	popq	%r10
	popq	%r9
	popq	%r8
	popq	%rdi
	popq	%rsi
	popq	%rdx
	popq	%rcx
	popq	%rax
	addq	$8, %rsp		/* drop the vector */
	.byte	0xf3, 0x0f, 0x01, 0xec	/* UIRET */
	.size	uintr_entry, .-uintr_entry

	.section .note.GNU-stack, "", @progbits
