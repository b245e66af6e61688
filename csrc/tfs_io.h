/* tfs_io.h - the one system call the C side makes: write() to a file descriptor.
 * POSIX write() or the Windows C runtime's _write() (the descriptors Python's
 * os.open returns are C-runtime descriptors there, opened with O_BINARY). */
#ifndef TFS_IO_H
#define TFS_IO_H

#include <stddef.h>

#include "tfs_format.h" /* TFS_INLINE */

#ifdef _WIN32
#include <io.h>
/* _write takes an unsigned int count: callers pass at most 1 GiB at a time. */
static TFS_INLINE long long tfs_write(int fd, const void *p, size_t n)
{
    return _write(fd, p, (unsigned int)n);
}
#else
#include <unistd.h>
static TFS_INLINE long long tfs_write(int fd, const void *p, size_t n)
{
    return (long long)write(fd, p, n);
}
#endif

#endif
