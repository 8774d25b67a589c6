// files: file tool for volume tests: argv[1] is read|write|append|ls|symlink, argv[2] the path (see tests/testdata/modules/README.md).
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// fail answers with the given status and strerror(err) as a text/plain body.
static int fail(const char *status, int err) {
    printf("Status: %s\nContent-Type: text/plain\n\n%s\n", status, strerror(err));
    return 0;
}

static int do_read(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return fail("404 Not Found", errno);
    }
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    if (buf == NULL) {
        return fail("500 Internal Server Error", ENOMEM);
    }
    for (;;) {
        if (len == cap) {
            cap *= 2;
            char *nbuf = realloc(buf, cap);
            if (nbuf == NULL) {
                return fail("500 Internal Server Error", ENOMEM);
            }
            buf = nbuf;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) {
                int err = errno;
                fclose(f);
                return fail("500 Internal Server Error", err);
            }
            break;
        }
    }
    fclose(f);
    fputs("Content-Type: text/plain\n\n", stdout);
    if (len > 0) {
        fwrite(buf, 1, len, stdout);
    }
    free(buf);
    return 0;
}

static int do_write(const char *path, const char *mode) {
    FILE *f = fopen(path, mode);
    if (f == NULL) {
        return fail("500 Internal Server Error", errno);
    }
    char buf[65536];
    size_t n, total = 0;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) {
        if (fwrite(buf, 1, n, f) != n) {
            int err = errno;
            fclose(f);
            return fail("500 Internal Server Error", err);
        }
        total += n;
    }
    if (fclose(f) != 0) {
        return fail("500 Internal Server Error", errno);
    }
    printf("Content-Type: text/plain\n\nwrote %zu\n", total);
    return 0;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int do_ls(const char *path) {
    DIR *d = opendir(path);
    if (d == NULL) {
        return fail("404 Not Found", errno);
    }
    size_t cap = 64, len = 0;
    char **names = malloc(cap * sizeof *names);
    if (names == NULL) {
        return fail("500 Internal Server Error", ENOMEM);
    }
    struct dirent *e;
    errno = 0;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
            continue;
        }
        if (len == cap) {
            cap *= 2;
            char **nn = realloc(names, cap * sizeof *names);
            if (nn == NULL) {
                return fail("500 Internal Server Error", ENOMEM);
            }
            names = nn;
        }
        names[len] = strdup(e->d_name);
        if (names[len] == NULL) {
            return fail("500 Internal Server Error", ENOMEM);
        }
        len++;
        errno = 0;
    }
    if (errno != 0) {
        int err = errno;
        closedir(d);
        return fail("500 Internal Server Error", err);
    }
    closedir(d);
    qsort(names, len, sizeof *names, cmp_names);
    fputs("Content-Type: text/plain\n\n", stdout);
    for (size_t i = 0; i < len; i++) {
        printf("%s\n", names[i]);
    }
    return 0;
}

static int do_symlink(const char *target, const char *link) {
    if (symlink(target, link) != 0) {
        return fail("500 Internal Server Error", errno);
    }
    fputs("Content-Type: text/plain\n\nlinked\n", stdout);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fputs("Status: 400 Bad Request\nContent-Type: text/plain\n\n"
              "usage: ?read&PATH | ?write&PATH | ?append&PATH | ?ls&DIR | ?symlink&TARGET&LINK\n",
              stdout);
        return 0;
    }
    const char *cmd = argv[1], *path = argv[2];
    if (strcmp(cmd, "read") == 0) {
        return do_read(path);
    } else if (strcmp(cmd, "write") == 0) {
        return do_write(path, "wb");
    } else if (strcmp(cmd, "append") == 0) {
        return do_write(path, "ab");
    } else if (strcmp(cmd, "ls") == 0) {
        return do_ls(path);
    } else if (strcmp(cmd, "symlink") == 0) {
        if (argc < 4) {
            fputs("Status: 400 Bad Request\nContent-Type: text/plain\n\nusage: ?symlink&TARGET&LINK\n", stdout);
            return 0;
        }
        return do_symlink(path, argv[3]);
    }
    printf("Status: 400 Bad Request\nContent-Type: text/plain\n\nunknown command: %s\n", cmd);
    return 0;
}
