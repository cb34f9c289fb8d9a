/* A fast load generator for echo servers, so that a Python server, not the
 * load generator, is what a benchmark measures.
 *
 *   loadgen HOST PORT CONNECTIONS SIZE SECONDS
 *
 * Opens CONNECTIONS to HOST:PORT (loopback only), keeps one SIZE-byte message
 * in flight on each for SECONDS, and checks every reply byte for byte (each
 * message carries its connection and sequence number). Prints one line:
 *   requests=N wrong=N errors=N seconds=S p50_us=N p99_us=N
 * Same protocol and checks as lessons/kit/loadgen.py, in C and epoll (Linux).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct { int fd; uint32_t number; uint64_t seq; size_t sent, got; double started; char *msg, *buf; } conn_t;

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static int cmp(const void *a, const void *b) { double x = *(double *)a, y = *(double *)b; return (x > y) - (x < y); }

static void next_message(conn_t *c, size_t size) {
    uint32_t n = htonl(c->number);
    uint32_t hi = htonl((uint32_t)(c->seq >> 32)), lo = htonl((uint32_t)c->seq);
    memcpy(c->msg, &n, 4); memcpy(c->msg + 4, &hi, 4); memcpy(c->msg + 8, &lo, 4);
    for (size_t i = 12; i < size; i++) c->msg[i] = (char)((i - 12) & 0xff);
    c->sent = c->got = 0;
    c->started = now();
}

int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: %s HOST PORT CONNECTIONS SIZE SECONDS\n", argv[0]); return 2; }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1 || (ntohl(addr.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "loadgen: only loopback (127.x.x.x) addresses\n"); return 2;
    }
    int n = atoi(argv[3]); size_t size = (size_t)atol(argv[4]); double seconds = atof(argv[5]);
    if (n < 1 || size < 12 || seconds <= 0) { fprintf(stderr, "loadgen: bad arguments\n"); return 2; }
    conn_t *conns = calloc(n, sizeof *conns);
    size_t cap = 1 << 22, count = 0; double *lat = malloc(cap * sizeof *lat);
    int ep = epoll_create1(0);
    long requests = 0, wrong = 0, errors = 0;
    for (int i = 0; i < n; i++) {
        conn_t *c = &conns[i];
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1; setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("loadgen: connect"); return 1; }
        c->number = (uint32_t)i; c->msg = malloc(size); c->buf = malloc(size);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    double start = now(), stop_at = start + seconds;
    int active = n;
    for (int i = 0; i < n; i++) {
        next_message(&conns[i], size);
        ssize_t s = send(conns[i].fd, conns[i].msg, size, 0);  /* small: fits at once */
        if (s != (ssize_t)size) { errors++; active--; close(conns[i].fd); conns[i].fd = -1; }
    }
    struct epoll_event events[256];
    while (active > 0) {
        if (now() > stop_at + 10) { fprintf(stderr, "loadgen: server stopped answering\n"); errors += active; break; }
        int k = epoll_wait(ep, events, 256, 500);
        for (int e = 0; e < k; e++) {
            conn_t *c = events[e].data.ptr;
            ssize_t r = recv(c->fd, c->buf + c->got, size - c->got, 0);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                errors++; active--; epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); c->fd = -1; continue;
            }
            c->got += (size_t)r;
            if (c->got < size) continue;
            double t = now();
            if (memcmp(c->buf, c->msg, size) != 0) wrong++;
            requests++;
            if (count < cap) lat[count++] = t - c->started;
            c->seq++;
            if (t >= stop_at) { active--; epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); c->fd = -1; continue; }
            next_message(c, size);
            if (send(c->fd, c->msg, size, 0) != (ssize_t)size) {
                errors++; active--; epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); c->fd = -1;
            }
        }
    }
    double elapsed = now() - start;
    qsort(lat, count, sizeof *lat, cmp);
    double p50 = count ? lat[count / 2] : 0, p99 = count ? lat[(size_t)(count * 0.99)] : 0;
    printf("requests=%ld wrong=%ld errors=%ld seconds=%.3f p50_us=%.0f p99_us=%.0f\n",
           requests, wrong, errors, elapsed, p50 * 1e6, p99 * 1e6);
    for (int i = 0; i < n; i++) if (conns[i].fd >= 0) close(conns[i].fd);
    return 0;
}
