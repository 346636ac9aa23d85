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
        pyse__close_child_fds(loop);
        /* The wakeup and lifeline fds belong to the caller, who closes them
         * through close_fds if the child must not keep them. */
        loop->wakeup_fd = loop->lifeline_fd = -1;
        loop->queue_len = loop->queue_head = 0;
    }
    for (i = 0; i < count; i++) {
        if (close_fds[i] >= 0 && close(close_fds[i]) < 0 && errno != EBADF)
            result = pyse__fail("closing an fd the child does not own");
    }
    return result;
}

int pyse_set_parent_death_signal(int signo, int expected_ppid)
{
#ifdef __linux__
    if (prctl(PR_SET_PDEATHSIG, (unsigned long)signo, 0, 0, 0) < 0)
        return pyse__fail("prctl(PR_SET_PDEATHSIG)");
#else
    (void)signo;
#endif
    /* The parent may have died before prctl: then no signal will ever come. */
    return getppid() != expected_ppid ? 1 : 0;
}

/* The orphan kill timer.  It is created ahead of need, because the moment
 * it must be armed may be inside a signal handler (PR_SET_PDEATHSIG's, while
 * another thread holds the GIL and the loop's thread is stuck waiting for
 * it): timer_settime(2) is async-signal-safe, timer_create(2) is not. */
static timer_t g_orphan_timer;
static struct itimerspec g_orphan_delay;
static volatile sig_atomic_t g_orphan_timer_ready = 0;
static volatile sig_atomic_t g_orphan_timer_armed = 0;
static volatile sig_atomic_t g_orphan_parent = 0;

static void seconds_to_itimerspec(double seconds, struct itimerspec *when)
{
    memset(when, 0, sizeof *when);
    when->it_value.tv_sec = (time_t)seconds;
    when->it_value.tv_nsec = (long)((seconds - (double)when->it_value.tv_sec) * 1e9);
    if (when->it_value.tv_sec == 0 && when->it_value.tv_nsec == 0)
        when->it_value.tv_nsec = 1; /* zero would disarm it */
}

/* A disarmed CLOCK_MONOTONIC timer whose expiry sends SIGKILL to us. */
static int create_kill_timer(timer_t *timer)
{
    struct sigevent sev;

    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGKILL;
    if (timer_create(CLOCK_MONOTONIC, &sev, timer) < 0)
        return pyse__fail("timer_create: the orphan kill timer");
    return 0;
}

int pyse_prepare_orphan_kill(int parent_pid, double seconds)
{
    if (g_orphan_timer_ready) {
        errno = EBUSY;
        return pyse__fail("preparing the orphan kill timer: already prepared");
    }
    if (create_kill_timer(&g_orphan_timer) < 0)
        return -1;
    seconds_to_itimerspec(seconds, &g_orphan_delay);
    g_orphan_parent = parent_pid;
    g_orphan_timer_armed = 0;
    g_orphan_timer_ready = 1;
    return 0;
}

void pyse__orphan_check_from_handler(void)
{
    /* Async-signal-safe: getppid and timer_settime only.  Once the parent
     * has died this process was re-parented, so getppid() changed. */
    if (!g_orphan_timer_ready || g_orphan_timer_armed || getppid() == g_orphan_parent)
        return;
    if (timer_settime(g_orphan_timer, 0, &g_orphan_delay, NULL) == 0)
        g_orphan_timer_armed = 1;
}

void pyse__orphan_forget(void)
{
    /* POSIX timers are not inherited across fork: a child must not try to
     * arm its parent's. */
    g_orphan_timer_ready = 0;
    g_orphan_timer_armed = 0;
}

int pyse__arm_kill_timer(double seconds)
{
    struct itimerspec when;
    timer_t timer;

    if (g_orphan_timer_ready) {
        /* Armed once: a second arming would only push the deadline back. */
        if (g_orphan_timer_armed)
            return 0;
        seconds_to_itimerspec(seconds, &when);
        if (timer_settime(g_orphan_timer, 0, &when, NULL) < 0)
            return pyse__fail("timer_settime: arming the orphan kill timer");
        g_orphan_timer_armed = 1;
        return 0;
    }
    if (create_kill_timer(&timer) < 0)
        return -1;
    seconds_to_itimerspec(seconds, &when);
    if (timer_settime(timer, 0, &when, NULL) < 0)
        return pyse__fail("timer_settime: arming the orphan kill timer");
    return 0;
}
