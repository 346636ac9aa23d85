/* The C floor: the least a server that keeps N workers alive can do.
 *
 *     floor WORKERS          (events go to the FIFO named by $BENCH_EVENTS)
 *
 * It forks WORKERS children and blocks in waitpid(); a child that dies is
 * forked again at once.  A child sets PR_SET_PDEATHSIG (so it dies with the
 * server), writes "ready <pid> <CLOCK_MONOTONIC>" and sleeps in pause().
 * No heartbeat, no logging, no configuration: every number a real server
 * measures against this is the price of what it does beyond.
 * TERM: TERM to every child, wait for them all, exit 0.  The bench compiles
 * this with gcc into a temporary directory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static pid_t *children;
static int worker_count;
static volatile sig_atomic_t stopping;

static void record(int fd, const char *kind)
{
    struct timespec ts;
    char line[80];
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int n = snprintf(line, sizeof line, "%s %d %ld.%06ld\n", kind, (int)getpid(),
                     (long)ts.tv_sec, ts.tv_nsec / 1000);
    if (write(fd, line, (size_t)n) != n)
        fprintf(stderr, "floor: write of a %s event: %s\n", kind, strerror(errno));
}

/* TERM is blocked while the children table changes (see spawn_worker), so
 * the handler always sees every child. */
static void stop_workers(int signo)
{
    (void)signo;
    stopping = 1;
    for (int i = 0; i < worker_count; i++)
        if (children[i] > 0)
            kill(children[i], SIGTERM);
}

static void run_worker(pid_t server, const char *events)
{
    sigset_t none;
    sigemptyset(&none);
    signal(SIGTERM, SIG_DFL);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
        fprintf(stderr, "floor worker: prctl(PR_SET_PDEATHSIG): %s\n", strerror(errno));
        _exit(1);
    }
    if (getppid() != server)   /* the server died before the prctl */
        _exit(1);
    int fd = open(events, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "floor worker: open(%s): %s\n", events, strerror(errno));
        _exit(1);
    }
    record(fd, "ready");
    for (;;)
        pause();
}

static void spawn_worker(int slot, int server_events, const char *events)
{
    sigset_t term, old;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigprocmask(SIG_BLOCK, &term, &old);
    record(server_events, "fork");
    pid_t pid = fork();
    if (pid == 0)
        run_worker(getppid(), events);
    if (pid < 0)
        fprintf(stderr, "floor: fork of worker %d: %s\n", slot, strerror(errno));
    children[slot] = pid;
    sigprocmask(SIG_SETMASK, &old, NULL);
}

int main(int argc, char **argv)
{
    const char *events = getenv("BENCH_EVENTS");
    if (argc != 2 || (worker_count = atoi(argv[1])) < 1 || !events) {
        fprintf(stderr, "usage: BENCH_EVENTS=FIFO floor WORKERS\n");
        return 2;
    }
    int server_events = open(events, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (server_events < 0) {
        fprintf(stderr, "floor: open(%s): %s\n", events, strerror(errno));
        return 1;
    }
    children = calloc((size_t)worker_count, sizeof *children);
    struct sigaction on_term = {.sa_handler = stop_workers};
    sigemptyset(&on_term.sa_mask);
    sigaction(SIGTERM, &on_term, NULL);
    for (int slot = 0; slot < worker_count; slot++)
        spawn_worker(slot, server_events, events);
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ECHILD)
                return 0;   /* stopping, and every child is gone */
            fprintf(stderr, "floor: waitpid: %s\n", strerror(errno));
            return 1;
        }
        for (int slot = 0; slot < worker_count; slot++) {
            if (children[slot] != pid)
                continue;
            children[slot] = 0;
            if (!stopping)
                spawn_worker(slot, server_events, events);
        }
    }
}
