/* tfs_io.h - the system calls the C side makes: write() to a file descriptor, the
 * size of an open file (fstat), and preallocation of a file's blocks (Linux).  POSIX calls or the Windows C runtime's (the
 * descriptors Python's os.open returns are C-runtime descriptors there, opened with
 * O_BINARY). */
#ifndef TFS_IO_H
#define TFS_IO_H

#include <stddef.h>

#include "tfs_format.h" /* TFS_INLINE */

#include <stdint.h>

#ifdef _WIN32
#include <io.h>
#include <sys/stat.h>
#include <sys/types.h>
/* _write takes an unsigned int count: callers pass at most 1 GiB at a time. */
static TFS_INLINE long long tfs_write(int fd, const void *p, size_t n)
{
    return _write(fd, p, (unsigned int)n);
}
/* 0 and the file's size in *size, or -1 (errno set). */
static TFS_INLINE int tfs_file_size(int fd, int64_t *size)
{
    struct _stat64 st;
    if (_fstat64(fd, &st) != 0)
        return -1;
    *size = (int64_t)st.st_size;
    return 0;
}
static TFS_INLINE int tfs_preallocate(int fd, int64_t offset, int64_t len)
{
    (void)fd;
    (void)offset;
    (void)len;
    return -1;
}
#else
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
static TFS_INLINE long long tfs_write(int fd, const void *p, size_t n)
{
    return (long long)write(fd, p, n);
}
static TFS_INLINE int tfs_file_size(int fd, int64_t *size)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -1;
    *size = (int64_t)st.st_size;
    return 0;
}
/* Reserve the blocks of bytes [offset, offset + len) without changing the file's size
 * (the writes that follow then skip the file system's per-page allocation work);
 * -1 where the file system or the OS cannot, which callers ignore. */
static TFS_INLINE int tfs_preallocate(int fd, int64_t offset, int64_t len)
{
#if defined(__linux__) && defined(FALLOC_FL_KEEP_SIZE)
    return fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)len);
#else
    (void)fd;
    (void)offset;
    (void)len;
    return -1;
#endif
}
#endif

#endif
