/* child.c -- what a freshly forked child does before anything else.
 *
 * Python forks (os.fork, so CPython's at-fork handlers run); then the child
 * calls in here at once.  The parent's loop was copied into the child by the
 * fork: its signal handlers would write into the parent's self-pipe, and its
 * fds (self-pipe, other children's heartbeat read ends) would keep pipes open
 * that must close when their owner dies.  ServerEngine leaves the child its
 * own heartbeat read end, so the child's heartbeat writes never fail when the
 * server dies: the caller passes that fd in close_fds. */
#include "internal.h"

#ifdef __linux__
#include <sys/prctl.h>
#endif

int pyse_child_after_fork(struct pyse_loop *loop, const int *close_fds, int count)
{
    int i, result = 0;

    pyse__orphan_forget();
    if (loop != NULL) {
        if (pyse_loop_release_signals(loop) < 0)
            result = -1;
        pyse__loop_abandon(loop);
    }
    for (i = 0; i < count; i++) {
        if (close_fds[i] >= 0 && close(close_fds[i]) < 0 && errno != EBADF)
            result = pyse__fail("close(%d): an fd the child does not own", close_fds[i]);
    }
    return result;
}

int pyse_set_parent_death_signal(int signo, int expected_ppid)
{
#ifdef __linux__
    if (prctl(PR_SET_PDEATHSIG, (unsigned long)signo, 0, 0, 0) < 0)
        return pyse__fail("prctl(PR_SET_PDEATHSIG, %d)", signo);
#else
    (void)signo;
#endif
    /* The parent may have died before prctl: then no signal will ever come. */
    return getppid() != expected_ppid ? 1 : 0;
}
