/* A fast load generator for echo servers, so that a Python server, not the
 * load generator, is what a benchmark measures.
 *
 *   loadgen HOST PORT CONNECTIONS SIZE SECONDS [--idle N] [--wait] [--stall S] [--connect-timeout S]
 *
 * Opens CONNECTIONS to HOST:PORT (loopback only: 127.x.x.x), keeps one
 * SIZE-byte message in flight on each for SECONDS, and checks every reply
 * byte for byte (each message carries its connection and sequence number).
 *
 *   --idle N      first open N more connections that never send anything, and
 *                 hold them open while the busy ones run; any of them that the
 *                 server closes, resets or sends to is counted (idle_closed)
 *   --wait        once every connection is open, print "opened" and wait for a
 *                 line on stdin before the load starts (the caller measures the
 *                 server while it holds them all idle); after the result line,
 *                 wait for another before closing them (the caller reads the
 *                 server's CPU time before it starts tearing connections down)
 *   --stall S     give up S seconds after the end if replies are still missing
 *                 (default 10)
 *   --connect-timeout S   give up opening connections after S seconds (default 30)
 *
 * Prints one line of key=value pairs:
 *   requests=N wrong=N errors=N seconds=S p50_us=N p99_us=N answered=N opened=N
 *   idle_opened=N idle_closed=N cpu_s=S failure=WORD
 * (answered: busy connections that got a reply during the load; cpu_s: this
 * program's own CPU time while loading; failure: none, or why it stopped early).
 * Same protocol and checks as lessons/kit/loadgen.py, in C and epoll (Linux).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd, busy, connecting, done;
    int writing;                         /* watched for EPOLLOUT: a message only partly sent */
    uint32_t number; uint64_t seq; size_t sent, got; double started; char *msg, *buf;
} conn_t;

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static int cmp(const void *a, const void *b) { double x = *(double *)a, y = *(double *)b; return (x > y) - (x < y); }

static double cpu_seconds(void) {
    struct rusage ru; getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void next_message(conn_t *c, size_t size) {
    uint32_t n = htonl(c->number);
    uint32_t hi = htonl((uint32_t)(c->seq >> 32)), lo = htonl((uint32_t)c->seq);
    memcpy(c->msg, &n, 4); memcpy(c->msg + 4, &hi, 4); memcpy(c->msg + 8, &lo, 4);
    for (size_t i = 12; i < size; i++) c->msg[i] = (char)((i - 12) & 0xff);
    c->sent = c->got = 0;
    c->started = now();
}

static void watch(int ep, conn_t *c, int op, unsigned events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(ep, op, c->fd, &ev);
}

/* Send what the socket takes now (all of a small message); watch for writable
 * only while part of it is left. -1 if the connection failed. */
static int send_some(int ep, conn_t *c, size_t size) {
    ssize_t s = send(c->fd, c->msg + c->sent, size - c->sent, MSG_NOSIGNAL);
    if (s < 0 && errno != EAGAIN && errno != EINTR) return -1;
    if (s > 0) c->sent += (size_t)s;
    int writing = c->sent < size;
    if (writing != c->writing) watch(ep, c, EPOLL_CTL_MOD, writing ? EPOLLIN | EPOLLOUT : EPOLLIN);
    c->writing = writing;
    return 0;
}

/* Done with a connection: stop watching it, but keep it open until the end, so that the server's
 * work of closing it (for a thread per client, ending a thread) falls outside the measurement. */
static void retire(int ep, conn_t *c) { epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); c->done = 1; }

/* Open conns[from..to) without blocking, 256 at a time; 0, or -1 with *why set. */
static int open_all(int ep, conn_t *conns, int from, int to, struct sockaddr_in *addr, double deadline,
                    const char **why) {
    struct epoll_event events[256];
    for (int i = from; i < to;) {
        int batch = 0;
        for (; i < to && batch < 256; i++, batch++) {
            conn_t *c = &conns[i];
            c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (c->fd < 0) { *why = errno == EMFILE || errno == ENFILE ? "out_of_descriptors" : "socket"; return -1; }
            int one = 1; setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (connect(c->fd, (struct sockaddr *)addr, sizeof *addr) < 0 && errno != EINPROGRESS) {
                *why = errno == ECONNREFUSED ? "connect:ECONNREFUSED" : "connect"; return -1;
            }
            c->connecting = 1;
            watch(ep, c, EPOLL_CTL_ADD, EPOLLOUT);
        }
        while (batch > 0) {
            int wait_ms = (int)((deadline - now()) * 1000);
            if (wait_ms <= 0) { *why = "timed_out_connecting"; return -1; }
            int k = epoll_wait(ep, events, 256, wait_ms < 500 ? wait_ms : 500);
            for (int e = 0; e < k; e++) {
                conn_t *c = events[e].data.ptr;
                int err = 0; socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) { *why = err == ECONNREFUSED ? "connect:ECONNREFUSED" : "connect"; return -1; }
                c->connecting = 0; batch--;
                watch(ep, c, EPOLL_CTL_MOD, 0);   /* quiet until the load starts */
            }
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s HOST PORT CONNECTIONS SIZE SECONDS [--idle N] [--wait] [--stall S] "
                        "[--connect-timeout S]\n", argv[0]);
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1 || (ntohl(addr.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "loadgen: only loopback (127.x.x.x) addresses\n"); return 2;
    }
    int n = atoi(argv[3]), idle = 0, wait_for_go = 0;
    size_t size = (size_t)atol(argv[4]);
    double seconds = atof(argv[5]), stall = 10, connect_timeout = 30;
    for (int i = 6; i < argc; i++) {
        if (!strcmp(argv[i], "--idle") && i + 1 < argc) idle = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--wait")) wait_for_go = 1;
        else if (!strcmp(argv[i], "--stall") && i + 1 < argc) stall = atof(argv[++i]);
        else if (!strcmp(argv[i], "--connect-timeout") && i + 1 < argc) connect_timeout = atof(argv[++i]);
        else { fprintf(stderr, "loadgen: unknown option %s\n", argv[i]); return 2; }
    }
    /* (x == x) is false for NaN; the bounds keep every size and count finite and sane. */
    if (n < 1 || n > 1000000 || idle < 0 || idle > 1000000 || size < 12 || size > (1 << 24)
        || !(seconds > 0 && seconds <= 3600) || !(stall > 0 && stall <= 3600)
        || !(connect_timeout > 0 && connect_timeout <= 3600)) {
        fprintf(stderr, "loadgen: bad arguments\n"); return 2;
    }
    signal(SIGPIPE, SIG_IGN);   /* a send to a reset server returns EPIPE: counted as an error */
    int total = idle + n;       /* idle connections first (0..idle-1), then the busy ones */
    conn_t *conns = calloc((size_t)total, sizeof *conns);
    size_t cap = 1 << 22, count = 0; double *lat = malloc(cap * sizeof *lat);
    if (!conns || !lat) { fprintf(stderr, "loadgen: out of memory\n"); return 1; }
    for (int i = 0; i < total; i++) {
        conns[i].fd = -1; conns[i].busy = i >= idle; conns[i].number = (uint32_t)(i - idle);
        if (conns[i].busy && (!(conns[i].msg = malloc(size)) || !(conns[i].buf = malloc(size)))) {
            fprintf(stderr, "loadgen: out of memory\n"); return 1;
        }
    }
    int ep = epoll_create1(0);
    long requests = 0, wrong = 0, errors = 0, answered = 0, opened = 0, idle_opened = 0, idle_closed = 0;
    const char *failure = "none";
    double start = now(), elapsed = 0, cpu_at_start = cpu_seconds();
    if (open_all(ep, conns, 0, total, &addr, now() + connect_timeout, &failure) < 0) goto report;
    idle_opened = idle; opened = n;
    if (wait_for_go) {
        printf("opened\n"); fflush(stdout);
        char line[16];
        if (!fgets(line, sizeof line, stdin)) { failure = "not_started"; goto report; }
    }
    /* Idle connections: any event (data, EOF, reset) means the server did not leave them be. */
    for (int i = 0; i < idle; i++) watch(ep, &conns[i], EPOLL_CTL_MOD, EPOLLIN | EPOLLRDHUP);
    start = now(); cpu_at_start = cpu_seconds();
    double stop_at = start + seconds;
    int active = n;
    for (int i = idle; i < total; i++) {
        watch(ep, &conns[i], EPOLL_CTL_MOD, EPOLLIN);
        next_message(&conns[i], size);
        if (send_some(ep, &conns[i], size) < 0) { errors++; active--; retire(ep, &conns[i]); }
    }
    struct epoll_event events[256];
    while (active > 0) {
        if (now() > stop_at + stall) { failure = "server_stopped_answering"; break; }
        int k = epoll_wait(ep, events, 256, 500);
        for (int e = 0; e < k; e++) {
            conn_t *c = events[e].data.ptr;
            if (c->done) continue;
            if (!c->busy) { idle_closed++; retire(ep, c); continue; }
            if (events[e].events & EPOLLOUT && c->sent < size && send_some(ep, c, size) < 0) {
                errors++; active--; retire(ep, c); continue;
            }
            if (!(events[e].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
            ssize_t r = recv(c->fd, c->buf + c->got, size - c->got, 0);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                errors++; active--; retire(ep, c); continue;   /* closed or reset mid-exchange */
            }
            c->got += (size_t)r;
            if (c->got < size) continue;
            double t = now();
            if (memcmp(c->buf, c->msg, size) != 0) wrong++;
            if (c->seq == 0 && t < stop_at) answered++;   /* answered in time: during the load */
            requests++;
            if (count < cap) lat[count++] = t - c->started;
            else lat[(size_t)requests % cap] = t - c->started;
            c->seq++;
            if (t >= stop_at) { active--; retire(ep, c); continue; }
            next_message(c, size);
            if (send_some(ep, c, size) < 0) { errors++; active--; retire(ep, c); }
        }
    }
    elapsed = now() - start;
    for (int i = 0; i < idle; i++) {   /* a last look at the idle ones: EOF, reset or data means disturbed */
        char byte;
        if (conns[i].done) continue;
        ssize_t r = recv(conns[i].fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
        if (r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) idle_closed++;
    }
report:;
    qsort(lat, count, sizeof *lat, cmp);
    double p50 = count ? lat[count / 2] : 0, p99 = count ? lat[(size_t)(count * 0.99)] : 0;
    double cpu = cpu_seconds() - cpu_at_start;
    printf("requests=%ld wrong=%ld errors=%ld seconds=%.3f p50_us=%.0f p99_us=%.0f answered=%ld opened=%ld "
           "idle_opened=%ld idle_closed=%ld cpu_s=%.3f failure=%s\n", requests, wrong, errors, elapsed,
           p50 * 1e6, p99 * 1e6, answered, opened, idle_opened, idle_closed, cpu, failure);
    fflush(stdout);
    if (wait_for_go) {
        char line[16];
        if (!fgets(line, sizeof line, stdin)) { /* the caller is gone: close anyway */ }
    }
    for (int i = 0; i < total; i++) if (conns[i].fd >= 0) close(conns[i].fd);
    return 0;
}
