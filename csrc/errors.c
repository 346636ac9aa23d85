/* errors.c -- what the last failed call of this thread was attempting.
 *
 * Two threads of one process may call into the core at once (a worker's
 * control thread and its hook thread, a test and a loop), so the context is
 * thread-local: a failure in one thread never rewrites the message another
 * thread is about to read.  The message is formatted at the failure, with
 * the pid or fd concerned, as tini does ("waitpid(4242)"), and errno is
 * preserved across the formatting so the caller still sees the syscall's. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char t_context[256];

int pyse__fail(const char *fmt, ...)
{
    int saved_errno = errno;
    va_list args;

    va_start(args, fmt);
    (void)vsnprintf(t_context, sizeof t_context, fmt, args);
    va_end(args);
    errno = saved_errno;
    return -1;
}

const char *pyse_error_context(void)
{
    return t_context;
}
