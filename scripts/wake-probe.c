/* What a wait costs the work after it on this machine (docs/BENCHMARKS.md, "Stretched naps,
 * 1 MiB direct writes"): a reader blocks on a pipe N times; after each wake-up it reads W KiB of
 * its own memory (one byte per 64-byte line). The writer sends one byte every G microseconds.
 * Prints the reader's CPU time per wake-up (wait4) and its voluntary context switches.
 *
 *   cc -O2 -o /tmp/wake-probe scripts/wake-probe.c
 *   for g in 0 50 200 1000 5000; do /tmp/wake-probe 1000 $g 4096; done
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s WAKEUPS GAP_US WORK_KIB\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[1]), gap = atoi(argv[2]), work = atoi(argv[3]);
    int p[2];
    if (pipe(p) != 0) return 1;
    pid_t r = fork();
    if (r == 0) {
        close(p[1]);
        size_t sz = (size_t)work * 1024;
        char *m = malloc(sz + 1), b;
        memset(m, 1, sz + 1);
        volatile unsigned s = 0;
        for (int i = 0; i < n; i++) {
            if (read(p[0], &b, 1) != 1) break;
            for (size_t j = 0; j < sz; j += 64) s += m[j];
        }
        _exit(0);
    }
    close(p[0]);
    struct timespec ts = {0, gap * 1000L};
    for (int i = 0; i < n; i++) {
        if (write(p[1], "x", 1) != 1) return 1;
        if (gap) nanosleep(&ts, 0);
    }
    close(p[1]);
    int st;
    struct rusage ru;
    wait4(r, &st, 0, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("gap %d us, %d KiB touched: %.1f us of reader CPU per wake-up, %ld waits\n", gap, work, cpu / n * 1e6, ru.ru_nvcsw);
    return 0;
}
