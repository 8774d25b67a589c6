// stderr: writes argv[1] (missing or empty: 3) lines to stderr, then answers "ok".
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int lines = (argc > 1 && argv[1][0] != '\0') ? atoi(argv[1]) : 3;
    for (int i = 1; i <= lines; i++) {
        fprintf(stderr, "line %d to stderr\n", i);
    }
    fflush(stderr);
    fputs("Content-Type: text/plain\n\nok\n", stdout);
    return 0;
}
