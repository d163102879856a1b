/*
 * LD_PRELOAD shim for tests: makes the node's data directory fail the way a
 * file system does when it fills up or is remounted read-only under a
 * running process, and recover when space returns or it is writable again.
 * A test cannot always do either for real: mounting a small tmpfs to fill
 * needs root, and the kernel refuses to remount a file system read-only
 * while files on it are open for writing (what ext4 does with
 * errors=remount-ro).
 *
 * DIALTONE_TEST_FAULT_DIR  the directory whose files fail;
 * DIALTONE_TEST_FAULT_FLAG a file: the fault is on while it exists, checked
 *                          at every call, so a test switches it mid-run;
 * DIALTONE_TEST_FAULT      what the file system does while it is on:
 *   "full"      every write, sync or allocation of a file under the
 *               directory fails with ENOSPC (SQLite reports ENOSPC on a
 *               write as "database or disk is full"); opening, truncating
 *               and reading work, as they do on a full disk;
 *   "read-only" the same calls, and truncations and opens for writing,
 *               fail with EROFS, as the kernel's do after such a remount.
 * Other files (sockets, pipes, the terminal, files elsewhere) are untouched.
 * Both the plain and the 64-bit variants (pwrite64, ...) are wrapped: SQLite
 * and Rust's std call the 64-bit ones.
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

/* The errno the switched-on fault fails calls with; 0 while it is off. */
static int fault_now(void) {
    const char *flag = getenv("DIALTONE_TEST_FAULT_FLAG");
    const char *kind = getenv("DIALTONE_TEST_FAULT");
    struct stat st;
    if (flag == NULL || kind == NULL || stat(flag, &st) != 0) {
        return 0;
    }
    if (strcmp(kind, "full") == 0) {
        return ENOSPC;
    }
    if (strcmp(kind, "read-only") == 0) {
        return EROFS;
    }
    return 0;
}

static int under_fault_dir(const char *path) {
    const char *dir = getenv("DIALTONE_TEST_FAULT_DIR");
    size_t n;
    if (dir == NULL || path == NULL) {
        return 0;
    }
    n = strlen(dir);
    return strncmp(path, dir, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

/* What a call of kind `writes` (1: writes, syncs, allocation; 0: calls that
 * only a read-only file system refuses) on `fd` fails with now; 0: it runs. */
static int fault_on_fd(int fd, int writes) {
    char link[64];
    char path[4096];
    ssize_t n;
    int err = fault_now();
    if (err == 0 || (!writes && err != EROFS)) {
        return 0;
    }
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, path, sizeof path - 1);
    if (n < 0) {
        return 0;
    }
    path[n] = '\0';
    return under_fault_dir(path) ? err : 0;
}

static int fault_on_open(const char *path, int flags) {
    int err;
    if ((flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)) == 0) {
        return 0;
    }
    err = fault_now();
    return err == EROFS && under_fault_dir(path) ? err : 0;
}

#define REAL(name)                                                                       \
    static __typeof__(name) *real_##name;                                                \
    if (real_##name == NULL) {                                                           \
        real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name);                       \
    }

/* A wrapper of a call on a file descriptor that returns -1 and sets errno
 * on failure: failed under the fault, otherwise passed on to the real one. */
#define WRAP_FD(writes, ret, name, params, args)                                         \
    ret name params {                                                                    \
        int err;                                                                         \
        REAL(name);                                                                      \
        err = fault_on_fd(fd, writes);                                                   \
        if (err != 0) {                                                                  \
            errno = err;                                                                 \
            return -1;                                                                   \
        }                                                                                \
        return real_##name args;                                                         \
    }

WRAP_FD(1, ssize_t, write, (int fd, const void *buf, size_t count), (fd, buf, count))
WRAP_FD(1, ssize_t, writev, (int fd, const struct iovec *iov, int iovcnt), (fd, iov, iovcnt))
WRAP_FD(1, ssize_t, pwrite, (int fd, const void *buf, size_t count, off_t offset),
        (fd, buf, count, offset))
WRAP_FD(1, ssize_t, pwrite64, (int fd, const void *buf, size_t count, off64_t offset),
        (fd, buf, count, offset))
WRAP_FD(1, ssize_t, pwritev, (int fd, const struct iovec *iov, int iovcnt, off_t offset),
        (fd, iov, iovcnt, offset))
WRAP_FD(1, ssize_t, pwritev64, (int fd, const struct iovec *iov, int iovcnt, off64_t offset),
        (fd, iov, iovcnt, offset))
WRAP_FD(1, ssize_t, pwritev2,
        (int fd, const struct iovec *iov, int iovcnt, off_t offset, int flags),
        (fd, iov, iovcnt, offset, flags))
WRAP_FD(1, ssize_t, pwritev64v2,
        (int fd, const struct iovec *iov, int iovcnt, off64_t offset, int flags),
        (fd, iov, iovcnt, offset, flags))
WRAP_FD(1, int, fsync, (int fd), (fd))
WRAP_FD(1, int, fdatasync, (int fd), (fd))
WRAP_FD(1, int, sync_file_range, (int fd, off64_t offset, off64_t nbytes, unsigned int flags),
        (fd, offset, nbytes, flags))
WRAP_FD(1, int, fallocate, (int fd, int mode, off_t offset, off_t len), (fd, mode, offset, len))
WRAP_FD(1, int, fallocate64, (int fd, int mode, off64_t offset, off64_t len),
        (fd, mode, offset, len))
WRAP_FD(0, int, ftruncate, (int fd, off_t length), (fd, length))
WRAP_FD(0, int, ftruncate64, (int fd, off64_t length), (fd, length))

/* posix_fallocate returns the error number instead of setting errno. */
#define WRAP_POSIX_FALLOCATE(name, off)                                                  \
    int name(int fd, off offset, off len) {                                              \
        int err;                                                                         \
        REAL(name);                                                                      \
        err = fault_on_fd(fd, 1);                                                        \
        return err != 0 ? err : real_##name(fd, offset, len);                           \
    }

WRAP_POSIX_FALLOCATE(posix_fallocate, off_t)
WRAP_POSIX_FALLOCATE(posix_fallocate64, off64_t)

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

/* A wrapper of an open call (its mode argument is variadic): opening for
 * writing fails while the directory is read-only. */
#define WRAP_OPEN(name, params, args)                                                    \
    int name params {                                                                    \
        va_list ap;                                                                      \
        mode_t mode;                                                                     \
        int err;                                                                         \
        REAL(name);                                                                      \
        va_start(ap, flags);                                                             \
        mode = mode_arg(flags, ap);                                                      \
        va_end(ap);                                                                      \
        err = fault_on_open(path, flags);                                                \
        if (err != 0) {                                                                  \
            errno = err;                                                                 \
            return -1;                                                                   \
        }                                                                                \
        return real_##name args;                                                         \
    }

WRAP_OPEN(open, (const char *path, int flags, ...), (path, flags, mode))
WRAP_OPEN(open64, (const char *path, int flags, ...), (path, flags, mode))
WRAP_OPEN(openat, (int dirfd, const char *path, int flags, ...), (dirfd, path, flags, mode))
WRAP_OPEN(openat64, (int dirfd, const char *path, int flags, ...), (dirfd, path, flags, mode))
