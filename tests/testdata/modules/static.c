// static: serves the file PATH_INFO names under /assets, byte for byte,
// with a Content-Type from its extension; 404 if it cannot be opened.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *type_of(const char *p) {
    const char *dot = strrchr(p, '.');
    if (!dot) return "application/octet-stream";
    if (strcmp(dot, ".png") == 0) return "image/png";
    if (strcmp(dot, ".txt") == 0) return "text/plain";
    if (strcmp(dot, ".html") == 0) return "text/html";
    return "application/octet-stream";
}

int main(void) {
    const char *info = getenv("PATH_INFO");
    char path[1024];
    snprintf(path, sizeof path, "/assets%s", info ? info : "/");
    FILE *f = fopen(path, "rb");
    if (!f) {
        printf("Status: 404 Not Found\nContent-Type: text/plain\n\n%s: %s\n", path, strerror(errno));
        return 0;
    }
    printf("Content-Type: %s\n\n", type_of(path));
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        fwrite(buf, 1, n, stdout);
    }
    fclose(f);
    return 0;
}
