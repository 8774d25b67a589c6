// flood: prints a text/plain header, then 64 KiB blocks of 'x' forever (stops with exit 1 once a write fails).
#include <stdio.h>
#include <string.h>

static char block[65536];

int main(void) {
    memset(block, 'x', sizeof block);
    fputs("Content-Type: text/plain\n\n", stdout);
    for (;;) {
        if (fwrite(block, 1, sizeof block, stdout) != sizeof block || fflush(stdout) != 0) {
            return 1;
        }
    }
}
