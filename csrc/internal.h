/* internal.h -- what every C file of the core includes: the system headers,
 * the public API (pyse_core.h, which cffi's cdef() cannot take with guards or
 * includes) and the declarations shared between the core's files. */
#ifndef PYSE_INTERNAL_H
#define PYSE_INTERNAL_H

#define _GNU_SOURCE 1

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pyse_core.h"

/* Records what the failing call was doing; returns -1 so callers can write
 * `return pyse__fail("poll")` with errno still set by the syscall. */
int pyse__fail(const char *what);

/* Sets O_NONBLOCK and FD_CLOEXEC on fd. */
int pyse__make_nonblocking_cloexec(int fd);

/* The self-pipe shared by the signal handlers and the loop that owns them. */
int pyse__selfpipe_open(int fds[2]);

/* Installs the self-pipe handler for signals (and SIGCHLD), saving the old
 * dispositions in saved[signo] and marking them in owned; restore undoes it.
 * Only one set of owned signals may exist per process. */
int pyse__signals_install(int write_fd, const int *signals, int count,
                          struct sigaction *saved, sigset_t *owned);
int pyse__signals_restore(const struct sigaction *saved, sigset_t *owned);

struct child {
    int pid;
    int heartbeat_fd;           /* -1 once closed, or when there is none */
    struct pyse_kill_config config;
    struct pyse_monitor monitor;
};

struct pyse_loop {
    int reap_any;
    int selfpipe[2];            /* -1 until the loop owns signals */
    struct sigaction saved[NSIG];
    sigset_t owned;
    int wakeup_fd;
    int lifeline_fd;
    double orphan_kill_delay;   /* <= 0: no SIGKILL timer on hangup */

    struct child *children;
    int nchildren, children_cap;

    struct pollfd *pollfds;     /* rebuilt for every wait */
    int pollfds_cap;

    struct pyse_event *queue;   /* events not yet handed out */
    int queue_head, queue_len, queue_cap;
};

/* Arms a one-shot POSIX timer that sends SIGKILL to this process (the
 * prepared orphan timer, if there is one, and only once). */
int pyse__arm_kill_timer(double seconds);

/* From a signal handler: arms the prepared orphan timer if the parent that
 * pyse_prepare_orphan_kill() named is gone.  Async-signal-safe. */
void pyse__orphan_check_from_handler(void);

/* In a fresh child: forgets the parent's orphan timer. */
void pyse__orphan_forget(void);

/* Closes every heartbeat fd the loop holds and forgets its children. */
void pyse__close_child_fds(struct pyse_loop *loop);

#endif
