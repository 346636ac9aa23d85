/* monitor.c -- the kill escalation of one monitored child, as a pure
 * function of its state, its timing configuration and `now`.
 *
 * This is ServerEngine's ProcessManager::Monitor#tick.  It decides and never
 * acts: the loop sends the signal it returns, so tests can drive it with a
 * fake clock.  Times are integer nanoseconds, so the comparisons are exact
 * and the deadlines below are exactly the first instants at which they
 * hold. */
#include "internal.h"

static int is_set(int64_t t) { return t != PYSE_NO_TIME; }

void pyse_monitor_init(struct pyse_monitor *m, int64_t now, int watch_heartbeat)
{
    m->last_heartbeat = now;
    m->next_kill = PYSE_NO_TIME;
    m->graceful_start = PYSE_NO_TIME;
    m->immediate_start = PYSE_NO_TIME;
    m->kill_count = 0;
    m->watch_heartbeat = watch_heartbeat;
    m->gone = 0;
}

void pyse_monitor_graceful_stop(struct pyse_monitor *m, int64_t now)
{
    if (!is_set(m->next_kill))
        m->next_kill = now;
    if (!is_set(m->graceful_start))
        m->graceful_start = now;
}

void pyse_monitor_immediate_stop(struct pyse_monitor *m, int64_t now)
{
    /* An immediate stop during a graceful one keeps the pending step's time:
     * ServerEngine's `next_kill ||= now`.  The first QUIT goes out when the
     * next TERM would have. */
    if (!is_set(m->next_kill))
        m->next_kill = now;
    if (!is_set(m->immediate_start))
        m->immediate_start = now;
}

void pyse_monitor_heartbeat(struct pyse_monitor *m, int64_t now)
{
    m->last_heartbeat = now;
}

/* now - last_heartbeat >= heartbeat_timeout */
static int64_t heartbeat_deadline(const struct pyse_monitor *m, const struct pyse_kill_config *c)
{
    return pyse__add_time(m->last_heartbeat, c->heartbeat_timeout);
}

/* graceful_start < now - graceful_timeout, i.e. now > start + timeout */
static int64_t graceful_deadline(const struct pyse_monitor *m, const struct pyse_kill_config *c)
{
    return pyse__add_time(pyse__add_time(m->graceful_start, c->graceful_timeout), 1);
}

static int heartbeat_applies(const struct pyse_monitor *m)
{
    return m->watch_heartbeat && !is_set(m->immediate_start);
}

static int graceful_timeout_applies(const struct pyse_monitor *m, const struct pyse_kill_config *c)
{
    return is_set(m->graceful_start) && c->graceful_timeout >= 0 && !is_set(m->immediate_start);
}

int pyse_monitor_tick(struct pyse_monitor *m, const struct pyse_kill_config *c,
                      int64_t now, int *promoted)
{
    int64_t interval, increment, step;
    int signo;

    *promoted = PYSE_PROMOTED_NONE;
    if (m->gone)
        return 0;

    if (heartbeat_applies(m) && now >= heartbeat_deadline(m, c))
        *promoted = PYSE_PROMOTED_HEARTBEAT;
    else if (graceful_timeout_applies(m, c) && now >= graceful_deadline(m, c))
        *promoted = PYSE_PROMOTED_GRACEFUL;
    if (*promoted != PYSE_PROMOTED_NONE) {
        m->kill_count = 0;
        m->immediate_start = now;
        m->next_kill = now;
    }

    if (!is_set(m->next_kill) || m->next_kill > now)
        return 0;

    if (is_set(m->immediate_start)) {
        interval = c->immediate_interval;
        increment = c->immediate_increment;
        /* immediate_start <= now - immediate_timeout */
        if (c->immediate_timeout >= 0 &&
            now >= pyse__add_time(m->immediate_start, c->immediate_timeout))
            signo = SIGKILL;
        else
            signo = c->immediate_signal;
    } else {
        interval = c->graceful_interval;
        increment = c->graceful_increment;
        signo = c->graceful_signal;
    }
    /* interval + increment * kill_count, saturating: a huge configuration
     * means "never again", not a wrapped-around time in the past. */
    if (increment > 0 && m->kill_count > 0 && increment > (INT64_MAX - interval) / m->kill_count)
        step = INT64_MAX;
    else
        step = interval + increment * m->kill_count;
    m->next_kill = pyse__add_time(now, step);
    m->kill_count++;
    return signo;
}

int64_t pyse_monitor_deadline(const struct pyse_monitor *m,
                              const struct pyse_kill_config *c)
{
    int64_t deadline = PYSE_NO_TIME, t;

    if (m->gone)
        return PYSE_NO_TIME;
    if (is_set(m->next_kill))
        deadline = m->next_kill;
    if (heartbeat_applies(m)) {
        t = heartbeat_deadline(m, c);
        if (!is_set(deadline) || t < deadline)
            deadline = t;
    }
    if (graceful_timeout_applies(m, c)) {
        t = graceful_deadline(m, c);
        if (!is_set(deadline) || t < deadline)
            deadline = t;
    }
    return deadline;
}
