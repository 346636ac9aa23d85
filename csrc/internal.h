/* internal.h -- what every C file of the core includes: the system headers,
 * the public API (pyse_core.h, which cffi's cdef() cannot take with guards or
 * includes) and the declarations shared between the core's files.
 *
 * Who calls whom (no circle):
 *   loop.c    -> signals.c, orphan.c, fds.c, clock.c, monitor.c, errors.c
 *   child.c   -> loop.c (release), orphan.c, errors.c
 *   signals.c -> orphan.c (from the handler)
 *   orphan.c, monitor.c, fds.c, clock.c -> errors.c at most */
#ifndef PYSE_INTERNAL_H
#define PYSE_INTERNAL_H

#define _GNU_SOURCE 1

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pyse_core.h"

#define PYSE_NS_PER_SEC INT64_C(1000000000)

/* ---- errors.c ------------------------------------------------------------ */

/* Records (per thread) what the failing call was attempting, formatted like
 * printf; returns -1 with errno as it was, so callers can write
 * `return pyse__fail("waitpid(%d)", pid)` right after the failed syscall. */
int pyse__fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- fds.c --------------------------------------------------------------- */

/* Sets O_NONBLOCK and FD_CLOEXEC on fd. */
int pyse__make_nonblocking_cloexec(int fd);

/* Reads a non-blocking fd until it would block.  Returns 1 at end of file,
 * 0 when drained, -1 on a read error (errno set).  Each chunk read goes to
 * consume(arg, bytes, n) when consume is not NULL. */
int pyse__drain(int fd, void (*consume)(void *arg, const unsigned char *bytes, size_t n),
                void *arg);

/* close(2) that keeps errno: for cleanup paths that report an earlier error. */
void pyse__close_keeping_errno(int fd);

/* ---- clock.c ------------------------------------------------------------- */

/* now + delta, saturating instead of overflowing (timeouts may be huge). */
int64_t pyse__add_time(int64_t now, int64_t delta);

/* The poll(2) timeout in ms to wait from now until deadline (PYSE_NO_TIME:
 * -1, forever), rounded up so that poll never returns before it. */
int pyse__poll_timeout_ms(int64_t deadline, int64_t now);

/* ---- signals.c ----------------------------------------------------------- */

/* The self-pipe shared by the signal handlers and the loop that owns them. */
int pyse__selfpipe_open(int fds[2]);

/* Installs the self-pipe handler for signals (and SIGCHLD), saving the old
 * dispositions in saved[signo] and marking them in owned; restore undoes it.
 * Only one set of owned signals may exist per process. */
int pyse__signals_install(int write_fd, const int *signals, int count,
                          struct sigaction *saved, sigset_t *owned);
int pyse__signals_restore(const struct sigaction *saved, sigset_t *owned);

/* ---- orphan.c ------------------------------------------------------------ */

/* Arms the SIGKILL timer of this process `delay` from now: the prepared
 * orphan timer (once), or a new one when none was prepared. */
int pyse__orphan_arm(int64_t delay);

/* From a signal handler: arms the prepared orphan timer if the parent that
 * pyse_prepare_orphan_kill() named is gone.  Async-signal-safe. */
void pyse__orphan_check_from_handler(void);

/* In a fresh child: forgets the parent's orphan timer. */
void pyse__orphan_forget(void);

/* ---- loop.c -------------------------------------------------------------- */

/* Internal flags of struct child, beside the PYSE_CHILD_* ones, set when
 * its pipe reached EOF and acted on by the next pass: it was reaped then
 * (exit_status holds its status), or it lives on and gets an immediate
 * stop. */
#define PYSE_CHILD_CLOSED_PENDING 0x100
#define PYSE_CHILD_REAPED 0x200

struct child {
    int pid;
    int heartbeat_fd;            /* -1 once closed, or when there is none */
    int flags;                   /* PYSE_CHILD_* */
    int beaten;                  /* a heartbeat arrived at least once */
    unsigned char stamp[8];      /* a stamp read in part (never, in practice) */
    int stamp_len;
    int exit_status;             /* with PYSE_CHILD_REAPED */
    struct pyse_kill_config config;
    struct pyse_monitor monitor;
};

struct watched_fd {
    int fd;
    int events;                  /* PYSE_READABLE | PYSE_WRITABLE */
};

struct pyse_loop {
    int reap_any;
    int selfpipe[2];             /* -1 until the loop owns signals */
    struct sigaction saved[NSIG];
    sigset_t owned;
    int wakeup_fd;
    int lifeline_fd;
    int64_t orphan_kill_delay;   /* <= 0: no SIGKILL timer on hangup */
    int parent_gone;             /* PARENT_GONE was reported */

    int beat_fd;                 /* heartbeat toward the parent, or -1 */
    int64_t beat_interval;
    int64_t next_beat;

    struct child *children;
    int nchildren, children_cap;

    struct watched_fd *watched;
    int nwatched, watched_cap;

    struct pollfd *pollfds;      /* rebuilt for every wait */
    int pollfds_cap;

    unsigned char *signals;      /* read from the self-pipe, not yet queued */
    int nsignals, signals_cap;

    struct pyse_event *queue;    /* events not yet handed out */
    int queue_head, queue_len, queue_cap;
};

/* A fresh child's copy of its parent's loop: closes every heartbeat fd it
 * holds and forgets its children, queued events and the caller's fds
 * (wakeup, lifeline, parent heartbeat, watched fds), which the caller closes
 * itself if the child must not keep them. */
void pyse__loop_abandon(struct pyse_loop *loop);

#endif
