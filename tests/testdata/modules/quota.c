// quota: volume quota probe. argv[1] is the operation, the rest its
// arguments (see tests/testdata/modules/README.md). It always answers 200
// with one line saying what happened and the errno it got, by name, so
// tests can tell ENOSPC from EIO.
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *errname(int err) {
    switch (err) {
    case 0: return "OK";
    case ENOSPC: return "ENOSPC";
    case EDQUOT: return "EDQUOT";
    case EIO: return "EIO";
    case ERANGE: return "ERANGE";
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case EEXIST: return "EEXIST";
    case ENOENT: return "ENOENT";
    case EROFS: return "EROFS";
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    }
    static char buf[32];
    snprintf(buf, sizeof buf, "E%d", err);
    return buf;
}

static void answer(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void answer(const char *fmt, ...) {
    fputs("Content-Type: text/plain\n\n", stdout);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
}

// write PATH TOTAL CHUNK: writes TOTAL bytes ('x') in CHUNK-byte write(2)
// calls to PATH (created or truncated), stopping at the first error.
static int do_write(const char *path, long total, long chunk, int flags) {
    int fd = open(path, O_WRONLY | O_CREAT | flags, 0644);
    if (fd < 0) {
        answer("open %s", errname(errno));
        return 0;
    }
    char *buf = malloc(chunk);
    memset(buf, 'x', chunk);
    long done = 0;
    int werr = 0;
    while (done < total) {
        long n = total - done < chunk ? total - done : chunk;
        ssize_t w = write(fd, buf, n);
        if (w < 0) {
            werr = errno;
            break;
        }
        done += w;
    }
    int cerr = close(fd) == 0 ? 0 : errno;
    answer("wrote %ld write %s close %s", done, errname(werr), errname(cerr));
    return 0;
}

// create DIR COUNT: creates DIR/f0, DIR/f1, ... until COUNT or an error.
static int do_create(const char *dir, long count) {
    long i;
    int err = 0;
    for (i = 0; i < count; i++) {
        char p[4096];
        snprintf(p, sizeof p, "%s/f%ld", dir, i);
        int fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd < 0) {
            err = errno;
            break;
        }
        if (close(fd) != 0) {
            err = errno;
            break;
        }
    }
    answer("created %ld %s", i, errname(err));
    return 0;
}

// truncate PATH SIZE
static int do_truncate(const char *path, long size) {
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    if (fd < 0) {
        answer("open %s", errname(errno));
        return 0;
    }
    int terr = ftruncate(fd, size) == 0 ? 0 : errno;
    int cerr = close(fd) == 0 ? 0 : errno;
    answer("truncate %s close %s", errname(terr), errname(cerr));
    return 0;
}

// mtime PATH: creates PATH, writes to it and closes it, then reports its
// mtime by path; then opens it, sets its times with futimens to
// 1234567890.5 and reports fstat on that descriptor, then stat by path.
static int do_mtime(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, "x", 1) != 1) {
        answer("create %s", errname(errno));
        return 0;
    }
    struct stat st;
    int ferr = fstat(fd, &st) == 0 ? 0 : errno;
    long long fnew = (long long)st.st_mtim.tv_sec;
    if (close(fd) != 0) {
        answer("close %s", errname(errno));
        return 0;
    }
    int serr = stat(path, &st) == 0 ? 0 : errno;
    long long created = (long long)st.st_mtim.tv_sec;
    fd = open(path, O_RDWR);
    if (fd < 0) {
        answer("reopen %s", errname(errno));
        return 0;
    }
    struct timespec ts[2] = {{1234567890, 500000000}, {1234567890, 500000000}};
    int uerr = futimens(fd, ts) == 0 ? 0 : errno;
    struct stat fst;
    int f2err = fstat(fd, &fst) == 0 ? 0 : errno;
    close(fd);
    struct stat pst;
    int s2err = stat(path, &pst) == 0 ? 0 : errno;
    answer("new-fstat %lld %s stat %lld %s futimens %s fstat %lld.%09ld %s stat %lld.%09ld %s",
           fnew, errname(ferr), created, errname(serr), errname(uerr),
           (long long)fst.st_mtim.tv_sec, fst.st_mtim.tv_nsec, errname(f2err),
           (long long)pst.st_mtim.tv_sec, pst.st_mtim.tv_nsec, errname(s2err));
    return 0;
}

int main(int argc, char **argv) {
    const char *op = argc > 1 ? argv[1] : "";
    if (strcmp(op, "write") == 0 && argc == 5) {
        return do_write(argv[2], atol(argv[3]), atol(argv[4]), O_TRUNC);
    }
    if (strcmp(op, "append") == 0 && argc == 5) {
        return do_write(argv[2], atol(argv[3]), atol(argv[4]), O_APPEND);
    }
    if (strcmp(op, "create") == 0 && argc == 4) {
        return do_create(argv[2], atol(argv[3]));
    }
    if (strcmp(op, "truncate") == 0 && argc == 4) {
        return do_truncate(argv[2], atol(argv[3]));
    }
    if (strcmp(op, "rm") == 0 && argc == 3) {
        answer("rm %s", errname(unlink(argv[2]) == 0 ? 0 : errno));
        return 0;
    }
    if (strcmp(op, "mkdir") == 0 && argc == 3) {
        answer("mkdir %s", errname(mkdir(argv[2], 0755) == 0 ? 0 : errno));
        return 0;
    }
    if (strcmp(op, "mtime") == 0 && argc == 3) {
        return do_mtime(argv[2]);
    }
    printf("Status: 400 Bad Request\nContent-Type: text/plain\n\nusage: write|append PATH TOTAL CHUNK | create DIR N | truncate PATH SIZE | rm PATH | mkdir PATH | mtime PATH\n");
    return 0;
}
