/* signals.c -- the self-pipe: signal handlers that only write a byte.
 *
 * A handler may interrupt anything, including malloc or a Python thread
 * holding the GIL, so it calls only async-signal-safe functions -- write(2),
 * and getppid(2)/timer_settime(2) for a prepared orphan timer (orphan.c) --
 * and keeps errno as it found it.  The loop reads the bytes (signal numbers)
 * in order.  If the pipe is full the byte is dropped: the reader is then at
 * least 64 KiB of signals behind and will wake anyway; SIGCHLD loses nothing
 * because every wake-up reaps. */
#include "internal.h"

static volatile sig_atomic_t g_selfpipe_write = -1;

static void write_signal_byte(int signo)
{
    int saved_errno = errno;
    unsigned char byte = (unsigned char)signo;
    int fd = g_selfpipe_write;

    pyse__orphan_check_from_handler();

    if (fd >= 0) {
        ssize_t written = write(fd, &byte, 1);
        (void)written; /* nothing safe to do about a full pipe here */
    }
    errno = saved_errno;
}

int pyse__selfpipe_open(int fds[2])
{
    if (pipe(fds) < 0)
        return pyse__fail("pipe: creating the signal self-pipe");
    if (pyse__make_nonblocking_cloexec(fds[0]) < 0 ||
        pyse__make_nonblocking_cloexec(fds[1]) < 0) {
        pyse__close_keeping_errno(fds[0]);
        pyse__close_keeping_errno(fds[1]);
        return -1;
    }
    return 0;
}

int pyse__signals_install(int write_fd, const int *signals, int count,
                          struct sigaction *saved, sigset_t *owned)
{
    struct sigaction action;
    sigset_t unblock;
    int i;

    if (g_selfpipe_write >= 0) {
        errno = EBUSY;
        return pyse__fail("taking over signals: another loop owns them");
    }
    memset(&action, 0, sizeof action);
    action.sa_handler = write_signal_byte;
    /* SA_RESTART: the owning process's other code (Python included) should
     * not see EINTR for signals it never asked for. */
    action.sa_flags = SA_RESTART;
    if (sigfillset(&action.sa_mask) < 0)
        return pyse__fail("sigfillset");

    g_selfpipe_write = write_fd;
    sigemptyset(owned);
    sigemptyset(&unblock);
    for (i = 0; i <= count; i++) {
        int signo = i < count ? signals[i] : SIGCHLD;
        struct sigaction this_action = action;
        if (signo <= 0 || signo >= NSIG || signo == SIGKILL || signo == SIGSTOP) {
            errno = EINVAL;
            pyse__fail("taking over signal %d: not a signal that can be caught", signo);
            goto undo;
        }
        if (sigismember(owned, signo))
            continue;
        if (signo == SIGCHLD)
            this_action.sa_flags |= SA_NOCLDSTOP;
        if (sigaction(signo, &this_action, &saved[signo]) < 0) {
            pyse__fail("sigaction(%d): installing the self-pipe handler", signo);
            goto undo;
        }
        sigaddset(owned, signo);
        sigaddset(&unblock, signo);
    }
    /* The calling thread's mask: a forked child calls this before it starts
     * any thread, so the threads it starts later inherit the unblocked set. */
    if ((i = pthread_sigmask(SIG_UNBLOCK, &unblock, NULL)) != 0) {
        errno = i;
        pyse__fail("pthread_sigmask: unblocking the owned signals");
        goto undo;
    }
    return 0;

undo: {
        int saved_errno = errno;
        pyse__signals_restore(saved, owned);
        errno = saved_errno;
        return -1;
    }
}

int pyse__signals_restore(const struct sigaction *saved, sigset_t *owned)
{
    int signo, result = 0;

    for (signo = 1; signo < NSIG; signo++) {
        if (sigismember(owned, signo) != 1)
            continue;
        if (sigaction(signo, &saved[signo], NULL) < 0)
            result = pyse__fail("sigaction(%d): restoring its disposition", signo);
        sigdelset(owned, signo);
    }
    g_selfpipe_write = -1;
    return result;
}
