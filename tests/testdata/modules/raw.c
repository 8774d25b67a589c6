// raw: copies stdin to stdout byte for byte, so a test's POST body is the module's whole CGI output.
#include <stdio.h>

int main(void) {
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) {
        if (fwrite(buf, 1, n, stdout) != n) {
            return 1;
        }
    }
    if (ferror(stdin)) {
        return 1;
    }
    return fflush(stdout) == 0 ? 0 : 1;
}
