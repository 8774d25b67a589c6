// burn: busy-loops for argv[1] milliseconds of wall-clock time (missing or
// empty: 100), then answers "burned". A CPU burner for budget tests: nearly
// all the time is CPU.
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    long ms = (argc > 1 && argv[1][0] != '\0') ? atol(argv[1]) : 100;
    long long end = now_ns() + (long long)ms * 1000000LL;
    volatile unsigned long x = 0;
    while (now_ns() < end) {
        for (int i = 0; i < 10000; i++) {
            x += i;
        }
    }
    printf("Content-Type: text/plain\n\nburned %ld%s\n", ms, x == 1 ? "" : "");
    return 0;
}
