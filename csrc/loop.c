/* loop.c -- the supervision loop: one poll(2) over the self-pipe, every
 * heartbeat pipe, and the caller's wakeup and lifeline fds; reaping on every
 * wake-up; the kill escalation of every child; a batch of events out.
 *
 * Nothing ticks.  The poll timeout is the time to the earliest deadline (a
 * heartbeat timeout, an escalation step, the caller's own timer), so an idle
 * loop sleeps and a deadline fires as soon as poll returns after it. */
#include "internal.h"

static const char *g_error_context = "";

int pyse__fail(const char *what)
{
    g_error_context = what;
    return -1;
}

const char *pyse_error_context(void)
{
    return g_error_context;
}

double pyse_now(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
        return PYSE_UNSET; /* cannot happen for CLOCK_MONOTONIC on Linux */
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int pyse__make_nonblocking_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return pyse__fail("fcntl: setting O_NONBLOCK");
    flags = fcntl(fd, F_GETFD);
    if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
        return pyse__fail("fcntl: setting FD_CLOEXEC");
    return 0;
}

struct pyse_loop *pyse_loop_new(int reap_any)
{
    struct pyse_loop *loop = calloc(1, sizeof *loop);
    if (loop == NULL) {
        pyse__fail("allocating the loop");
        return NULL;
    }
    loop->reap_any = reap_any;
    loop->selfpipe[0] = loop->selfpipe[1] = -1;
    loop->wakeup_fd = loop->lifeline_fd = -1;
    sigemptyset(&loop->owned);
    return loop;
}

void pyse__close_child_fds(struct pyse_loop *loop)
{
    int i;
    for (i = 0; i < loop->nchildren; i++) {
        if (loop->children[i].heartbeat_fd >= 0)
            close(loop->children[i].heartbeat_fd);
        loop->children[i].heartbeat_fd = -1;
    }
    loop->nchildren = 0;
}

void pyse_loop_free(struct pyse_loop *loop)
{
    if (loop == NULL)
        return;
    if (loop->selfpipe[0] >= 0)
        pyse_loop_release_signals(loop);
    pyse__close_child_fds(loop);
    free(loop->children);
    free(loop->pollfds);
    free(loop->queue);
    free(loop);
}

int pyse_loop_own_signals(struct pyse_loop *loop, const int *signals, int count)
{
    if (loop->selfpipe[0] >= 0) {
        errno = EBUSY;
        return pyse__fail("taking over signals: this loop already owns them");
    }
    if (pyse__selfpipe_open(loop->selfpipe) < 0)
        return -1;
    if (pyse__signals_install(loop->selfpipe[1], signals, count, loop->saved,
                              &loop->owned) < 0) {
        int saved = errno;
        close(loop->selfpipe[0]);
        close(loop->selfpipe[1]);
        loop->selfpipe[0] = loop->selfpipe[1] = -1;
        errno = saved;
        return -1;
    }
    return 0;
}

int pyse_loop_release_signals(struct pyse_loop *loop)
{
    int result;
    if (loop->selfpipe[0] < 0)
        return 0;
    /* Restore first: a signal arriving between the two steps must not find
     * a handler writing into a closed (or reused) fd. */
    result = pyse__signals_restore(loop->saved, &loop->owned);
    close(loop->selfpipe[0]);
    close(loop->selfpipe[1]);
    loop->selfpipe[0] = loop->selfpipe[1] = -1;
    return result;
}

int pyse_loop_set_wakeup_fd(struct pyse_loop *loop, int fd)
{
    /* Each wake-up drains the fd until EAGAIN: on a blocking fd the last
     * read would never return. */
    if (fd >= 0) {
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
            return pyse__fail("fcntl: making the wakeup fd non-blocking");
    }
    loop->wakeup_fd = fd;
    return 0;
}

int pyse_loop_set_lifeline_fd(struct pyse_loop *loop, int fd)
{
    loop->lifeline_fd = fd;
    return 0;
}

int pyse_loop_set_orphan_kill_delay(struct pyse_loop *loop, double seconds)
{
    loop->orphan_kill_delay = seconds;
    return 0;
}

static struct child *find_child(struct pyse_loop *loop, int pid)
{
    int i;
    for (i = 0; i < loop->nchildren; i++)
        if (loop->children[i].pid == pid)
            return &loop->children[i];
    return NULL;
}

static void remove_child(struct pyse_loop *loop, struct child *c)
{
    if (c->heartbeat_fd >= 0)
        close(c->heartbeat_fd);
    *c = loop->children[--loop->nchildren];
}

int pyse_loop_add_child(struct pyse_loop *loop, int pid, int heartbeat_fd,
                        const struct pyse_kill_config *config, double now)
{
    struct child *c;

    if (pid <= 0 || find_child(loop, pid) != NULL) {
        errno = EINVAL;
        return pyse__fail("adding a child: bad or duplicate pid");
    }
    if (heartbeat_fd >= 0 && pyse__make_nonblocking_cloexec(heartbeat_fd) < 0)
        return -1;
    if (loop->nchildren == loop->children_cap) {
        int cap = loop->children_cap ? loop->children_cap * 2 : 16;
        struct child *grown = realloc(loop->children, (size_t)cap * sizeof *grown);
        if (grown == NULL)
            return pyse__fail("growing the child table");
        loop->children = grown;
        loop->children_cap = cap;
    }
    c = &loop->children[loop->nchildren++];
    c->pid = pid;
    c->heartbeat_fd = heartbeat_fd;
    c->config = *config;
    pyse_monitor_init(&c->monitor, now, heartbeat_fd >= 0);
    return 0;
}

int pyse_loop_set_child_config(struct pyse_loop *loop, int pid,
                               const struct pyse_kill_config *config)
{
    struct child *c = find_child(loop, pid);
    if (c == NULL) {
        errno = ESRCH;
        return pyse__fail("setting a child's kill config: no such child");
    }
    c->config = *config;
    return 0;
}

int pyse_loop_stop_child(struct pyse_loop *loop, int pid, int immediate, double now)
{
    struct child *c = find_child(loop, pid);
    if (c == NULL) {
        errno = ESRCH;
        return pyse__fail("stopping a child: no such child");
    }
    if (immediate)
        pyse_monitor_immediate_stop(&c->monitor, now);
    else
        pyse_monitor_graceful_stop(&c->monitor, now);
    return 0;
}

int pyse_loop_get_monitor(struct pyse_loop *loop, int pid, struct pyse_monitor *out)
{
    struct child *c = find_child(loop, pid);
    if (c == NULL) {
        errno = ESRCH;
        return pyse__fail("reading a child's monitor: no such child");
    }
    *out = c->monitor;
    return 0;
}

int pyse_loop_child_count(struct pyse_loop *loop)
{
    return loop->nchildren;
}

/* ---- the event queue ------------------------------------------------------ */

static int queue_event(struct pyse_loop *loop, int kind, int pid, int status, int err)
{
    struct pyse_event *ev;

    if (loop->queue_head > 0 && loop->queue_head + loop->queue_len == loop->queue_cap) {
        memmove(loop->queue, loop->queue + loop->queue_head,
                (size_t)loop->queue_len * sizeof *loop->queue);
        loop->queue_head = 0;
    }
    if (loop->queue_head + loop->queue_len == loop->queue_cap) {
        int cap = loop->queue_cap ? loop->queue_cap * 2 : 64;
        struct pyse_event *grown = realloc(loop->queue, (size_t)cap * sizeof *grown);
        if (grown == NULL)
            return pyse__fail("growing the event queue");
        loop->queue = grown;
        loop->queue_cap = cap;
    }
    ev = &loop->queue[loop->queue_head + loop->queue_len++];
    ev->kind = kind;
    ev->pid = pid;
    ev->status = status;
    ev->err = err;
    return 0;
}

static int take_events(struct pyse_loop *loop, struct pyse_event *out, int max_events)
{
    int n = loop->queue_len < max_events ? loop->queue_len : max_events;
    memcpy(out, loop->queue + loop->queue_head, (size_t)n * sizeof *out);
    loop->queue_head += n;
    loop->queue_len -= n;
    if (loop->queue_len == 0)
        loop->queue_head = 0;
    return n;
}

/* ---- one wake-up ---------------------------------------------------------- */

static int read_signals(struct pyse_loop *loop)
{
    unsigned char buf[256];
    for (;;) {
        ssize_t n = read(loop->selfpipe[0], buf, sizeof buf);
        ssize_t i;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return 0;
            return pyse__fail("reading the signal self-pipe");
        }
        for (i = 0; i < n; i++) {
            /* SIGCHLD only says "reap": every wake-up does. */
            if (buf[i] != SIGCHLD && queue_event(loop, PYSE_EV_SIGNAL, 0, buf[i], 0) < 0)
                return -1;
        }
        if (n < (ssize_t)sizeof buf)
            return 0;
    }
}

static int report_exit(struct pyse_loop *loop, int pid, int status)
{
    struct child *c = find_child(loop, pid);
    if (c != NULL)
        remove_child(loop, c);
    return queue_event(loop, PYSE_EV_EXITED, pid, status, 0);
}

static int reap_children(struct pyse_loop *loop)
{
    int status, i;
    pid_t pid;

    if (loop->reap_any) {
        for (;;) {
            pid = waitpid(-1, &status, WNOHANG);
            if (pid == 0 || (pid < 0 && errno == ECHILD))
                return 0;
            if (pid < 0) {
                if (errno == EINTR)
                    continue;
                return pyse__fail("waitpid(-1): reaping children");
            }
            if (report_exit(loop, pid, status) < 0)
                return -1;
        }
    }
    /* Only our own children: a pid the caller started elsewhere stays its. */
    for (i = 0; i < loop->nchildren;) {
        pid = waitpid(loop->children[i].pid, &status, WNOHANG);
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid < 0 && errno != ECHILD)
            return pyse__fail("waitpid: reaping a child");
        if (pid == 0) {
            i++;
            continue;
        }
        if (pid < 0)
            status = 0; /* someone else reaped it: it is gone all the same */
        if (report_exit(loop, loop->children[i].pid, status) < 0)
            return -1;
        /* remove_child moved the last child into slot i: look at it next */
    }
    return 0;
}

/* Returns 1 at end of file, 0 when the pipe is drained, -1 on error. */
static int drain(int fd)
{
    char buf[512];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0)
            continue;
        if (n == 0)
            return 1;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN)
            return 0;
        return -1;
    }
}

static int read_heartbeats(struct pyse_loop *loop, const struct pollfd *pfds, int npfds,
                           double now)
{
    int i;
    for (i = 0; i < npfds; i++) {
        struct child *c;
        int state, status;
        if (pfds[i].revents == 0)
            continue;
        c = NULL;
        for (int j = 0; j < loop->nchildren; j++)
            if (loop->children[j].heartbeat_fd == pfds[i].fd)
                c = &loop->children[j];
        if (c == NULL)
            continue; /* its child was reaped during this wake-up */
        state = drain(c->heartbeat_fd);
        if (state == 0) {
            pyse_monitor_heartbeat(&c->monitor, now);
            if (queue_event(loop, PYSE_EV_HEARTBEAT, c->pid, 0, 0) < 0)
                return -1;
            continue;
        }
        /* EOF (or a read error, which means the same for us): the child is
         * gone or closed its pipe.  The exit usually closes the pipe a moment
         * before the child becomes reapable, so look once more before asking
         * for an immediate stop: that spares a QUIT to a dead process. */
        close(c->heartbeat_fd);
        c->heartbeat_fd = -1;
        c->monitor.watch_heartbeat = 0;
        if (queue_event(loop, PYSE_EV_CLOSED, c->pid, 0, state < 0 ? errno : 0) < 0)
            return -1;
        if (waitpid(c->pid, &status, WNOHANG) == c->pid) {
            if (report_exit(loop, c->pid, status) < 0)
                return -1;
            continue;
        }
        pyse_monitor_immediate_stop(&c->monitor, now);
    }
    return 0;
}

static int run_escalation(struct pyse_loop *loop, double now)
{
    int i;
    for (i = 0; i < loop->nchildren; i++) {
        struct child *c = &loop->children[i];
        int promoted, signo;

        signo = pyse_monitor_tick(&c->monitor, &c->config, now, &promoted);
        if (promoted == PYSE_PROMOTED_HEARTBEAT &&
            queue_event(loop, PYSE_EV_HEARTBEAT_TIMEOUT, c->pid, 0, 0) < 0)
            return -1;
        if (promoted == PYSE_PROMOTED_GRACEFUL &&
            queue_event(loop, PYSE_EV_GRACEFUL_TIMEOUT, c->pid, 0, 0) < 0)
            return -1;
        if (signo == 0)
            continue;
        /* Deciding is pure (monitor.c); sending happens here. */
        if (kill(c->pid, signo) < 0) {
            int err = errno;
            if (err == ESRCH)
                c->monitor.gone = 1; /* nothing more to send it */
            if (queue_event(loop, PYSE_EV_KILL, c->pid, signo, err) < 0)
                return -1;
        } else if (queue_event(loop, PYSE_EV_KILL, c->pid, signo, 0) < 0) {
            return -1;
        }
    }
    return 0;
}

static double earliest_deadline(struct pyse_loop *loop, double deadline)
{
    int i;
    for (i = 0; i < loop->nchildren; i++) {
        double t = pyse_monitor_deadline(&loop->children[i].monitor,
                                         &loop->children[i].config);
        if (t != PYSE_UNSET && (deadline == PYSE_UNSET || t < deadline))
            deadline = t;
    }
    return deadline;
}

static int poll_timeout_ms(double deadline, double now)
{
    double ms;
    if (deadline == PYSE_UNSET)
        return -1;
    ms = ceil((deadline - now) * 1000.0);
    /* A deadline that is still pending after the tick that should have fired
     * it is a rounding case (`<` against `<=`): look again in 1 ms. */
    if (ms < 1)
        return 1;
    if (ms > 86400000.0)
        return 86400000;
    return (int)ms;
}

static int build_pollfds(struct pyse_loop *loop)
{
    int n = 0, need = loop->nchildren + 3, i;

    if (need > loop->pollfds_cap) {
        struct pollfd *grown = realloc(loop->pollfds, (size_t)need * sizeof *grown);
        if (grown == NULL)
            return pyse__fail("growing the poll set");
        loop->pollfds = grown;
        loop->pollfds_cap = need;
    }
    for (i = 0; i < loop->nchildren; i++) {
        if (loop->children[i].heartbeat_fd < 0)
            continue;
        loop->pollfds[n].fd = loop->children[i].heartbeat_fd;
        loop->pollfds[n].events = POLLIN;
        loop->pollfds[n++].revents = 0;
    }
    /* The three fixed fds go last so that heartbeat fds are a prefix. */
    loop->pollfds[n].fd = loop->selfpipe[0];
    loop->pollfds[n + 1].fd = loop->wakeup_fd;
    loop->pollfds[n + 2].fd = loop->lifeline_fd;
    for (i = n; i < n + 3; i++) {
        loop->pollfds[i].events = POLLIN;
        loop->pollfds[i].revents = 0;
    }
    return n;
}

static int handle_fixed_fds(struct pyse_loop *loop, const struct pollfd *fixed)
{
    if (fixed[0].revents && read_signals(loop) < 0)
        return -1;
    if (fixed[1].revents) {
        if (drain(loop->wakeup_fd) < 0)
            return pyse__fail("reading the wakeup fd");
        if (queue_event(loop, PYSE_EV_WAKEUP, 0, 0, 0) < 0)
            return -1;
    }
    if (fixed[2].revents) {
        /* Only the parent writes to the lifeline, and never does: readable
         * means end of file, i.e. every writer is gone.  Report it once.
         * The kill timer is armed here, before the caller needs the GIL
         * again, so that an orphan whose Python is wedged still dies. */
        loop->lifeline_fd = -1;
        if (loop->orphan_kill_delay > 0 && pyse__arm_kill_timer(loop->orphan_kill_delay) < 0)
            return -1;
        if (queue_event(loop, PYSE_EV_PARENT_GONE, 0, 0, 0) < 0)
            return -1;
    }
    return 0;
}

int pyse_loop_wait(struct pyse_loop *loop, double deadline,
                   struct pyse_event *out, int max_events)
{
    int nheartbeat, ready;
    double now;

    if (max_events <= 0) {
        errno = EINVAL;
        return pyse__fail("waiting: max_events must be positive");
    }
    /* Events left over from the last wake-up come first, and without waiting:
     * the caller has not seen them yet. */
    while (loop->queue_len == 0) {
        now = pyse_now();
        if (reap_children(loop) < 0)
            return -1;
        /* Signals on every pass, not only when poll says so: with children
         * dying faster than the caller comes back (a crash loop), the reap
         * above always has news, poll is never reached, and a TERM waiting
         * in the self-pipe would starve.  The pipe is non-blocking, so an
         * empty one costs one read(2).  (A loop that owns no signals has no
         * pipe.)  Exits are queued before signals, here and after poll: the
         * caller then acts on a signal knowing which children are gone. */
        if (loop->selfpipe[0] >= 0 && read_signals(loop) < 0)
            return -1;
        if (run_escalation(loop, now) < 0)
            return -1;
        if (deadline != PYSE_UNSET && deadline <= now) {
            if (queue_event(loop, PYSE_EV_TIMER, 0, 0, 0) < 0)
                return -1;
            deadline = PYSE_UNSET;
        }
        if (loop->queue_len > 0)
            break;

        nheartbeat = build_pollfds(loop);
        if (nheartbeat < 0)
            return -1;
        ready = poll(loop->pollfds, (nfds_t)nheartbeat + 3,
                     poll_timeout_ms(earliest_deadline(loop, deadline), now));
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            return pyse__fail("poll");
        }
        now = pyse_now();
        /* Reap before reading heartbeats (a child that exited is reported as
         * exited, not first as a closed pipe) and before signals (above). */
        if (reap_children(loop) < 0)
            return -1;
        if (handle_fixed_fds(loop, loop->pollfds + nheartbeat) < 0)
            return -1;
        if (read_heartbeats(loop, loop->pollfds, nheartbeat, now) < 0)
            return -1;
        if (run_escalation(loop, now) < 0)
            return -1;
    }
    return take_events(loop, out, max_events);
}
