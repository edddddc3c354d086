/*
 * ExaBGP's helper, compiled: the same pipe as bgpd/bridge.py, in C, so the process every node
 * keeps running beside ExaBGP weighs about 1 MB instead of the 10 MB of an interpreter.
 *
 * ExaBGP writes its events to this program's stdin and reads commands from its stdout; if nobody
 * reads what it writes, ExaBGP's whole reactor stalls, keepalives included (exabgp.md section
 * 1.1). So this program only shuttles bytes, both ways at once (a thread each: a direction that
 * blocks never stops the other), and always drains. Both ends split lines themselves (ExaBGP
 * keeps a partial line until its newline comes), so bytes go on as they arrive.
 *
 * It behaves as bridge.py does:
 *   - it connects to the agent's unix socket, trying again every 0.2 s for up to 60 s (the agent
 *     may be restarting; ExaBGP counts a helper that dies, and gives up after five), but exits
 *     quietly once its parent, ExaBGP, is gone: a bridge left behind would connect to the next
 *     agent and pass for its ExaBGP;
 *   - when the agent closes the socket it exits (status 0), and ExaBGP starts a fresh bridge;
 *   - when ExaBGP closes its stdin it exits (status 0).
 *
 * Built by `python -m percale.ipc.compiled` (scripts/dev.sh does it; it needs only a C compiler
 * and libc). tests/unit/test_bgp_bridge.py runs both bridges through the same checks.
 *
 *     percale-bgp-bridge /var/run/percale/bgp/exabgp.sock
 */

#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CONNECT_FOR_S 60
#define CONNECT_EVERY_NS 200000000L
#define CHUNK 65536

static int agent = -1;

/* Every byte of buf to fd, or -1: a full pipe or socket waits, an interrupted write resumes. */
static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Copies from one descriptor to the other until the first ends, then ends the whole program:
 * either end gone means this bridge has nothing left to do. */
static void pump(int from, int to)
{
    char buf[CHUNK];
    for (;;) {
        ssize_t n = read(from, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            _exit(n == 0 ? 0 : 1);
        if (write_all(to, buf, (size_t)n) < 0)
            _exit(1);
    }
}

static void *agent_to_exabgp(void *unused)
{
    (void)unused;
    pump(agent, STDOUT_FILENO);
    return NULL;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int connect_agent(const char *path)
{
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof address.sun_path) {
        fprintf(stderr, "percale-bgp-bridge: socket path longer than %zu bytes: %s\n",
                sizeof address.sun_path - 1, path);
        exit(2);
    }
    strcpy(address.sun_path, path);
    pid_t exabgp = getppid();
    double deadline = now() + CONNECT_FOR_S;
    for (;;) {
        if (getppid() != exabgp)
            _exit(0);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            perror("percale-bgp-bridge: socket");
            exit(1);
        }
        if (connect(fd, (struct sockaddr *)&address, sizeof address) == 0)
            return fd;
        int failure = errno;
        close(fd);
        if (now() > deadline) {
            fprintf(stderr, "percale-bgp-bridge: cannot connect to %s: %s\n", path,
                    strerror(failure));
            exit(1);
        }
        struct timespec pause = {0, CONNECT_EVERY_NS};
        nanosleep(&pause, NULL);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fputs("usage: percale-bgp-bridge SOCKET\n", stderr);
        return 2;
    }
    /* A write to a closed end fails with EPIPE, and the bridge exits as for an end of file. */
    signal(SIGPIPE, SIG_IGN);
    agent = connect_agent(argv[1]);
    pthread_t thread;
    if (pthread_create(&thread, NULL, agent_to_exabgp, NULL) != 0) {
        fputs("percale-bgp-bridge: cannot start a thread\n", stderr);
        return 1;
    }
    pump(STDIN_FILENO, agent);
    return 0;
}
