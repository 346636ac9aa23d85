/* fds.c -- small fd helpers the loop and the child setup share. */
#include "internal.h"

int pyse__make_nonblocking_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return pyse__fail("fcntl(%d): setting O_NONBLOCK", fd);
    flags = fcntl(fd, F_GETFD);
    if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
        return pyse__fail("fcntl(%d): setting FD_CLOEXEC", fd);
    return 0;
}

int pyse__drain(int fd, void (*consume)(void *arg, const unsigned char *bytes, size_t n),
                void *arg)
{
    unsigned char buf[4096];

    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0) {
            if (consume != NULL)
                consume(arg, buf, (size_t)n);
            continue;
        }
        if (n == 0)
            return 1;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        return -1;
    }
}

void pyse__close_keeping_errno(int fd)
{
    int saved_errno = errno;
    if (fd >= 0)
        (void)close(fd); /* cleanup after an error already being reported */
    errno = saved_errno;
}
