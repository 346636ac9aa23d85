/* clock.c -- CLOCK_MONOTONIC in int64 nanoseconds, and deadline arithmetic.
 *
 * Integers, not doubles: `start + timeout` is then exactly the first instant
 * at which `now - start >= timeout` holds, so a deadline computed from a
 * timeout neither fires a hair early (and does nothing) nor late.  An int64
 * of nanoseconds lasts 292 years of uptime. */
#include "internal.h"

int pyse_clock_now(int64_t *now)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
        return pyse__fail("clock_gettime(CLOCK_MONOTONIC)");
    *now = (int64_t)ts.tv_sec * PYSE_NS_PER_SEC + ts.tv_nsec;
    return 0;
}

int64_t pyse__add_time(int64_t now, int64_t delta)
{
    if (delta > 0 && now > INT64_MAX - delta)
        return INT64_MAX;
    return now + delta;
}

int pyse__poll_timeout_ms(int64_t deadline, int64_t now)
{
    int64_t ns, ms;

    if (deadline == PYSE_NO_TIME)
        return -1;
    ns = deadline - now;
    if (ns <= 0)
        return 0;
    ms = (ns + 999999) / 1000000; /* round up: never wake before the deadline */
    if (ms > 86400000)
        return 86400000;          /* a day: the caller just waits again */
    return (int)ms;
}
