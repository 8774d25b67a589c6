// sleep: sleeps argv[1] milliseconds (missing or empty: 1000; WASI poll_oneoff), then answers "slept".
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    long ms = (argc > 1 && argv[1][0] != '\0') ? atol(argv[1]) : 1000;
    if (ms > 0) {
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0) {
        }
    }
    fputs("Content-Type: text/plain\n\nslept\n", stdout);
    return 0;
}
