/* loop.c -- the supervision loop: one poll(2) over the self-pipe, the
 * children's heartbeat pipes, and the caller's wakeup, lifeline and watched
 * fds; reaping on every wake-up; the kill escalation of every child; a batch
 * of events out.
 *
 * Nothing ticks.  The poll timeout is the time to the earliest deadline (a
 * heartbeat timeout, an escalation step, this process's own heartbeat, the
 * caller's timer), so an idle loop sleeps and a deadline fires as soon as
 * poll returns after it.
 *
 * Heartbeats are liveness, not events: only a child's first beat is
 * reported (the child is up).  pyse's own children write 8-byte stamps of
 * CLOCK_MONOTONIC, so their pipes are polled for input only until that first
 * beat; after it only a hangup wakes the loop, and the stamps that pile up
 * are read when the child's heartbeat deadline comes.  The latest stamp
 * tells exactly when the child last beat, so the timeout fires exactly when
 * it is due, whatever the time of the read.  A server with a thousand idle
 * workers thus wakes about workers / heartbeat_timeout times a second, not
 * workers / interval.  Other children's bytes (spawned programs) carry no
 * time, so they are read as they come. */
#include "internal.h"

/* Bytes that fill a default pipe: a drain that reads this much found the
 * pipe full, so the child was beating until its writes started to fail. */
#define PIPE_FULL_BYTES (65536 - 8)

/* ---- setup ------------------------------------------------------------------ */

struct pyse_loop *pyse_loop_new(int reap_any)
{
    struct pyse_loop *loop = calloc(1, sizeof *loop);
    if (loop == NULL) {
        pyse__fail("calloc: allocating the loop");
        return NULL;
    }
    loop->reap_any = reap_any;
    loop->selfpipe[0] = loop->selfpipe[1] = -1;
    loop->wakeup_fd = loop->lifeline_fd = loop->beat_fd = -1;
    loop->next_beat = PYSE_NO_TIME;
    sigemptyset(&loop->owned);
    return loop;
}

static void close_child_fds(struct pyse_loop *loop)
{
    int i;
    for (i = 0; i < loop->nchildren; i++) {
        if (loop->children[i].heartbeat_fd >= 0)
            pyse__close_keeping_errno(loop->children[i].heartbeat_fd);
        loop->children[i].heartbeat_fd = -1;
    }
    loop->nchildren = 0;
}

void pyse__loop_abandon(struct pyse_loop *loop)
{
    close_child_fds(loop);
    loop->nwatched = 0;
    loop->wakeup_fd = loop->lifeline_fd = loop->beat_fd = -1;
    loop->queue_len = loop->queue_head = 0;
    loop->nsignals = 0;
}

void pyse_loop_free(struct pyse_loop *loop)
{
    if (loop == NULL)
        return;
    if (loop->selfpipe[0] >= 0)
        (void)pyse_loop_release_signals(loop); /* nothing left to report it to */
    close_child_fds(loop);
    free(loop->children);
    free(loop->signals);
    free(loop->watched);
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
        pyse__close_keeping_errno(loop->selfpipe[0]);
        pyse__close_keeping_errno(loop->selfpipe[1]);
        loop->selfpipe[0] = loop->selfpipe[1] = -1;
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
    pyse__close_keeping_errno(loop->selfpipe[0]);
    pyse__close_keeping_errno(loop->selfpipe[1]);
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
            return pyse__fail("fcntl(%d): making the wakeup fd non-blocking", fd);
    }
    loop->wakeup_fd = fd;
    return 0;
}

int pyse_loop_set_lifeline_fd(struct pyse_loop *loop, int fd, int64_t orphan_kill_delay)
{
    loop->lifeline_fd = fd;
    loop->orphan_kill_delay = orphan_kill_delay;
    return 0;
}

int pyse_loop_set_parent_heartbeat(struct pyse_loop *loop, int fd, int64_t interval)
{
    if (fd >= 0 && interval <= 0) {
        errno = EINVAL;
        return pyse__fail("heartbeat on fd %d: the interval must be positive", fd);
    }
    loop->beat_fd = fd;
    loop->beat_interval = interval;
    loop->next_beat = fd >= 0 ? 0 : PYSE_NO_TIME; /* the first beat at once */
    return 0;
}

int pyse_loop_watch_fd(struct pyse_loop *loop, int fd, int events)
{
    int i;

    if (fd < 0 || (events & ~(PYSE_READABLE | PYSE_WRITABLE)) != 0) {
        errno = EINVAL;
        return pyse__fail("watching fd %d for events %d: bad fd or events", fd, events);
    }
    for (i = 0; i < loop->nwatched; i++) {
        if (loop->watched[i].fd != fd)
            continue;
        if (events == 0)
            loop->watched[i] = loop->watched[--loop->nwatched];
        else
            loop->watched[i].events = events;
        return 0;
    }
    if (events == 0)
        return 0;
    if (loop->nwatched == loop->watched_cap) {
        int cap = loop->watched_cap ? loop->watched_cap * 2 : 8;
        struct watched_fd *grown = realloc(loop->watched, (size_t)cap * sizeof *grown);
        if (grown == NULL)
            return pyse__fail("realloc: growing the watched fds to %d", cap);
        loop->watched = grown;
        loop->watched_cap = cap;
    }
    loop->watched[loop->nwatched].fd = fd;
    loop->watched[loop->nwatched++].events = events;
    return 0;
}

/* ---- children --------------------------------------------------------------- */

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
        pyse__close_keeping_errno(c->heartbeat_fd);
    *c = loop->children[--loop->nchildren];
}

int pyse_loop_add_child(struct pyse_loop *loop, int pid, int heartbeat_fd, int flags,
                        const struct pyse_kill_config *config, int64_t now)
{
    struct child *c;

    if (pid <= 0 || find_child(loop, pid) != NULL) {
        errno = EINVAL;
        return pyse__fail("adding child %d: bad or duplicate pid", pid);
    }
    if (heartbeat_fd >= 0 && pyse__make_nonblocking_cloexec(heartbeat_fd) < 0)
        return -1;
    if (loop->nchildren == loop->children_cap) {
        int cap = loop->children_cap ? loop->children_cap * 2 : 16;
        struct child *grown = realloc(loop->children, (size_t)cap * sizeof *grown);
        if (grown == NULL)
            return pyse__fail("realloc: growing the child table to %d", cap);
        loop->children = grown;
        loop->children_cap = cap;
    }
    c = &loop->children[loop->nchildren++];
    memset(c, 0, sizeof *c);
    c->pid = pid;
    c->heartbeat_fd = heartbeat_fd;
    c->flags = flags;
    c->config = *config;
    pyse_monitor_init(&c->monitor, now,
                      heartbeat_fd >= 0 && !(flags & PYSE_CHILD_HEARTBEAT_OPTIONAL));
    return 0;
}

int pyse_loop_set_child_config(struct pyse_loop *loop, int pid,
                               const struct pyse_kill_config *config)
{
    struct child *c = find_child(loop, pid);
    if (c == NULL) {
        errno = ESRCH;
        return pyse__fail("setting the kill config of child %d: not monitored", pid);
    }
    c->config = *config;
    return 0;
}

int pyse_loop_stop_child(struct pyse_loop *loop, int pid, int immediate, int64_t now)
{
    struct child *c = find_child(loop, pid);
    if (c == NULL) {
        errno = ESRCH;
        return pyse__fail("stopping child %d: not monitored", pid);
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
        return pyse__fail("reading the monitor of child %d: not monitored", pid);
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
            return pyse__fail("realloc: growing the event queue to %d", cap);
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
    if (n == 0)
        return 0; /* the queue may not even be allocated yet */
    memcpy(out, loop->queue + loop->queue_head, (size_t)n * sizeof *out);
    loop->queue_head += n;
    loop->queue_len -= n;
    if (loop->queue_len == 0)
        loop->queue_head = 0;
    return n;
}

/* ---- signals, exits, the parent ------------------------------------------- */

/* Reads the self-pipe.  The signal numbers are queued by queue_signals(),
 * after the exits of the reap that follows the read: a SIGCHLD whose byte
 * this read takes is then always followed by a reap that sees its child
 * (reaping first, a child dying between the reap and the read would have
 * its byte eaten and wait for some other wake-up), and the caller acts on
 * a signal knowing which children are gone. */
static int read_signals(struct pyse_loop *loop)
{
    unsigned char buf[256];
    for (;;) {
        ssize_t n = read(loop->selfpipe[0], buf, sizeof buf);
        ssize_t i;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return pyse__fail("read(%d): the signal self-pipe", loop->selfpipe[0]);
        }
        for (i = 0; i < n; i++) {
            /* SIGCHLD only says "reap": every pass does. */
            if (buf[i] == SIGCHLD)
                continue;
            if (loop->nsignals == loop->signals_cap) {
                int cap = loop->signals_cap ? loop->signals_cap * 2 : 16;
                unsigned char *grown = realloc(loop->signals, (size_t)cap);
                if (grown == NULL)
                    return pyse__fail("realloc: growing the signal buffer to %d", cap);
                loop->signals = grown;
                loop->signals_cap = cap;
            }
            loop->signals[loop->nsignals++] = buf[i];
        }
        if (n < (ssize_t)sizeof buf)
            return 0;
    }
}

static int queue_signals(struct pyse_loop *loop)
{
    int i;
    for (i = 0; i < loop->nsignals; i++)
        if (queue_event(loop, PYSE_EV_SIGNAL, 0, loop->signals[i], 0) < 0)
            return -1;
    loop->nsignals = 0;
    return 0;
}

static int read_child_pipe(struct pyse_loop *loop, struct child *c, int64_t now);

static int report_exit(struct pyse_loop *loop, int pid, int status)
{
    struct child *c = find_child(loop, pid);
    if (c != NULL) {
        /* A child that beat and died at once: its first beat is still in
         * the pipe, and the owner must hear that it was up before it
         * hears that it exited. */
        if (!c->beaten && c->heartbeat_fd >= 0 && !(c->flags & PYSE_CHILD_REAPED)) {
            int64_t now;
            c->flags |= PYSE_CHILD_REAPED; /* the pipe's EOF must not peek or stop */
            c->monitor.gone = 1;
            if (pyse_clock_now(&now) < 0 || read_child_pipe(loop, c, now) < 0)
                return -1;
        }
        remove_child(loop, c);
    }
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
        int child = loop->children[i].pid;
        if (loop->children[i].flags & PYSE_CHILD_REAPED) {
            i++; /* reaped when its pipe closed: settle_closed_children reports it */
            continue;
        }
        pid = waitpid(child, &status, WNOHANG);
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid < 0 && errno != ECHILD)
            return pyse__fail("waitpid(%d): reaping a child", child);
        if (pid == 0) {
            i++;
            continue;
        }
        if (pid < 0)
            status = 0; /* someone else reaped it: it is gone all the same */
        if (report_exit(loop, child, status) < 0)
            return -1;
        /* remove_child moved the last child into slot i: look at it next */
    }
    return 0;
}

/* The parent is gone (lifeline hangup, or a heartbeat hit EPIPE): report it
 * once, and arm the kill timer before the caller needs its GIL again, so
 * that an orphan whose Python is wedged still dies. */
static int parent_gone(struct pyse_loop *loop)
{
    loop->lifeline_fd = -1;
    loop->beat_fd = -1;
    loop->next_beat = PYSE_NO_TIME;
    if (loop->parent_gone)
        return 0;
    loop->parent_gone = 1;
    if (loop->orphan_kill_delay > 0 && pyse__orphan_arm(loop->orphan_kill_delay) < 0)
        return -1;
    return queue_event(loop, PYSE_EV_PARENT_GONE, 0, 0, 0);
}

static int beat_to_parent(struct pyse_loop *loop, int64_t now)
{
    ssize_t n;

    loop->next_beat = pyse__add_time(now, loop->beat_interval);
    do {
        n = write(loop->beat_fd, &now, sizeof now);
    } while (n < 0 && errno == EINTR);
    if (n >= 0 || errno == EAGAIN || errno == EWOULDBLOCK)
        return 0; /* a full pipe: the parent is behind on reading, which is fine */
    if (errno == EPIPE)
        return parent_gone(loop);
    return pyse__fail("write(%d): a heartbeat to the parent", loop->beat_fd);
}

/* ---- the children's heartbeat pipes ----------------------------------------- */

struct beats_read {
    struct child *child;
    int64_t now;
    size_t bytes;
    int64_t latest;              /* the latest stamp, or PYSE_NO_TIME */
};

static void take_stamps(void *arg, const unsigned char *bytes, size_t n)
{
    struct beats_read *r = arg;
    struct child *c = r->child;
    size_t i;

    r->bytes += n;
    if (!(c->flags & PYSE_CHILD_STAMPED_BEATS))
        return;
    for (i = 0; i < n; i++) {
        c->stamp[c->stamp_len++] = bytes[i];
        if (c->stamp_len == (int)sizeof c->stamp) {
            int64_t stamp;
            memcpy(&stamp, c->stamp, sizeof stamp);
            c->stamp_len = 0;
            if (stamp > r->latest)
                r->latest = stamp;
        }
    }
}

/* Reads what the child's pipe holds.  A beat moves its last heartbeat to the
 * latest stamp (never past now, never backwards), or to now for unstamped
 * bytes or a full pipe; the first one is reported.  End of file closes the
 * pipe and reports CLOSED.  An exit closes the pipe a moment before the
 * child can be reaped, so look once more: a child reaped here is reported
 * as exited by the next pass; one still alive gets an immediate stop there
 * (settle_closed_children).  Neither happens here, where the caller may be
 * walking the child table. */
static int read_child_pipe(struct pyse_loop *loop, struct child *c, int64_t now)
{
    struct beats_read r = {c, now, 0, PYSE_NO_TIME};
    int state = pyse__drain(c->heartbeat_fd, take_stamps, &r);
    int read_errno = state < 0 ? errno : 0;

    if (r.bytes > 0) {
        int64_t beat = now;
        if ((c->flags & PYSE_CHILD_STAMPED_BEATS) && r.bytes < PIPE_FULL_BYTES)
            beat = r.latest == PYSE_NO_TIME || r.latest > now ? now : r.latest;
        if (beat > c->monitor.last_heartbeat)
            pyse_monitor_heartbeat(&c->monitor, beat);
        if (!c->beaten) {
            c->beaten = 1;
            if (c->flags & PYSE_CHILD_HEARTBEAT_OPTIONAL)
                c->monitor.watch_heartbeat = 1;
            if (queue_event(loop, PYSE_EV_HEARTBEAT, c->pid, 0, 0) < 0)
                return -1;
        }
    }
    if (state == 0)
        return 0;
    /* EOF (or a read error, which means the same for us): the child is gone
     * or closed its pipe. */
    pyse__close_keeping_errno(c->heartbeat_fd);
    c->heartbeat_fd = -1;
    c->monitor.watch_heartbeat = 0;
    if (c->flags & PYSE_CHILD_REAPED)
        return 0; /* being reported as exited right now: that says it all */
    if (queue_event(loop, PYSE_EV_CLOSED, c->pid, 0, read_errno) < 0)
        return -1;
    for (;;) {
        int status;
        pid_t pid = waitpid(c->pid, &status, WNOHANG);
        if (pid == c->pid) {
            c->flags |= PYSE_CHILD_REAPED;
            c->exit_status = status;
            c->monitor.gone = 1; /* its pid may be reused: never signal it */
        } else if (pid < 0 && errno == EINTR) {
            continue;
        } else if (pid < 0 && errno != ECHILD) {
            return pyse__fail("waitpid(%d): after its pipe closed", c->pid);
        } else {
            c->flags |= PYSE_CHILD_CLOSED_PENDING; /* alive, or reaped elsewhere */
        }
        return 0;
    }
}

int pyse_loop_refresh_child(struct pyse_loop *loop, int pid, int64_t now)
{
    struct child *c = find_child(loop, pid);
    if (c == NULL) {
        errno = ESRCH;
        return pyse__fail("refreshing the heartbeat of child %d: not monitored", pid);
    }
    return c->heartbeat_fd >= 0 ? read_child_pipe(loop, c, now) : 0;
}

/* A pipe that reached EOF means the child is going away: report the ones
 * reaped at that moment, and give the others, not reaped since, an
 * immediate stop (the escalation sends QUIT). */
static int settle_closed_children(struct pyse_loop *loop, int64_t now)
{
    int i;
    for (i = 0; i < loop->nchildren;) {
        struct child *c = &loop->children[i];
        if (c->flags & PYSE_CHILD_REAPED) {
            if (report_exit(loop, c->pid, c->exit_status) < 0)
                return -1;
            continue; /* report_exit moved the last child into slot i */
        }
        if (c->flags & PYSE_CHILD_CLOSED_PENDING) {
            c->flags &= ~PYSE_CHILD_CLOSED_PENDING;
            pyse_monitor_immediate_stop(&c->monitor, now);
        }
        i++;
    }
    return 0;
}

/* ---- the escalation ----------------------------------------------------------- */

static int send_kill(struct pyse_loop *loop, struct child *c, int signo)
{
    int err = 0;
    /* Deciding is pure (monitor.c); sending happens here. */
    if (kill(c->pid, signo) < 0) {
        err = errno;
        if (err == ESRCH)
            c->monitor.gone = 1; /* nothing more to send it */
    }
    return queue_event(loop, PYSE_EV_KILL, c->pid, signo, err);
}

static int run_escalation(struct pyse_loop *loop, int64_t now)
{
    int i;
    for (i = 0; i < loop->nchildren; i++) {
        struct child *c = &loop->children[i];
        int promoted, signo;

        /* The heartbeat deadline came: read the beats that piled up before
         * deciding that there were none. */
        if (c->heartbeat_fd >= 0 && c->monitor.watch_heartbeat &&
            c->monitor.immediate_start == PYSE_NO_TIME &&
            now - c->monitor.last_heartbeat >= c->config.heartbeat_timeout &&
            read_child_pipe(loop, c, now) < 0)
            return -1;

        signo = pyse_monitor_tick(&c->monitor, &c->config, now, &promoted);
        if (promoted == PYSE_PROMOTED_HEARTBEAT &&
            queue_event(loop, PYSE_EV_HEARTBEAT_TIMEOUT, c->pid, 0, 0) < 0)
            return -1;
        if (promoted == PYSE_PROMOTED_GRACEFUL &&
            queue_event(loop, PYSE_EV_GRACEFUL_TIMEOUT, c->pid, 0, 0) < 0)
            return -1;
        if (signo != 0 && send_kill(loop, c, signo) < 0)
            return -1;
    }
    return 0;
}

static int64_t earliest(int64_t a, int64_t b)
{
    if (a == PYSE_NO_TIME)
        return b;
    if (b == PYSE_NO_TIME)
        return a;
    return a < b ? a : b;
}

static int64_t next_deadline(struct pyse_loop *loop, int64_t deadline)
{
    int i;
    for (i = 0; i < loop->nchildren; i++)
        deadline = earliest(deadline, pyse_monitor_deadline(&loop->children[i].monitor,
                                                            &loop->children[i].config));
    if (loop->beat_fd >= 0)
        deadline = earliest(deadline, loop->next_beat);
    return deadline;
}

/* ---- one wake-up ---------------------------------------------------------- */

/* poll(2) entries, in this order: the children's pipes, the watched fds,
 * then the self-pipe, wakeup and lifeline fds (-1 entries are ignored). */
#define FIXED_FDS 3

static int build_pollfds(struct pyse_loop *loop, int *nchild_fds)
{
    int n = 0, need = loop->nchildren + loop->nwatched + FIXED_FDS, i;

    if (need > loop->pollfds_cap) {
        struct pollfd *grown = realloc(loop->pollfds, (size_t)need * sizeof *grown);
        if (grown == NULL)
            return pyse__fail("realloc: growing the poll set to %d", need);
        loop->pollfds = grown;
        loop->pollfds_cap = need;
    }
    for (i = 0; i < loop->nchildren; i++) {
        const struct child *c = &loop->children[i];
        if (c->heartbeat_fd < 0)
            continue;
        loop->pollfds[n].fd = c->heartbeat_fd;
        /* After a stamped child's first beat only a hangup (always
         * reported) wakes us; its stamps say when it beat whenever they are
         * read.  Plain bytes only say "now", so they are read as they come. */
        loop->pollfds[n].events =
            (c->beaten && (c->flags & PYSE_CHILD_STAMPED_BEATS)) ? 0 : POLLIN;
        loop->pollfds[n++].revents = 0;
    }
    *nchild_fds = n;
    for (i = 0; i < loop->nwatched; i++) {
        loop->pollfds[n].fd = loop->watched[i].fd;
        loop->pollfds[n].events = (short)(((loop->watched[i].events & PYSE_READABLE) ? POLLIN : 0) |
                                          ((loop->watched[i].events & PYSE_WRITABLE) ? POLLOUT : 0));
        loop->pollfds[n++].revents = 0;
    }
    loop->pollfds[n].fd = loop->selfpipe[0];
    loop->pollfds[n + 1].fd = loop->wakeup_fd;
    loop->pollfds[n + 2].fd = loop->lifeline_fd;
    for (i = n; i < n + FIXED_FDS; i++) {
        loop->pollfds[i].events = POLLIN;
        loop->pollfds[i].revents = 0;
    }
    return n + FIXED_FDS;
}

static int handle_fixed_fds(struct pyse_loop *loop, const struct pollfd *fixed)
{
    if (fixed[0].revents && read_signals(loop) < 0)
        return -1;
    if (fixed[1].revents) {
        if (pyse__drain(loop->wakeup_fd, NULL, NULL) < 0)
            return pyse__fail("read(%d): draining the wakeup fd", loop->wakeup_fd);
        if (queue_event(loop, PYSE_EV_WAKEUP, 0, 0, 0) < 0)
            return -1;
    }
    /* Only the parent writes to the lifeline, and never does: readable
     * means end of file, i.e. every writer is gone. */
    if (fixed[2].revents && parent_gone(loop) < 0)
        return -1;
    return 0;
}

static int handle_watched_fds(struct pyse_loop *loop, const struct pollfd *pfds, int n)
{
    int i;
    for (i = 0; i < n; i++) {
        int ready = 0;
        if (pfds[i].revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL))
            ready |= PYSE_READABLE;
        if (pfds[i].revents & (POLLOUT | POLLERR))
            ready |= PYSE_WRITABLE;
        if (ready && queue_event(loop, PYSE_EV_FD_READY, pfds[i].fd, ready, 0) < 0)
            return -1;
    }
    return 0;
}

static int handle_child_fds(struct pyse_loop *loop, const struct pollfd *pfds, int n,
                            int64_t now)
{
    int i, j;
    for (i = 0; i < n; i++) {
        if (pfds[i].revents == 0)
            continue;
        /* Look the child up by fd: a reap since poll may have moved it. */
        for (j = 0; j < loop->nchildren; j++) {
            if (loop->children[j].heartbeat_fd == pfds[i].fd) {
                if (read_child_pipe(loop, &loop->children[j], now) < 0)
                    return -1;
                break;
            }
        }
    }
    return 0;
}

/* What every pass does, before poll and after it: exits first, then
 * signals, so the caller acts on a signal knowing which children are gone;
 * then the stops and the escalation.  Signals are read on every pass, not
 * only when poll says so: with children dying faster than the caller comes
 * back (a crash loop), there is always news before poll, poll is never
 * reached, and a TERM waiting in the self-pipe would starve. */
static int run_pass(struct pyse_loop *loop, int64_t now, int64_t *deadline)
{
    if (loop->selfpipe[0] >= 0 && read_signals(loop) < 0)
        return -1;
    if (reap_children(loop) < 0 || queue_signals(loop) < 0)
        return -1;
    if (settle_closed_children(loop, now) < 0)
        return -1;
    if (run_escalation(loop, now) < 0)
        return -1;
    if (*deadline != PYSE_NO_TIME && *deadline <= now) {
        if (queue_event(loop, PYSE_EV_TIMER, 0, 0, 0) < 0)
            return -1;
        *deadline = PYSE_NO_TIME;
    }
    return 0;
}

int pyse_loop_wait(struct pyse_loop *loop, int64_t deadline,
                   struct pyse_event *out, int max_events)
{
    int npoll, nchild_fds = 0, ready, first = 1;
    int64_t now;

    if (max_events <= 0) {
        errno = EINVAL;
        return pyse__fail("waiting for %d events: max_events must be positive", max_events);
    }
    for (;;) {
        if (pyse_clock_now(&now) < 0)
            return -1;
        if (loop->beat_fd >= 0 && now >= loop->next_beat) {
            /* Beat only on entry, when the caller is known to be running;
             * a beat that falls due while waiting returns to the caller. */
            if (!first)
                break;
            if (beat_to_parent(loop, now) < 0)
                return -1;
        }
        first = 0;
        /* Events left over from the last wake-up come first, and without
         * waiting: the caller has not seen them yet. */
        if (loop->queue_len > 0)
            break;
        if (run_pass(loop, now, &deadline) < 0)
            return -1;
        if (loop->queue_len > 0)
            break;

        npoll = build_pollfds(loop, &nchild_fds);
        if (npoll < 0)
            return -1;
        ready = poll(loop->pollfds, (nfds_t)npoll,
                     pyse__poll_timeout_ms(next_deadline(loop, deadline), now));
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            return pyse__fail("poll: %d fds", npoll);
        }
        if (ready == 0)
            continue;
        if (pyse_clock_now(&now) < 0)
            return -1;
        /* Reap before reading pipes: a child that exited is reported as
         * exited, not first as a closed pipe. */
        if (reap_children(loop) < 0)
            return -1;
        if (handle_fixed_fds(loop, loop->pollfds + npoll - FIXED_FDS) < 0)
            return -1;
        if (handle_watched_fds(loop, loop->pollfds + nchild_fds,
                               npoll - FIXED_FDS - nchild_fds) < 0)
            return -1;
        if (handle_child_fds(loop, loop->pollfds, nchild_fds, now) < 0)
            return -1;
    }
    return take_events(loop, out, max_events);
}
