/* orphan.c -- the timer that SIGKILLs an orphan whose Python cannot run.
 *
 * When a process's parent dies, its Python code is told (PARENT_GONE) and
 * should stop and exit on its own.  It may not be able to: another thread
 * can hold the GIL forever.  So the core also arms a POSIX timer that sends
 * SIGKILL a little later.  The timer is created ahead of need, because the
 * moment it must be armed may be inside a signal handler (PR_SET_PDEATHSIG's
 * signal, while the loop's thread waits for the GIL): timer_settime(2) is
 * async-signal-safe, timer_create(2) is not. */
#include "internal.h"

static timer_t g_timer;
static struct itimerspec g_delay;
static volatile sig_atomic_t g_ready = 0;
static volatile sig_atomic_t g_armed = 0;
static volatile sig_atomic_t g_parent = 0;

static void delay_to_itimerspec(int64_t delay, struct itimerspec *when)
{
    memset(when, 0, sizeof *when);
    if (delay < 1)
        delay = 1; /* zero would disarm it */
    when->it_value.tv_sec = (time_t)(delay / PYSE_NS_PER_SEC);
    when->it_value.tv_nsec = (long)(delay % PYSE_NS_PER_SEC);
}

/* A disarmed CLOCK_MONOTONIC timer whose expiry sends SIGKILL to us. */
static int create_kill_timer(timer_t *timer)
{
    struct sigevent sev;

    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGKILL;
    if (timer_create(CLOCK_MONOTONIC, &sev, timer) < 0)
        return pyse__fail("timer_create: the orphan kill timer of pid %d", (int)getpid());
    return 0;
}

int pyse_prepare_orphan_kill(int parent_pid, int64_t delay)
{
    if (g_ready) {
        errno = EBUSY;
        return pyse__fail("preparing the orphan kill timer: already prepared");
    }
    if (create_kill_timer(&g_timer) < 0)
        return -1;
    delay_to_itimerspec(delay, &g_delay);
    g_parent = parent_pid;
    g_armed = 0;
    g_ready = 1;
    return 0;
}

void pyse__orphan_check_from_handler(void)
{
    /* Async-signal-safe: getppid and timer_settime only.  Once the parent
     * has died this process was re-parented, so getppid() changed. */
    if (!g_ready || g_armed || getppid() == g_parent)
        return;
    if (timer_settime(g_timer, 0, &g_delay, NULL) == 0)
        g_armed = 1;
}

void pyse__orphan_forget(void)
{
    /* POSIX timers are not inherited across fork: a child must not try to
     * arm its parent's. */
    g_ready = 0;
    g_armed = 0;
}

int pyse__orphan_arm(int64_t delay)
{
    struct itimerspec when;
    timer_t timer;

    delay_to_itimerspec(delay, &when);
    if (g_ready) {
        /* Armed once: a second arming would only push the deadline back. */
        if (g_armed)
            return 0;
        if (timer_settime(g_timer, 0, &when, NULL) < 0)
            return pyse__fail("timer_settime: arming the orphan kill timer");
        g_armed = 1;
        return 0;
    }
    if (create_kill_timer(&timer) < 0)
        return -1;
    if (timer_settime(timer, 0, &when, NULL) < 0)
        return pyse__fail("timer_settime: arming the orphan kill timer");
    return 0;
}
