// exit: prints a response, flushes, then exits with the code in argv[1] (missing or empty: 0).
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int code = argc > 1 ? atoi(argv[1]) : 0;
    fputs("Content-Type: text/plain\n\nexiting\n", stdout);
    fflush(stdout);
    exit(code);
}
