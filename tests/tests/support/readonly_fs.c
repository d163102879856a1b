/*
 * LD_PRELOAD shim for tests: makes the node's data directory behave like a
 * file system remounted read-only under a running process (what ext4 does
 * with errors=remount-ro), which the test cannot do for real: the kernel
 * refuses to remount a file system read-only while files on it are open for
 * writing. While the file named by DIALTONE_TEST_READONLY_FLAG exists, every
 * write, sync, truncation or open-for-writing of a file under
 * DIALTONE_TEST_READONLY_DIR fails with EROFS, as the kernel's would; other
 * files (sockets, pipes, the terminal) are untouched. Removing the flag file
 * "remounts" read-write.
 *
 * Built by tests/tests/disk_full.rs with `cc -shared -fPIC`.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static int read_only_now(void) {
    const char *flag = getenv("DIALTONE_TEST_READONLY_FLAG");
    struct stat st;
    return flag != NULL && stat(flag, &st) == 0;
}

static int under_data_dir(const char *path) {
    const char *dir = getenv("DIALTONE_TEST_READONLY_DIR");
    size_t n;
    if (dir == NULL || path == NULL) {
        return 0;
    }
    n = strlen(dir);
    return strncmp(path, dir, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

static int refused_fd(int fd) {
    char link[64];
    char path[4096];
    ssize_t n;
    if (!read_only_now()) {
        return 0;
    }
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, path, sizeof path - 1);
    if (n < 0) {
        return 0;
    }
    path[n] = '\0';
    return under_data_dir(path);
}

static int refused_open(const char *path, int flags) {
    return (flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)) != 0 && read_only_now() &&
           under_data_dir(path);
}

#define REAL(name)                                                                       \
    static __typeof__(name) *real_##name;                                                \
    if (real_##name == NULL) {                                                           \
        real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name);                       \
    }

/* A wrapper of a call on a file descriptor: refused with EROFS under the
 * flag, otherwise passed on to the real one. */
#define WRAP_FD(ret, name, params, args)                                                 \
    ret name params {                                                                    \
        REAL(name);                                                                      \
        if (refused_fd(fd)) {                                                            \
            errno = EROFS;                                                               \
            return -1;                                                                   \
        }                                                                                \
        return real_##name args;                                                         \
    }

WRAP_FD(ssize_t, write, (int fd, const void *buf, size_t count), (fd, buf, count))
WRAP_FD(ssize_t, writev, (int fd, const struct iovec *iov, int iovcnt), (fd, iov, iovcnt))
WRAP_FD(ssize_t, pwrite, (int fd, const void *buf, size_t count, off_t offset),
        (fd, buf, count, offset))
WRAP_FD(ssize_t, pwrite64, (int fd, const void *buf, size_t count, off64_t offset),
        (fd, buf, count, offset))
WRAP_FD(int, fsync, (int fd), (fd))
WRAP_FD(int, fdatasync, (int fd), (fd))
WRAP_FD(int, ftruncate, (int fd, off_t length), (fd, length))
WRAP_FD(int, ftruncate64, (int fd, off64_t length), (fd, length))
WRAP_FD(int, fallocate, (int fd, int mode, off_t offset, off_t len), (fd, mode, offset, len))

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

/* A wrapper of an open call (its mode argument is variadic): opening for
 * writing under the flag is refused with EROFS. */
#define WRAP_OPEN(name, params, args)                                                    \
    int name params {                                                                    \
        va_list ap;                                                                      \
        mode_t mode;                                                                     \
        REAL(name);                                                                      \
        va_start(ap, flags);                                                             \
        mode = mode_arg(flags, ap);                                                      \
        va_end(ap);                                                                      \
        if (refused_open(path, flags)) {                                                 \
            errno = EROFS;                                                               \
            return -1;                                                                   \
        }                                                                                \
        return real_##name args;                                                         \
    }

WRAP_OPEN(open, (const char *path, int flags, ...), (path, flags, mode))
WRAP_OPEN(open64, (const char *path, int flags, ...), (path, flags, mode))
WRAP_OPEN(openat, (int dirfd, const char *path, int flags, ...), (dirfd, path, flags, mode))
WRAP_OPEN(openat64, (int dirfd, const char *path, int flags, ...), (dirfd, path, flags, mode))
