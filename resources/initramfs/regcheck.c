/*
 * ember-regcheck: may glibc in this guest use AVX, and if it does, do the
 * YMM registers it uses survive task switches and interrupts?
 *
 * The guest kit's check for the corruption in resources/USER-AVX-STATE.md:
 * on hosts that run guest user mode natively and emulate the guest kernel
 * (kvm_pvm), a kernel booted with "noxsave" cannot preserve the upper halves
 * of the YMM registers, yet user space sees the host's AVX; glibc's AVX2
 * string functions then return wrong results now and then. Ember passes
 * glibc a tunable there that turns its AVX code off.
 *
 * If glibc has AVX off (CPU_FEATURE_ACTIVE, which honours GLIBC_TUNABLES),
 * nothing here uses YMM and it says so. Otherwise it forks workers that
 * fill YMM0-7 with their own patterns, spin while timer interrupts switch
 * tasks, and compare every register after each spin.
 *
 * usage: ember-regcheck [SECONDS]   (default 2)
 * Prints one line: "regcheck: avx off for glibc", "regcheck: ymm ok, ..."
 * or "regcheck: ymm LOST ..."; exits 1 on a lost register, 0 otherwise.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/platform/x86.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 4

/* One spin: YMM0-7 = pattern + register number in every 64-bit lane, a
 * busy loop of about 2 ms, then each register compared with what was
 * loaded. Returns a bit mask of the registers that changed. */
static unsigned spin(uint64_t pattern)
{
	static uint64_t lanes[8][4] __attribute__((aligned(32)));
	static uint64_t back[8][4] __attribute__((aligned(32)));
	unsigned lost = 0;

	for (int r = 0; r < 8; r++)
		for (int l = 0; l < 4; l++)
			lanes[r][l] = pattern + r + ((uint64_t)l << 56);
	__asm__ volatile(
		"vmovdqa 0(%0), %%ymm0\n\t vmovdqa 32(%0), %%ymm1\n\t"
		"vmovdqa 64(%0), %%ymm2\n\t vmovdqa 96(%0), %%ymm3\n\t"
		"vmovdqa 128(%0), %%ymm4\n\t vmovdqa 160(%0), %%ymm5\n\t"
		"vmovdqa 192(%0), %%ymm6\n\t vmovdqa 224(%0), %%ymm7\n\t"
		"mov $3000000, %%ecx\n"
		"1:\n\t dec %%ecx\n\t jnz 1b\n\t"
		"vmovdqa %%ymm0, 0(%1)\n\t vmovdqa %%ymm1, 32(%1)\n\t"
		"vmovdqa %%ymm2, 64(%1)\n\t vmovdqa %%ymm3, 96(%1)\n\t"
		"vmovdqa %%ymm4, 128(%1)\n\t vmovdqa %%ymm5, 160(%1)\n\t"
		"vmovdqa %%ymm6, 192(%1)\n\t vmovdqa %%ymm7, 224(%1)\n\t"
		"vzeroupper\n"
		:
		: "r"(lanes), "r"(back)
		: "rcx", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5",
		  "xmm6", "xmm7");
	for (int r = 0; r < 8; r++)
		for (int l = 0; l < 4; l++)
			if (back[r][l] != lanes[r][l])
				lost |= 1u << r;
	return lost;
}

static int worker(int id, int seconds)
{
	time_t end = time(NULL) + seconds;
	uint64_t spins = 0;

	while (time(NULL) < end) {
		unsigned lost = spin(((uint64_t)id << 40) | (spins << 8));
		spins++;
		if (lost) {
			printf("regcheck: ymm LOST in worker %d after %llu spins (registers %#x)\n",
			       id, (unsigned long long)spins, lost);
			return 1;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	int seconds = argc > 1 ? atoi(argv[1]) : 2;
	int failed = 0, status;

	if (!CPU_FEATURE_ACTIVE(AVX) || !CPU_FEATURE_ACTIVE(AVX2)) {
		printf("regcheck: avx off for glibc (GLIBC_TUNABLES=%s)\n",
		       getenv("GLIBC_TUNABLES") ? getenv("GLIBC_TUNABLES") : "");
		return 0;
	}
	fflush(stdout);
	for (int i = 0; i < WORKERS; i++) {
		pid_t pid = fork();
		if (pid == 0) {
			fflush(stdout);
			_exit(worker(i + 1, seconds));
		}
		if (pid < 0) {
			perror("regcheck: fork");
			return 2;
		}
	}
	while (wait(&status) > 0)
		if (!WIFEXITED(status) || WEXITSTATUS(status))
			failed = 1;
	if (!failed)
		printf("regcheck: ymm ok in %d workers over %d s\n", WORKERS, seconds);
	return failed;
}
