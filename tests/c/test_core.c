/* test_core.c -- drives the C core with real forks, kills, pipes and
 * signals, for the memory checkers (ASan/UBSan/LSan, valgrind memcheck).
 *
 * It links the csrc/ sources directly (no Python): see tests/test_core_asan.py for
 * the build and run commands.  Each check prints what failed; the exit
 * status is 0 only if every check passed.  Every wait has a deadline. */
#include "internal.h"

#include <stdio.h>
#include <stdarg.h>
#include <pthread.h>

static int failures, checks;

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        checks++;                                                            \
        if (!(cond)) {                                                       \
            failures++;                                                      \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, \
                    #cond);                                                  \
            fprintf(stderr, __VA_ARGS__);                                    \
            fprintf(stderr, " (errno %d, context \"%s\")\n", errno,          \
                    pyse_error_context());                                   \
        }                                                                    \
    } while (0)

#define SEC(x) ((int64_t)((x) * 1e9))

static const struct pyse_kill_config QUIET = {
    SEC(3600), SEC(15), SEC(10), SEC(600), SEC(10), SEC(10), SEC(600), SIGTERM, SIGQUIT,
};

static int64_t now_ns(void)
{
    int64_t t = 0;
    if (pyse_clock_now(&t) < 0) {
        perror("pyse_clock_now");
        exit(2);
    }
    return t;
}

/* Events of interest collected across waits. */
struct seen {
    struct pyse_event ev[4096];
    int n;
};

static int count_kind(const struct seen *s, int kind, int pid)
{
    int i, n = 0;
    for (i = 0; i < s->n; i++)
        if (s->ev[i].kind == kind && (pid == 0 || s->ev[i].pid == pid))
            n++;
    return n;
}

static const struct pyse_event *find_kind(const struct seen *s, int kind, int pid)
{
    int i;
    for (i = 0; i < s->n; i++)
        if (s->ev[i].kind == kind && (pid == 0 || s->ev[i].pid == pid))
            return &s->ev[i];
    return NULL;
}

/* Waits (batches of max_events) until `want` events of `kind` arrived or
 * `timeout` seconds passed; returns 0 if they arrived. */
static int collect(struct pyse_loop *loop, struct seen *s, int kind, int want,
                   double timeout, int max_events)
{
    int64_t deadline = now_ns() + SEC(timeout);
    struct pyse_event batch[256];

    while (count_kind(s, kind, 0) < want) {
        int i, n = pyse_loop_wait(loop, deadline, batch, max_events);
        if (n < 0) {
            fprintf(stderr, "pyse_loop_wait: %s: %s\n", pyse_error_context(), strerror(errno));
            return -1;
        }
        for (i = 0; i < n; i++) {
            if (batch[i].kind == PYSE_EV_TIMER)
                return -1;
            if (s->n < (int)(sizeof s->ev / sizeof s->ev[0]))
                s->ev[s->n++] = batch[i];
        }
    }
    return 0;
}

/* Forks a child that drops the loop, closes close_fd, and runs body. */
static pid_t fork_child(struct pyse_loop *loop, int close_fd, int (*body)(int), int arg)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fds[1] = {close_fd};
        if (pyse_child_after_fork(loop, fds, 1) < 0)
            _exit(70);
        pyse_loop_free(loop);
        _exit(body(arg));
    }
    return pid;
}

/* Adds a forked child with a heartbeat pipe and these flags, started at
 * `started`; returns its pid. */
static pid_t spawn_flagged(struct pyse_loop *loop, int (*body)(int),
                           const struct pyse_kill_config *c, int flags, int64_t started)
{
    int fds[2];
    pid_t pid;

    if (pipe(fds) < 0) {
        perror("pipe");
        exit(2);
    }
    pid = fork_child(loop, fds[0], body, fds[1]);
    close(fds[1]);
    CHECK(pid > 0, "fork");
    CHECK(pyse_loop_add_child(loop, pid, fds[0], flags, c, started) == 0, "add_child %d", pid);
    return pid;
}

static pid_t spawn(struct pyse_loop *loop, int (*body)(int), const struct pyse_kill_config *c)
{
    return spawn_flagged(loop, body, c, 0, now_ns());
}

static int sleep_forever(int w)
{
    (void)w;
    for (;;)
        pause();
    return 0;
}

static int exit_7(int w)
{
    (void)w;
    return 7;
}

static int close_then_sleep(int w)
{
    close(w);
    for (;;)
        pause();
    return 0;
}

static int beat_then_hang(int w)
{
    int i;
    signal(SIGQUIT, SIG_IGN);
    for (i = 0; i < 3; i++) {
        if (write(w, ".", 1) != 1)
            return 3;
        usleep(10000);
    }
    for (;;)
        pause();
    return 0;
}

static int wait_for_pipe_eof(int r)
{
    char c;
    while (read(r, &c, 1) > 0)
        ;
    return 1;
}

/* ---- the pure escalation ---------------------------------------------------- */

static void test_monitor(void)
{
    struct pyse_kill_config c = QUIET;
    struct pyse_monitor m;
    int promoted, sig;

    c.graceful_interval = SEC(1);
    c.graceful_increment = SEC(1);
    c.graceful_timeout = SEC(5);
    c.immediate_interval = SEC(1);
    c.immediate_increment = 0;
    c.immediate_timeout = SEC(2);
    pyse_monitor_init(&m, 0, 0);
    CHECK(pyse_monitor_deadline(&m, &c) == PYSE_NO_TIME, "an idle monitor has no deadline");
    pyse_monitor_graceful_stop(&m, 0);
    sig = pyse_monitor_tick(&m, &c, 0, &promoted);
    CHECK(sig == SIGTERM && promoted == PYSE_PROMOTED_NONE, "TERM at once, got %d", sig);
    CHECK(pyse_monitor_deadline(&m, &c) == SEC(1), "next TERM at 1");
    CHECK(pyse_monitor_tick(&m, &c, SEC(0.5), &promoted) == 0, "nothing at 0.5");
    CHECK(pyse_monitor_tick(&m, &c, SEC(1), &promoted) == SIGTERM, "TERM at 1");
    CHECK(pyse_monitor_tick(&m, &c, SEC(3), &promoted) == SIGTERM, "TERM at 3");
    CHECK(pyse_monitor_deadline(&m, &c) == SEC(5) + 1, "promotion just after 5 s");
    CHECK(pyse_monitor_tick(&m, &c, SEC(5), &promoted) == 0, "not yet at exactly 5");
    sig = pyse_monitor_tick(&m, &c, SEC(5) + 1, &promoted);
    CHECK(sig == SIGQUIT && promoted == PYSE_PROMOTED_GRACEFUL, "promoted at 5 s + 1 ns, got %d",
          sig);
    CHECK(pyse_monitor_tick(&m, &c, SEC(6.5), &promoted) == SIGQUIT, "QUIT at 6.5");
    CHECK(pyse_monitor_tick(&m, &c, SEC(7.5), &promoted) == SIGKILL, "KILL at 7.5");
    m.gone = 1;
    CHECK(pyse_monitor_tick(&m, &c, SEC(100), &promoted) == 0, "nothing once gone");
    CHECK(pyse_monitor_deadline(&m, &c) == PYSE_NO_TIME, "no deadline once gone");

    pyse_monitor_init(&m, SEC(4), 1);
    c.heartbeat_timeout = SEC(0.1);
    {
        int64_t d = pyse_monitor_deadline(&m, &c);
        CHECK(d == SEC(4) + SEC(0.1), "heartbeat deadline");
        CHECK(pyse_monitor_tick(&m, &c, d - 1, &promoted) == 0, "nothing before");
        CHECK(pyse_monitor_tick(&m, &c, d, &promoted) == SIGQUIT &&
                  promoted == PYSE_PROMOTED_HEARTBEAT, "heartbeat timeout exactly at %lld",
              (long long)d);
    }

    /* Huge configurations saturate instead of wrapping into the past. */
    c = QUIET;
    c.graceful_interval = INT64_MAX / 2;
    c.graceful_increment = INT64_MAX / 2;
    c.graceful_timeout = -1;
    pyse_monitor_init(&m, 0, 0);
    pyse_monitor_graceful_stop(&m, SEC(1));
    CHECK(pyse_monitor_tick(&m, &c, SEC(1), &promoted) == SIGTERM, "first TERM");
    CHECK(m.next_kill > SEC(1), "next step in the future");
    m.kill_count = 5;
    m.next_kill = SEC(2);
    CHECK(pyse_monitor_tick(&m, &c, SEC(2), &promoted) == SIGTERM, "a later TERM");
    CHECK(m.next_kill == INT64_MAX, "saturated, not wrapped: %lld", (long long)m.next_kill);
}

/* ---- the loop with real processes --------------------------------------------------- */

static void test_errors(void)
{
    struct pyse_loop *loop = pyse_loop_new(0), *other = pyse_loop_new(0);
    struct pyse_monitor m;
    struct pyse_event ev[1];
    int sigs[2] = {SIGUSR1, SIGKILL};

    CHECK(loop != NULL && other != NULL, "pyse_loop_new");
    errno = 0;
    CHECK(pyse_loop_add_child(loop, 0, -1, 0, &QUIET, 0) < 0 && errno == EINVAL, "pid 0");
    CHECK(pyse_loop_add_child(loop, -3, -1, 0, &QUIET, 0) < 0 && errno == EINVAL, "pid -3");
    CHECK(pyse_loop_add_child(loop, 424242, -1, 0, &QUIET, 0) == 0, "a pid");
    CHECK(pyse_loop_add_child(loop, 424242, -1, 0, &QUIET, 0) < 0 && errno == EINVAL,
          "duplicate pid");
    CHECK(strstr(pyse_error_context(), "duplicate") != NULL &&
              strstr(pyse_error_context(), "424242") != NULL, "context names it and the pid");
    CHECK(pyse_loop_add_child(loop, 424243, 987654, 0, &QUIET, 0) < 0, "a bad heartbeat fd");
    CHECK(strstr(pyse_error_context(), "987654") != NULL, "context names the fd");
    CHECK(pyse_loop_watch_fd(loop, -1, PYSE_READABLE) < 0 && errno == EINVAL, "watch fd -1");
    CHECK(pyse_loop_watch_fd(loop, 0, 8) < 0 && errno == EINVAL, "watch bad events");
    CHECK(pyse_loop_set_parent_heartbeat(loop, 1, 0) < 0 && errno == EINVAL, "interval 0");
    CHECK(pyse_loop_stop_child(loop, 1, 1, 0) < 0 && errno == ESRCH, "stop unknown");
    CHECK(pyse_loop_set_child_config(loop, 1, &QUIET) < 0 && errno == ESRCH, "config unknown");
    CHECK(pyse_loop_get_monitor(loop, 1, &m) < 0 && errno == ESRCH, "monitor unknown");
    CHECK(pyse_loop_get_monitor(loop, 424242, &m) == 0 && m.kill_count == 0, "monitor");
    CHECK(pyse_loop_wait(loop, 0, ev, 0) < 0 && errno == EINVAL, "max_events 0");
    CHECK(pyse_loop_child_count(loop) == 1, "one child");

    CHECK(pyse_loop_own_signals(loop, sigs, 2) < 0 && errno == EINVAL, "SIGKILL refused");
    CHECK(pyse_loop_own_signals(loop, sigs, 1) == 0, "own SIGUSR1 after a failed try");
    CHECK(pyse_loop_own_signals(loop, sigs, 1) < 0 && errno == EBUSY, "own twice");
    CHECK(pyse_loop_own_signals(other, sigs, 1) < 0 && errno == EBUSY, "two owners");
    CHECK(pyse_loop_release_signals(loop) == 0, "release");
    CHECK(pyse_loop_own_signals(other, sigs, 1) == 0, "own after release");
    pyse_loop_free(other); /* releases its signals */
    pyse_loop_free(loop);
    pyse_loop_free(NULL);
}

static void test_exits_kills_and_signals(void)
{
    struct pyse_loop *loop = pyse_loop_new(0);
    int sigs[3] = {SIGUSR1, SIGHUP, SIGUSR2};
    struct seen s = {.n = 0};
    pid_t killed, coded, closer;
    const struct pyse_event *e;

    CHECK(pyse_loop_own_signals(loop, sigs, 3) == 0, "own signals");
    raise(SIGUSR1);
    raise(SIGHUP);
    raise(SIGUSR2);
    raise(SIGUSR1);
    CHECK(collect(loop, &s, PYSE_EV_SIGNAL, 4, 5.0, 2) == 0, "four SIGNAL events");
    CHECK(s.n == 4 && s.ev[0].status == SIGUSR1 && s.ev[1].status == SIGHUP &&
              s.ev[2].status == SIGUSR2 && s.ev[3].status == SIGUSR1, "in order");

    s.n = 0;
    killed = spawn(loop, sleep_forever, &QUIET);
    coded = spawn(loop, exit_7, &QUIET);
    {
        struct pyse_kill_config c = QUIET;
        c.immediate_signal = SIGTERM;
        closer = spawn(loop, close_then_sleep, &c);
    }
    kill(killed, SIGKILL);
    CHECK(collect(loop, &s, PYSE_EV_EXITED, 3, 10.0, 64) == 0, "three EXITED");
    e = find_kind(&s, PYSE_EV_EXITED, killed);
    CHECK(e && WIFSIGNALED(e->status) && WTERMSIG(e->status) == SIGKILL, "SIGKILL status");
    e = find_kind(&s, PYSE_EV_EXITED, coded);
    CHECK(e && WIFEXITED(e->status) && WEXITSTATUS(e->status) == 7, "exit 7");
    e = find_kind(&s, PYSE_EV_EXITED, closer);
    CHECK(e && WIFSIGNALED(e->status) && WTERMSIG(e->status) == SIGTERM, "closer TERMed");
    CHECK(find_kind(&s, PYSE_EV_CLOSED, closer) != NULL, "CLOSED for the closer");
    e = find_kind(&s, PYSE_EV_KILL, closer);
    CHECK(e && e->status == SIGTERM && e->err == 0, "immediate signal after CLOSED");
    CHECK(pyse_loop_child_count(loop) == 0, "table empty");
    pyse_loop_free(loop);
}

static void test_heartbeat_timeout(void)
{
    struct pyse_loop *loop = pyse_loop_new(0);
    struct pyse_kill_config c = QUIET;
    struct seen s = {.n = 0};
    pid_t pid;
    const struct pyse_event *e;

    c.heartbeat_timeout = SEC(0.1);
    c.immediate_interval = SEC(0.02);
    c.immediate_increment = SEC(0.01);
    c.immediate_timeout = SEC(0.1);
    CHECK(pyse_loop_own_signals(loop, NULL, 0) == 0, "own SIGCHLD only");
    pid = spawn(loop, beat_then_hang, &c);
    CHECK(collect(loop, &s, PYSE_EV_EXITED, 1, 10.0, 3) == 0, "killed in the end");
    CHECK(count_kind(&s, PYSE_EV_HEARTBEAT, pid) == 1, "the first heartbeat only");
    CHECK(count_kind(&s, PYSE_EV_HEARTBEAT_TIMEOUT, pid) == 1, "one timeout");
    CHECK(count_kind(&s, PYSE_EV_KILL, pid) >= 2, "QUITs then KILL");
    e = find_kind(&s, PYSE_EV_EXITED, pid);
    CHECK(e && WIFSIGNALED(e->status) && WTERMSIG(e->status) == SIGKILL, "SIGKILLed");
    pyse_loop_free(loop);
}

/* 200 children exit at once: the child table, the poll set and the event
 * queue all grow, and one-event batches walk the queue head. */
static void test_many_children(void)
{
    struct pyse_loop *loop = pyse_loop_new(0);
    static struct seen s;
    int go[2], i, bad = 0;
    pid_t pids[200];

    s.n = 0;
    CHECK(pyse_loop_own_signals(loop, NULL, 0) == 0, "own SIGCHLD");
    if (pipe(go) < 0) {
        perror("pipe");
        exit(2);
    }
    for (i = 0; i < 200; i++) {
        int fds[2];
        if (pipe(fds) < 0) {
            perror("pipe");
            exit(2);
        }
        pids[i] = fork();
        if (pids[i] == 0) {
            int close_fds[3] = {fds[0], go[1], -1};
            pyse_child_after_fork(loop, close_fds, 3);
            pyse_loop_free(loop);
            _exit(wait_for_pipe_eof(go[0]));
        }
        close(fds[1]);
        CHECK(pyse_loop_add_child(loop, pids[i], fds[0], 0, &QUIET, now_ns()) == 0, "add");
    }
    close(go[0]);
    CHECK(pyse_loop_child_count(loop) == 200, "200 children");
    close(go[1]);
    CHECK(collect(loop, &s, PYSE_EV_EXITED, 200, 30.0, 1) == 0, "200 EXITED, one per batch");
    for (i = 0; i < 200; i++) {
        const struct pyse_event *e = find_kind(&s, PYSE_EV_EXITED, pids[i]);
        if (!e || !WIFEXITED(e->status) || WEXITSTATUS(e->status) != 1)
            bad++;
    }
    CHECK(bad == 0, "%d children with a wrong or missing status", bad);
    CHECK(pyse_loop_child_count(loop) == 0, "table empty");
    pyse_loop_free(loop);
}

static void test_fixed_fds_and_reap_any(void)
{
    struct pyse_loop *loop = pyse_loop_new(1);
    struct seen s = {.n = 0};
    int wake[2], life[2];
    pid_t stray;
    const struct pyse_event *e;

    if (pipe(wake) < 0 || pipe(life) < 0) {
        perror("pipe");
        exit(2);
    }
    CHECK(pyse_loop_own_signals(loop, NULL, 0) == 0, "own SIGCHLD");
    CHECK(pyse_loop_set_wakeup_fd(loop, wake[0]) == 0, "wakeup fd");
    CHECK(pyse_loop_set_lifeline_fd(loop, life[0], 0) == 0, "lifeline fd");
    CHECK(write(wake[1], "xy", 2) == 2, "write");
    CHECK(collect(loop, &s, PYSE_EV_WAKEUP, 1, 5.0, 8) == 0, "WAKEUP");
    close(life[1]);
    CHECK(collect(loop, &s, PYSE_EV_PARENT_GONE, 1, 5.0, 8) == 0, "PARENT_GONE");

    /* reap_any: a child the loop was never told about is reaped too */
    stray = fork();
    if (stray == 0)
        _exit(5);
    CHECK(collect(loop, &s, PYSE_EV_EXITED, 1, 5.0, 8) == 0, "EXITED of a stray child");
    e = find_kind(&s, PYSE_EV_EXITED, stray);
    CHECK(e && WIFEXITED(e->status) && WEXITSTATUS(e->status) == 5, "its status");
    {
        int64_t deadline = now_ns() + SEC(0.02);
        struct pyse_event ev[4];
        int n = pyse_loop_wait(loop, deadline, ev, 4);
        CHECK(n == 1 && ev[0].kind == PYSE_EV_TIMER && now_ns() >= deadline, "TIMER");
    }
    pyse_loop_free(loop);
    close(wake[0]);
    close(wake[1]);
    close(life[0]);
}

/* A worker whose parent dies and whose code never runs again: the orphan
 * kill timer armed at the hangup SIGKILLs it. */
static void test_orphan_kill_timer(void)
{
    int life[2], status = 0;
    pid_t worker;

    if (pipe(life) < 0) {
        perror("pipe");
        exit(2);
    }
    worker = fork();
    if (worker == 0) {
        struct pyse_loop *loop = pyse_loop_new(0);
        struct pyse_event ev[4];
        int n;
        close(life[1]);
        pyse_loop_set_lifeline_fd(loop, life[0], SEC(0.05));
        n = pyse_loop_wait(loop, now_ns() + SEC(10), ev, 4);
        if (n != 1 || ev[0].kind != PYSE_EV_PARENT_GONE)
            _exit(3);
        for (;;)
            pause(); /* wedged: only the timer can end us */
    }
    close(life[0]);
    close(life[1]); /* "the parent" dies */
    CHECK(waitpid(worker, &status, 0) == worker, "waitpid");
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "the orphan was SIGKILLed "
          "(status %#x)", status);
}

static void test_child_side(void)
{
    int fds[2], status = 0, expected;
    pid_t pid;

    if (pipe(fds) < 0) {
        perror("pipe");
        exit(2);
    }
    pid = fork();
    if (pid == 0) {
        int close_fds[3] = {fds[0], fds[1], -1};
        if (pyse_child_after_fork(NULL, close_fds, 3) < 0)
            _exit(2);
        if (fcntl(fds[0], F_GETFD) != -1 || fcntl(fds[1], F_GETFD) != -1)
            _exit(3);
        expected = getppid();
        if (pyse_set_parent_death_signal(SIGKILL, expected) != 0)
            _exit(4);
        if (pyse_set_parent_death_signal(SIGKILL, expected + 1) != 1)
            _exit(5);
        _exit(0);
    }
    close(fds[0]);
    close(fds[1]);
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "child side checks (status %#x)", status);
}

/* Freeing a loop that still holds children closes their pipes. */
static void test_free_with_children(void)
{
    struct pyse_loop *loop = pyse_loop_new(0);
    pid_t a, b;
    int status;

    a = spawn(loop, sleep_forever, &QUIET);
    b = spawn(loop, sleep_forever, &QUIET);
    CHECK(pyse_loop_stop_child(loop, a, 0, now_ns()) == 0, "stop a");
    CHECK(pyse_loop_set_child_config(loop, b, &QUIET) == 0, "config b");
    pyse_loop_free(loop);
    kill(a, SIGKILL);
    kill(b, SIGKILL);
    waitpid(a, &status, 0);
    waitpid(b, &status, 0);
}


/* A child beating like a pyse worker: a stamp every 20 ms through a loop's
 * parent heartbeat, for `rounds` waits. */
static int stamp_beats(int w)
{
    struct pyse_loop *own = pyse_loop_new(0);
    struct pyse_event ev[4];
    int i;

    if (own == NULL || pyse_loop_set_parent_heartbeat(own, w, SEC(0.02)) < 0)
        return 3;
    for (i = 0; i < 25; i++) /* 25 beats over half a second */
        if (pyse_loop_wait(own, now_ns() + SEC(1), ev, 4) < 0)
            return 4;
    pyse_loop_free(own);
    for (;;)
        pause(); /* then silent */
    return 0;
}

/* Beats are read only at the heartbeat deadline, yet the timeout fires
 * only after the stamps stop: exactly heartbeat_timeout after the last. */
static void test_stamped_beats_read_late(void)
{
    struct pyse_loop *loop = pyse_loop_new(0);
    struct pyse_kill_config c = QUIET;
    struct seen s = {.n = 0};
    struct pyse_monitor m;
    pid_t pid;
    int64_t started;

    c.heartbeat_timeout = SEC(0.1);
    c.immediate_interval = SEC(0.02);
    c.immediate_timeout = SEC(0.05);
    CHECK(pyse_loop_own_signals(loop, NULL, 0) == 0, "own SIGCHLD");
    started = now_ns();
    pid = spawn_flagged(loop, stamp_beats, &c, PYSE_CHILD_STAMPED_BEATS, started);
    CHECK(collect(loop, &s, PYSE_EV_HEARTBEAT_TIMEOUT, 1, 10.0, 8) == 0, "a timeout in the end"
          " (exit status %#x)", find_kind(&s, PYSE_EV_EXITED, pid) ?
          find_kind(&s, PYSE_EV_EXITED, pid)->status : -1);
    CHECK(now_ns() - started >= SEC(0.5), "not before the beats stopped (%lld ms)",
          (long long)((now_ns() - started) / 1000000));
    CHECK(count_kind(&s, PYSE_EV_HEARTBEAT, pid) == 1, "one HEARTBEAT event: the first beat");
    CHECK(pyse_loop_get_monitor(loop, pid, &m) == 0 &&
              now_ns() - m.last_heartbeat >= c.heartbeat_timeout &&
              m.last_heartbeat - started >= SEC(0.4), "the last stamp was taken from the pipe");
    CHECK(collect(loop, &s, PYSE_EV_EXITED, 1, 10.0, 8) == 0, "QUIT then KILL");
    pyse_loop_free(loop);
}

/* pyse_loop_refresh_child reads the stamps that piled up since the first
 * beat now, not at the heartbeat deadline an hour away. */
static void test_refresh_child(void)
{
    struct pyse_loop *loop = pyse_loop_new(0);
    struct seen s = {.n = 0};
    struct pyse_monitor m;
    struct pyse_event ev[8];
    int n;
    pid_t pid;
    int64_t started, stale, deadline;

    CHECK(pyse_loop_own_signals(loop, NULL, 0) == 0, "own SIGCHLD");
    started = now_ns();
    pid = spawn_flagged(loop, stamp_beats, &QUIET, PYSE_CHILD_STAMPED_BEATS, started);
    CHECK(collect(loop, &s, PYSE_EV_HEARTBEAT, 1, 10.0, 8) == 0, "the first beat");
    /* The beats go on for half a second; the loop does not read them. */
    do {
        n = pyse_loop_wait(loop, now_ns() + SEC(0.7), ev, 8);
    } while (n > 0 && ev[0].kind != PYSE_EV_TIMER);
    CHECK(n == 1 && ev[0].kind == PYSE_EV_TIMER, "a quiet wait (%d events)", n);
    CHECK(pyse_loop_get_monitor(loop, pid, &m) == 0, "monitor");
    stale = m.last_heartbeat;
    CHECK(stale - started < SEC(0.3), "stamps are read lazily (%lld ms)",
          (long long)((stale - started) / 1000000));
    deadline = now_ns() + SEC(10);
    do {
        CHECK(pyse_loop_refresh_child(loop, pid, now_ns()) == 0, "refresh");
        CHECK(pyse_loop_get_monitor(loop, pid, &m) == 0, "monitor");
    } while (m.last_heartbeat - started < SEC(0.4) && now_ns() < deadline);
    CHECK(m.last_heartbeat - started >= SEC(0.4) && m.last_heartbeat <= now_ns(),
          "the latest stamp after a refresh (%lld ms)",
          (long long)((m.last_heartbeat - started) / 1000000));
    CHECK(pyse_loop_refresh_child(loop, 1, now_ns()) < 0 && errno == ESRCH, "unknown pid");
    kill(pid, SIGKILL);
    CHECK(collect(loop, &s, PYSE_EV_EXITED, 1, 10.0, 8) == 0, "reaped");
    pyse_loop_free(loop);
}

/* A beat written with any bytes, heartbeat optional: no timeout before the
 * first beat; the timeout applies after it. */
static int beat_once_late(int w)
{
    usleep(200000);
    if (write(w, "x", 1) != 1)
        return 3;
    for (;;)
        pause();
    return 0;
}

static void test_optional_heartbeat(void)
{
    struct pyse_loop *loop = pyse_loop_new(0);
    struct pyse_kill_config c = QUIET;
    struct seen s = {.n = 0};
    const struct pyse_event *beat, *timeout;
    int fds[2];
    pid_t pid;
    int64_t started;

    c.heartbeat_timeout = SEC(0.05);
    c.immediate_interval = SEC(0.02);
    c.immediate_timeout = 0;
    CHECK(pyse_loop_own_signals(loop, NULL, 0) == 0, "own SIGCHLD");
    if (pipe(fds) < 0) {
        perror("pipe");
        exit(2);
    }
    started = now_ns();
    pid = fork_child(loop, fds[0], beat_once_late, fds[1]);
    close(fds[1]);
    CHECK(pyse_loop_add_child(loop, pid, fds[0], PYSE_CHILD_HEARTBEAT_OPTIONAL, &c, started) == 0,
          "add");
    CHECK(collect(loop, &s, PYSE_EV_EXITED, 1, 10.0, 8) == 0, "killed after its one beat");
    beat = find_kind(&s, PYSE_EV_HEARTBEAT, pid);
    timeout = find_kind(&s, PYSE_EV_HEARTBEAT_TIMEOUT, pid);
    CHECK(beat != NULL && timeout != NULL && beat < timeout, "a beat, then the timeout");
    CHECK(now_ns() - started >= SEC(0.25), "no timeout during the first 200 ms of silence");
    pyse_loop_free(loop);
}

/* Watched fds, and a parent heartbeat that hits a closed pipe. */
static void test_watched_fds_and_parent_heartbeat(void)
{
    struct pyse_loop *loop = pyse_loop_new(0);
    struct pyse_event ev[8];
    int a[2], beat[2], n;
    int64_t stamp = 0, before;

    if (pipe(a) < 0 || pipe(beat) < 0) {
        perror("pipe");
        exit(2);
    }
    CHECK(pyse_loop_watch_fd(loop, a[0], PYSE_READABLE) == 0, "watch a");
    CHECK(pyse_loop_watch_fd(loop, a[1], PYSE_WRITABLE) == 0, "watch a's write end");
    n = pyse_loop_wait(loop, now_ns() + SEC(5), ev, 8);
    CHECK(n == 1 && ev[0].kind == PYSE_EV_FD_READY && ev[0].pid == a[1] &&
              ev[0].status == PYSE_WRITABLE, "the write end is writable");
    CHECK(pyse_loop_watch_fd(loop, a[1], 0) == 0, "unwatch it");
    CHECK(write(a[1], "z", 1) == 1, "write");
    n = pyse_loop_wait(loop, now_ns() + SEC(5), ev, 8);
    CHECK(n == 1 && ev[0].kind == PYSE_EV_FD_READY && ev[0].pid == a[0] &&
              ev[0].status == PYSE_READABLE, "the read end is readable");
    CHECK(pyse_loop_watch_fd(loop, a[0], 0) == 0, "unwatch");
    CHECK(pyse_loop_watch_fd(loop, a[0], 0) == 0, "unwatch twice is fine");

    CHECK(pyse__make_nonblocking_cloexec(beat[1]) == 0, "non-blocking beat fd");
    CHECK(pyse_loop_set_parent_heartbeat(loop, beat[1], SEC(0.05)) == 0, "heartbeat");
    before = now_ns();
    n = pyse_loop_wait(loop, now_ns() + SEC(5), ev, 8);
    CHECK(n == 0, "a wait returns with no event when the next beat is due (%d)", n);
    CHECK(now_ns() - before >= SEC(0.05), "after the interval");
    CHECK(read(beat[0], &stamp, sizeof stamp) == sizeof stamp && stamp >= before &&
              stamp <= now_ns(), "the first beat is a stamp of the entry");
    n = pyse_loop_wait(loop, now_ns() + SEC(5), ev, 8);
    CHECK(n == 0 && read(beat[0], &stamp, sizeof stamp) == sizeof stamp, "a second beat");
    close(beat[0]); /* the parent dies */
    n = pyse_loop_wait(loop, now_ns() + SEC(5), ev, 8);
    CHECK(n == 1 && ev[0].kind == PYSE_EV_PARENT_GONE, "EPIPE is PARENT_GONE (%d)", n);
    n = pyse_loop_wait(loop, now_ns() + SEC(0.02), ev, 8);
    CHECK(n == 1 && ev[0].kind == PYSE_EV_TIMER, "reported once, no more beats");
    pyse_loop_free(loop);
    close(a[0]);
    close(a[1]);
    close(beat[1]);
}

/* The error context is per thread: a failure in one thread does not rewrite
 * what another thread reads. */
static void *fail_in_thread(void *arg)
{
    struct pyse_loop *loop = arg;
    (void)pyse_loop_stop_child(loop, 111, 1, 0);
    return NULL;
}

static void test_error_context_per_thread(void)
{
    struct pyse_loop *loop = pyse_loop_new(0);
    pthread_t thread;

    CHECK(pyse_loop_stop_child(loop, 222, 1, 0) < 0, "fails");
    CHECK(pthread_create(&thread, NULL, fail_in_thread, loop) == 0, "thread");
    pthread_join(thread, NULL);
    CHECK(strstr(pyse_error_context(), "222") != NULL, "still ours: %s", pyse_error_context());
    pyse_loop_free(loop);
}

int main(void)
{
    /* A hung wait must not hang the test run: die with SIGALRM instead. */
    alarm(300);
    /* As in Python: a write to a closed pipe is EPIPE, not death. */
    signal(SIGPIPE, SIG_IGN);
    test_monitor();
    test_errors();
    test_exits_kills_and_signals();
    test_heartbeat_timeout();
    test_many_children();
    test_fixed_fds_and_reap_any();
    test_orphan_kill_timer();
    test_child_side();
    test_free_with_children();
    test_stamped_beats_read_late();
    test_refresh_child();
    test_optional_heartbeat();
    test_watched_fds_and_parent_heartbeat();
    test_error_context_per_thread();
    printf("%d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
