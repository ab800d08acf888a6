/*
 * cpuprobe: report which CPU features the guest really has, as one JSON line.
 *
 * For every feature the harness knows (harness/features.py keeps the same table)
 * it prints the CPUID bit, and for the features a library OS executes from user
 * space (FSGSBASE, RDRAND, UINTR) it executes the instructions and says "ok" or why
 * not. A feature advertised in CPUID but disabled by the kernel (CR4.FSGSBASE
 * clear) raises SIGILL; the probe catches it and reports "sigill" instead of
 * dying, so the harness can name the missing piece.
 *
 * It must not change any state visible after it exits and touches no files.
 */
#include <cpuid.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

struct feature {
	const char *name;
	unsigned int leaf, subleaf;
	int reg; /* 0 eax, 1 ebx, 2 ecx, 3 edx */
	unsigned int bit;
};

static const struct feature features[] = {
	{ "fsgsbase", 7, 0, 1, 0 },  { "rdrand", 1, 0, 2, 30 }, { "rdseed", 7, 0, 1, 18 },
	{ "avx2", 7, 0, 1, 5 },      { "rdpid", 7, 0, 2, 22 },  { "x2apic", 1, 0, 2, 21 },
	{ "uintr", 7, 0, 3, 5 },
};

static sigjmp_buf fault_jmp;

static void on_sigill(int sig)
{
	siglongjmp(fault_jmp, sig);
}

static int cpuid_bit(const struct feature *f)
{
	unsigned int r[4] = { 0, 0, 0, 0 };

	if (__get_cpuid_max(0, NULL) < f->leaf)
		return 0;
	__cpuid_count(f->leaf, f->subleaf, r[0], r[1], r[2], r[3]);
	return (r[f->reg] >> f->bit) & 1;
}

/*
 * Write and read back the GS base. glibc keeps TLS in FS, so GS is free to
 * clobber; the old value is restored before returning. RDFSBASE is only read
 * and compared with nothing: executing it is the test.
 */
static const char *try_fsgsbase(void)
{
	uint64_t old, val, fs;
	const uint64_t pattern = 0x00007f1234560000ULL;

	if (sigsetjmp(fault_jmp, 1))
		return "sigill";
	__asm__ volatile("rdgsbase %0" : "=r"(old));
	__asm__ volatile("wrgsbase %0" : : "r"(pattern));
	__asm__ volatile("rdgsbase %0" : "=r"(val));
	__asm__ volatile("wrgsbase %0" : : "r"(old));
	__asm__ volatile("rdfsbase %0" : "=r"(fs));
	if (val != pattern)
		return "readback-mismatch";
	if (fs == 0)
		return "fsbase-zero";
	return "ok";
}

/* RDRAND may transiently fail (CF=0); the SDM suggests retrying ten times. */
static const char *try_rdrand(void)
{
	uint64_t v1 = 0, v2 = 0;
	unsigned char ok1 = 0, ok2 = 0;
	int i;

	if (sigsetjmp(fault_jmp, 1))
		return "sigill";
	for (i = 0; i < 10 && !ok1; i++)
		__asm__ volatile("rdrand %0; setc %1" : "=r"(v1), "=qm"(ok1));
	for (i = 0; i < 10 && !ok2; i++)
		__asm__ volatile("rdrand %0; setc %1" : "=r"(v2), "=qm"(ok2));
	if (!ok1 || !ok2)
		return "no-entropy";
	if (v1 == v2)
		return "repeated-value";
	return "ok";
}

/*
 * TESTUI (F3 0F 01 ED) raises #UD unless the kernel set CR4.UINTR, which on Debian's
 * kernel only the project's uintr module does: "ok" means the feature is usable. It
 * reads UIF into CF and changes nothing. The bytes are spelled out so any assembler
 * takes them.
 */
static const char *try_uintr(void)
{
	unsigned char uif = 0;

	if (sigsetjmp(fault_jmp, 1))
		return "sigill";
	__asm__ volatile(".byte 0xf3, 0x0f, 0x01, 0xed; setc %0" : "=qm"(uif) : : "cc");
	(void)uif;
	return "ok";
}

int main(void)
{
	struct sigaction sa;
	char vendor[13];
	unsigned int eax, ebx, ecx, edx;
	size_t i;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_sigill;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGILL, &sa, NULL) != 0) {
		perror("cpuprobe: sigaction");
		return 1;
	}

	__cpuid(0, eax, ebx, ecx, edx);
	memcpy(vendor, &ebx, 4);
	memcpy(vendor + 4, &edx, 4);
	memcpy(vendor + 8, &ecx, 4);
	vendor[12] = '\0';

	printf("{\"vendor\": \"%s\", \"cpuid\": {", vendor);
	for (i = 0; i < sizeof(features) / sizeof(features[0]); i++)
		printf("%s\"%s\": %s", i ? ", " : "", features[i].name,
		       cpuid_bit(&features[i]) ? "true" : "false");
	/* Executing an instruction CPUID denies would be a test of the emulator's
	 * #UD, not of the feature, so those report "absent" without running. */
	printf("}, \"executed\": {\"fsgsbase\": \"%s\", \"rdrand\": \"%s\", \"uintr\": \"%s\"}}\n",
	       cpuid_bit(&features[0]) ? try_fsgsbase() : "absent",
	       cpuid_bit(&features[1]) ? try_rdrand() : "absent",
	       cpuid_bit(&features[6]) ? try_uintr() : "absent");
	return 0;
}
