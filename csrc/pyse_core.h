/* pyse_core.h -- the C core's API.
 *
 * build.py feeds this file to cffi's cdef() as it is, so it holds only
 * declarations and integer #defines: no include guard, no #include.  The C
 * files include it through internal.h, which carries both.
 *
 * The core knows nothing of Python.  Ints, fds, times and plain structs go
 * in; arrays of events come out.  Every time is an int64_t count of
 * nanoseconds of CLOCK_MONOTONIC: integers compare and add exactly, so a
 * deadline computed from a timeout is the very instant at which the timeout
 * holds.  Every function that can fail returns -1 with errno set, and
 * pyse_error_context() (per thread) says what was being attempted, naming
 * the pid or fd concerned.
 */

/* ---- events returned by pyse_loop_wait() ---------------------------------- */

#define PYSE_EV_SIGNAL 1            /* status: the signal number                  */
#define PYSE_EV_EXITED 2            /* pid: the child; status: raw wait status    */
#define PYSE_EV_HEARTBEAT 3         /* pid: the child's first heartbeat arrived   */
#define PYSE_EV_CLOSED 4            /* pid: its pipe reached EOF; err: a read's errno */
#define PYSE_EV_HEARTBEAT_TIMEOUT 5 /* pid: promoted to immediate stop            */
#define PYSE_EV_GRACEFUL_TIMEOUT 6  /* pid: promoted to immediate stop            */
#define PYSE_EV_KILL 7              /* pid; status: signal sent; err: kill's errno */
#define PYSE_EV_TIMER 8             /* the caller's deadline has passed           */
#define PYSE_EV_WAKEUP 9            /* the wakeup fd was readable (drained)       */
#define PYSE_EV_PARENT_GONE 10      /* the lifeline hung up, or a beat hit EPIPE  */
#define PYSE_EV_FD_READY 11         /* pid: a watched fd; status: PYSE_READABLE... */

/* Readiness bits of PYSE_EV_FD_READY and of pyse_loop_watch_fd().  A hangup
 * or error on the fd is reported as readable: the read says which. */
#define PYSE_READABLE 1
#define PYSE_WRITABLE 2

struct pyse_event {
    int kind;
    int pid;
    int status;
    int err;
};

/* ---- time ------------------------------------------------------------------ */

/* Marks "no time": an unset time of a monitor, no deadline.  Real times are
 * >= 0. */
#define PYSE_NO_TIME -1

/* CLOCK_MONOTONIC in nanoseconds into *now. */
int pyse_clock_now(int64_t *now);

/* ---- the kill escalation (ServerEngine's ProcessManager::Monitor#tick) ---- */

#define PYSE_PROMOTED_NONE 0
#define PYSE_PROMOTED_HEARTBEAT 1
#define PYSE_PROMOTED_GRACEFUL 2

struct pyse_kill_config {
    int64_t heartbeat_timeout;   /* without a beat this long: immediate stop */
    int64_t graceful_interval;   /* first interval between TERMs             */
    int64_t graceful_increment;  /* added to the interval after each TERM    */
    int64_t graceful_timeout;    /* TERM -> QUIT promotion; < 0: never       */
    int64_t immediate_interval;  /* first interval between QUITs             */
    int64_t immediate_increment;
    int64_t immediate_timeout;   /* QUIT -> KILL promotion; < 0: never       */
    int graceful_signal;         /* SIGTERM for pyse's workers               */
    int immediate_signal;        /* SIGQUIT for pyse's workers               */
};

struct pyse_monitor {
    int64_t last_heartbeat;
    int64_t next_kill;           /* PYSE_NO_TIME: no kill step scheduled */
    int64_t graceful_start;      /* PYSE_NO_TIME: no graceful stop asked */
    int64_t immediate_start;     /* PYSE_NO_TIME: no immediate stop asked */
    int kill_count;
    int watch_heartbeat;         /* 0: the heartbeat timeout does not apply */
    int gone;                    /* the child is gone: nothing more to send */
};

void pyse_monitor_init(struct pyse_monitor *m, int64_t now, int watch_heartbeat);
void pyse_monitor_graceful_stop(struct pyse_monitor *m, int64_t now);
void pyse_monitor_immediate_stop(struct pyse_monitor *m, int64_t now);
void pyse_monitor_heartbeat(struct pyse_monitor *m, int64_t now);

/* Decides what is due at `now`: returns the signal to send (0: nothing) and
 * stores in *promoted why this call promoted the child to immediate stop.
 * Pure: it reads no clock and sends nothing. */
int pyse_monitor_tick(struct pyse_monitor *m, const struct pyse_kill_config *c,
                      int64_t now, int *promoted);

/* The earliest time at which pyse_monitor_tick() acts; PYSE_NO_TIME if it
 * never will without another input. */
int64_t pyse_monitor_deadline(const struct pyse_monitor *m,
                              const struct pyse_kill_config *c);

/* ---- the supervision loop ------------------------------------------------- */

struct pyse_loop;

/* Flags of pyse_loop_add_child(). */
/* The heartbeat timeout applies only once the child has written to its
 * pipe (spawned programs, which may know nothing of heartbeats). */
#define PYSE_CHILD_HEARTBEAT_OPTIONAL 1
/* The child writes 8-byte CLOCK_MONOTONIC stamps (pyse's own children, see
 * pyse_loop_set_parent_heartbeat); otherwise any bytes count as a beat at
 * the time they are read. */
#define PYSE_CHILD_STAMPED_BEATS 2

/* reap_any: reap every child of the process (waitpid(-1)); otherwise only the
 * children added to this loop, so that other children stay the caller's. */
struct pyse_loop *pyse_loop_new(int reap_any);
void pyse_loop_free(struct pyse_loop *loop);

/* Takes over `signals` (SIGCHLD is always added) and unblocks them: their
 * handlers only write the signal number into the loop's self-pipe.  One loop
 * per process may own signals.  Release restores the dispositions found at
 * takeover. */
int pyse_loop_own_signals(struct pyse_loop *loop, const int *signals, int count);
int pyse_loop_release_signals(struct pyse_loop *loop);

/* Optional fds the wait also watches; -1 stops watching.  The wakeup fd (for
 * Python's signal.set_wakeup_fd, or another thread's nudge) is drained, so it
 * is made non-blocking.  The lifeline fd is the read end of a pipe whose only
 * writer is the parent: its hangup is PARENT_GONE, and with
 * orphan_kill_delay > 0 it also arms a timer that SIGKILLs this process that
 * long later (for a process whose Python cannot run any more). */
int pyse_loop_set_wakeup_fd(struct pyse_loop *loop, int fd);
int pyse_loop_set_lifeline_fd(struct pyse_loop *loop, int fd, int64_t orphan_kill_delay);

/* This process's heartbeat toward its parent: on entering pyse_loop_wait(),
 * if a beat is due, the loop writes an 8-byte stamp of now to fd (which must
 * be non-blocking).  The caller entered holding whatever it must hold to be
 * alive (Python: the GIL), so a beat proves that; a wait returns, with no
 * event if need be, when the next beat is due, so the caller comes back.
 * EPIPE means the parent is gone: PARENT_GONE (SIGPIPE must be ignored, as
 * Python ignores it).  fd -1: no heartbeat. */
int pyse_loop_set_parent_heartbeat(struct pyse_loop *loop, int fd, int64_t interval);

/* Watches fd for readiness (PYSE_READABLE and/or PYSE_WRITABLE; 0 stops
 * watching it): FD_READY events.  The fd stays the caller's. */
int pyse_loop_watch_fd(struct pyse_loop *loop, int fd, int events);

/* The loop takes ownership of heartbeat_fd (-1: none) and closes it. */
int pyse_loop_add_child(struct pyse_loop *loop, int pid, int heartbeat_fd, int flags,
                        const struct pyse_kill_config *config, int64_t now);
int pyse_loop_set_child_config(struct pyse_loop *loop, int pid,
                               const struct pyse_kill_config *config);
int pyse_loop_stop_child(struct pyse_loop *loop, int pid, int immediate, int64_t now);
int pyse_loop_get_monitor(struct pyse_loop *loop, int pid, struct pyse_monitor *out);
/* Reads what the child's heartbeat pipe holds now, as its heartbeat deadline
 * would, so that the monitor's last_heartbeat is fresh (the loop reads a
 * stamped child's beats only at that deadline).  What the read finds (a
 * first beat, end of file) is queued for the next pyse_loop_wait(). */
int pyse_loop_refresh_child(struct pyse_loop *loop, int pid, int64_t now);
int pyse_loop_child_count(struct pyse_loop *loop);

/* Waits until something happens or `deadline` (PYSE_NO_TIME: none) passes,
 * and returns the number of events stored in out (at most max_events; the
 * rest stay queued for the next call).  0 events: a parent heartbeat is due
 * (see pyse_loop_set_parent_heartbeat). */
int pyse_loop_wait(struct pyse_loop *loop, int64_t deadline,
                   struct pyse_event *out, int max_events);

/* ---- the child side, right after fork ------------------------------------- */

/* In a freshly forked child: restores the signal dispositions the loop took
 * over, closes every fd the loop holds (self-pipe, heartbeat read ends) and
 * the caller's close_fds, and empties the loop.  loop may be NULL. */
int pyse_child_after_fork(struct pyse_loop *loop, const int *close_fds, int count);

/* PR_SET_PDEATHSIG (Linux; a no-op elsewhere), then re-checks the parent:
 * returns 1 if the parent is no longer expected_ppid, 0 if it is. */
int pyse_set_parent_death_signal(int signo, int expected_ppid);

/* Creates (disarmed) the SIGKILL timer of an orphan: from then on, any
 * signal the loop owns that arrives once parent_pid is no longer the parent
 * (PR_SET_PDEATHSIG's signal, above all) arms it for `delay`, from the
 * signal handler itself, so a process whose Python is wedged still dies.
 * The lifeline hangup arms the same timer. */
int pyse_prepare_orphan_kill(int parent_pid, int64_t delay);

/* ---- errors ------------------------------------------------------------------ */

/* What the calling thread's last failed call was attempting. */
const char *pyse_error_context(void);
