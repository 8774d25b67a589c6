// guestbook: a POST appends its body as one line to /data/guestbook.txt;
// every request answers with the whole book. For writable volumes (MFS).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

int main(void) {
    const char *method = getenv("REQUEST_METHOD");
    if (method && strcmp(method, "POST") == 0) {
        char buf[4096];
        size_t n = fread(buf, 1, sizeof buf - 1, stdin);
        buf[n] = '\0';
        for (size_t i = 0; i < n; i++) {
            if (buf[i] == '\n' || buf[i] == '\r') {
                buf[i] = ' ';
            }
        }
        FILE *f = fopen("/data/guestbook.txt", "a");
        if (!f) {
            printf("Status: 500 Internal Server Error\nContent-Type: text/plain\n\nopen: %s\n", strerror(errno));
            return 0;
        }
        fprintf(f, "%s\n", buf);
        fclose(f);
    }
    printf("Content-Type: text/plain\n\n");
    FILE *f = fopen("/data/guestbook.txt", "r");
    if (f) {
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
            fwrite(buf, 1, n, stdout);
        }
        fclose(f);
    }
    return 0;
}
