/* monitor.c -- the kill escalation of one monitored child, as a pure
 * function of its state, its timing configuration and `now`.
 *
 * This is ServerEngine's ProcessManager::Monitor#tick (SPEC section 5).  It
 * decides and never acts: the loop sends the signal it returns, so tests can
 * drive it with a fake clock.  The comparisons are written exactly as SPEC
 * states them, so that a model written from SPEC in Python (IEEE doubles too)
 * agrees bit for bit. */
#include "internal.h"

static int is_set(double t) { return t != PYSE_UNSET; }

void pyse_monitor_init(struct pyse_monitor *m, double now, int watch_heartbeat)
{
    m->last_heartbeat = now;
    m->next_kill = PYSE_UNSET;
    m->graceful_start = PYSE_UNSET;
    m->immediate_start = PYSE_UNSET;
    m->kill_count = 0;
    m->watch_heartbeat = watch_heartbeat;
    m->gone = 0;
}

void pyse_monitor_graceful_stop(struct pyse_monitor *m, double now)
{
    if (!is_set(m->next_kill))
        m->next_kill = now;
    if (!is_set(m->graceful_start))
        m->graceful_start = now;
}

void pyse_monitor_immediate_stop(struct pyse_monitor *m, double now)
{
    /* An immediate stop during a graceful one keeps the pending step's time:
     * ServerEngine's `next_kill ||= now`.  The first QUIT goes out when the
     * next TERM would have. */
    if (!is_set(m->next_kill))
        m->next_kill = now;
    if (!is_set(m->immediate_start))
        m->immediate_start = now;
}

void pyse_monitor_heartbeat(struct pyse_monitor *m, double now)
{
    m->last_heartbeat = now;
}

static int heartbeat_timed_out(const struct pyse_monitor *m,
                               const struct pyse_kill_config *c, double now)
{
    return m->watch_heartbeat && now - m->last_heartbeat >= c->heartbeat_timeout;
}

static int graceful_timed_out(const struct pyse_monitor *m,
                              const struct pyse_kill_config *c, double now)
{
    return is_set(m->graceful_start) && c->graceful_timeout >= 0 &&
           m->graceful_start < now - c->graceful_timeout;
}

int pyse_monitor_tick(struct pyse_monitor *m, const struct pyse_kill_config *c,
                      double now, int *promoted)
{
    double interval, increment;
    int signo;

    *promoted = PYSE_PROMOTED_NONE;
    if (m->gone)
        return 0;

    if (!is_set(m->immediate_start)) {
        if (heartbeat_timed_out(m, c, now))
            *promoted = PYSE_PROMOTED_HEARTBEAT;
        else if (graceful_timed_out(m, c, now))
            *promoted = PYSE_PROMOTED_GRACEFUL;
        if (*promoted != PYSE_PROMOTED_NONE) {
            m->kill_count = 0;
            m->immediate_start = now;
            m->next_kill = now;
        }
    }

    if (!is_set(m->next_kill) || m->next_kill > now)
        return 0;

    if (is_set(m->immediate_start)) {
        interval = c->immediate_interval;
        increment = c->immediate_increment;
        if (c->immediate_timeout >= 0 && m->immediate_start <= now - c->immediate_timeout)
            signo = SIGKILL;
        else
            signo = c->immediate_signal;
    } else {
        interval = c->graceful_interval;
        increment = c->graceful_increment;
        signo = c->graceful_signal;
    }
    m->next_kill = now + interval + increment * m->kill_count;
    m->kill_count++;
    return signo;
}

/* The earliest double t for which timed_out(m, c, t) holds, starting from
 * the estimate start + timeout.  The estimate can miss by an ulp or two
 * either way (4.0 + 0.1 = 4.1, but 4.1 - 4.0 < 0.1), and a deadline must be
 * exact: too early and the tick at it does nothing, too late and it fires
 * late.  timed_out is monotonic in t (rounded subtraction is), so stepping
 * one double at a time finds it; the step cap only guards against a
 * pathological config (the loop then retries 1 ms later). */
static double earliest_time(const struct pyse_monitor *m, const struct pyse_kill_config *c,
                            double estimate,
                            int (*timed_out)(const struct pyse_monitor *,
                                             const struct pyse_kill_config *, double))
{
    double t = estimate;
    int steps;

    for (steps = 0; steps < 64 && !timed_out(m, c, t); steps++)
        t = nextafter(t, INFINITY);
    for (steps = 0; steps < 64 && timed_out(m, c, nextafter(t, -INFINITY)); steps++)
        t = nextafter(t, -INFINITY);
    return t;
}

double pyse_monitor_deadline(const struct pyse_monitor *m,
                             const struct pyse_kill_config *c)
{
    double deadline = PYSE_UNSET;

    if (m->gone)
        return PYSE_UNSET;
    if (is_set(m->next_kill))
        deadline = m->next_kill;
    if (!is_set(m->immediate_start)) {
        double t;
        if (m->watch_heartbeat) {
            t = earliest_time(m, c, m->last_heartbeat + c->heartbeat_timeout,
                              heartbeat_timed_out);
            if (!is_set(deadline) || t < deadline)
                deadline = t;
        }
        if (is_set(m->graceful_start) && c->graceful_timeout >= 0) {
            t = earliest_time(m, c, m->graceful_start + c->graceful_timeout,
                              graceful_timed_out);
            if (!is_set(deadline) || t < deadline)
                deadline = t;
        }
    }
    return deadline;
}
