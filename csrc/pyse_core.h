/* pyse_core.h -- the C core's API.
 *
 * build.py feeds this file to cffi's cdef() as it is, so it holds only
 * declarations and integer #defines: no include guard, no #include.  The C
 * files include it through internal.h, which carries both.
 *
 * The core knows nothing of Python.  Ints, fds, timestamps (seconds of
 * CLOCK_MONOTONIC, as doubles) and plain structs go in; arrays of events come
 * out.  Every function that can fail returns -1 with errno set and
 * pyse_error_context() naming the operation that failed.
 */

/* ---- events returned by pyse_loop_wait() ---------------------------------- */

#define PYSE_EV_SIGNAL 1            /* status: the signal number               */
#define PYSE_EV_EXITED 2            /* pid: the child; status: raw wait status */
#define PYSE_EV_HEARTBEAT 3         /* pid: the child whose pipe had bytes     */
#define PYSE_EV_CLOSED 4            /* pid: the child whose pipe reached EOF   */
#define PYSE_EV_HEARTBEAT_TIMEOUT 5 /* pid: promoted to immediate stop         */
#define PYSE_EV_GRACEFUL_TIMEOUT 6  /* pid: promoted to immediate stop         */
#define PYSE_EV_KILL 7              /* pid; status: signal sent; err: errno    */
#define PYSE_EV_TIMER 8             /* the caller's deadline has passed        */
#define PYSE_EV_WAKEUP 9            /* the wakeup fd was readable (drained)    */
#define PYSE_EV_PARENT_GONE 10      /* the lifeline fd hung up                 */

struct pyse_event {
    int kind;
    int pid;
    int status;
    int err;
};

/* ---- the kill escalation (ServerEngine's ProcessManager::Monitor#tick) ---- */

/* Marks an unset time in struct pyse_monitor.  Real times are >= 0. */
#define PYSE_UNSET -1

#define PYSE_PROMOTED_NONE 0
#define PYSE_PROMOTED_HEARTBEAT 1
#define PYSE_PROMOTED_GRACEFUL 2

struct pyse_kill_config {
    double heartbeat_timeout;   /* seconds without a beat before immediate stop */
    double graceful_interval;   /* first interval between TERMs                 */
    double graceful_increment;  /* added to the interval after each TERM        */
    double graceful_timeout;    /* TERM -> QUIT promotion; < 0: never           */
    double immediate_interval;  /* first interval between QUITs                 */
    double immediate_increment;
    double immediate_timeout;   /* QUIT -> KILL promotion; < 0: never           */
    int graceful_signal;        /* SIGTERM for pyse's workers                   */
    int immediate_signal;       /* SIGQUIT for pyse's workers                   */
};

struct pyse_monitor {
    double last_heartbeat;
    double next_kill;           /* PYSE_UNSET: no kill step scheduled */
    double graceful_start;      /* PYSE_UNSET: no graceful stop asked */
    double immediate_start;     /* PYSE_UNSET: no immediate stop asked */
    int kill_count;
    int watch_heartbeat;        /* 0: the heartbeat timeout does not apply */
    int gone;                   /* the child is gone: nothing more to send */
};

void pyse_monitor_init(struct pyse_monitor *m, double now, int watch_heartbeat);
void pyse_monitor_graceful_stop(struct pyse_monitor *m, double now);
void pyse_monitor_immediate_stop(struct pyse_monitor *m, double now);
void pyse_monitor_heartbeat(struct pyse_monitor *m, double now);

/* Decides what is due at `now`: returns the signal to send (0: nothing) and
 * stores in *promoted why this call promoted the child to immediate stop.
 * Pure: it reads no clock and sends nothing. */
int pyse_monitor_tick(struct pyse_monitor *m, const struct pyse_kill_config *c,
                      double now, int *promoted);

/* The earliest time at which pyse_monitor_tick() can act; PYSE_UNSET if it
 * never will without another input. */
double pyse_monitor_deadline(const struct pyse_monitor *m,
                             const struct pyse_kill_config *c);

/* ---- the supervision loop ------------------------------------------------- */

struct pyse_loop;

/* reap_any: reap every child of the process (waitpid(-1)); otherwise only the
 * children added to this loop, so that other children stay the caller's. */
struct pyse_loop *pyse_loop_new(int reap_any);
void pyse_loop_free(struct pyse_loop *loop);

/* Takes over `signals` (SIGCHLD is always added): their handlers only write
 * the signal number into the loop's self-pipe.  One loop per process may own
 * signals.  Release restores the dispositions found at takeover. */
int pyse_loop_own_signals(struct pyse_loop *loop, const int *signals, int count);
int pyse_loop_release_signals(struct pyse_loop *loop);

/* Optional fds the wait also watches; -1 stops watching.  The wakeup fd (for
 * Python's signal.set_wakeup_fd) is drained, so it is made non-blocking.
 * The lifeline fd is the read end of a pipe whose only writer is the parent:
 * its hangup is PARENT_GONE. */
int pyse_loop_set_wakeup_fd(struct pyse_loop *loop, int fd);
int pyse_loop_set_lifeline_fd(struct pyse_loop *loop, int fd);

/* When the lifeline hangs up, the loop arms a timer that SIGKILLs this
 * process `seconds` later (<= 0: none), before it reports PARENT_GONE.  The
 * orphan's Python code should exit sooner; the timer is for a process that
 * cannot run Python any more (a thread holding the GIL forever). */
int pyse_loop_set_orphan_kill_delay(struct pyse_loop *loop, double seconds);

/* The loop takes ownership of heartbeat_fd (-1: none) and closes it. */
int pyse_loop_add_child(struct pyse_loop *loop, int pid, int heartbeat_fd,
                        const struct pyse_kill_config *config, double now);
int pyse_loop_set_child_config(struct pyse_loop *loop, int pid,
                               const struct pyse_kill_config *config);
int pyse_loop_stop_child(struct pyse_loop *loop, int pid, int immediate, double now);
int pyse_loop_get_monitor(struct pyse_loop *loop, int pid, struct pyse_monitor *out);
int pyse_loop_child_count(struct pyse_loop *loop);

/* Waits until something happens or `deadline` (PYSE_UNSET: none) passes, and
 * returns the number of events stored in out (at most max_events; the rest
 * stay queued for the next call). */
int pyse_loop_wait(struct pyse_loop *loop, double deadline,
                   struct pyse_event *out, int max_events);

/* ---- the child side, right after fork ------------------------------------- */

/* In a freshly forked child: restores the signal dispositions the loop took
 * over, closes every fd the loop holds (self-pipe, heartbeat read ends,
 * wakeup and lifeline fds) and the caller's close_fds, and empties the loop.
 * loop may be NULL. */
int pyse_child_after_fork(struct pyse_loop *loop, const int *close_fds, int count);

/* PR_SET_PDEATHSIG (Linux; a no-op elsewhere), then re-checks the parent:
 * returns 1 if the parent is no longer expected_ppid, 0 if it is. */
int pyse_set_parent_death_signal(int signo, int expected_ppid);

/* Creates (disarmed) the SIGKILL timer of an orphan: from then on, any
 * signal the loop owns that arrives once parent_pid is no longer the parent
 * (PR_SET_PDEATHSIG's signal, above all) arms it for `seconds`, from the
 * signal handler itself, so a process whose Python is wedged still dies.
 * The lifeline hangup arms the same timer. */
int pyse_prepare_orphan_kill(int parent_pid, double seconds);

/* ---- misc ----------------------------------------------------------------- */

double pyse_now(void);                  /* CLOCK_MONOTONIC, seconds */
const char *pyse_error_context(void);   /* what the last failed call was doing */
