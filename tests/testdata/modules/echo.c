// echo: reads the whole request body, then answers it back as application/octet-stream.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    if (buf == NULL) {
        return 1;
    }
    for (;;) {
        if (len == cap) {
            cap *= 2;
            char *nbuf = realloc(buf, cap);
            if (nbuf == NULL) {
                return 1;
            }
            buf = nbuf;
        }
        size_t n = fread(buf + len, 1, cap - len, stdin);
        len += n;
        if (n == 0) {
            if (ferror(stdin)) {
                return 1;
            }
            break;
        }
    }
    fputs("Content-Type: application/octet-stream\n\n", stdout);
    if (len > 0 && fwrite(buf, 1, len, stdout) != len) {
        return 1;
    }
    return fflush(stdout) == 0 ? 0 : 1;
}
