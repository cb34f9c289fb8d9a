/* The yardstick: a plain C epoll echo server, to measure the Python servers against.
 *
 *   cc -O2 -o echo_c benchmarks/echo_c.c
 *   ./echo_c [--host 127.0.0.1] [--port 0]
 *
 * Prints "listening on HOST:PORT" as its first line (flushed), like every
 * server in the workbook, and exits 0 on SIGTERM or SIGINT. Linux only (epoll).
 *
 * Same echo contract as lesson 02: every byte comes back; when the client
 * shuts down its side (EOF), the server closes once everything is sent; a
 * reset ends only that connection. Backpressure: a client whose echo could
 * not all be sent is not read again until it is (so it holds at most one
 * read, 64 KiB, of server memory), and a client that never reads holds up
 * nobody. Level-triggered epoll, one recv() and one send() per message: the
 * same system calls a Python event loop makes, with no interpreter around them.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_SIZE 65536

typedef struct { int fd; char *pending; size_t off, len; } conn_t;   /* pending: echo not yet sent */

static volatile sig_atomic_t stopping = 0;
static void on_signal(int sig) { (void)sig; stopping = 1; }

static void drop(int ep, conn_t *c) {            /* done, or reset: forget the connection */
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pending);
    free(c);
}

static void want(int ep, conn_t *c, unsigned events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1"; int port = 9913;     /* loopback unless asked otherwise */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--host") && i + 1 < argc) host = argv[++i];
        else if (!strcmp(argv[i], "--port") && i + 1 < argc) {
            char *end; port = (int)strtol(argv[++i], &end, 10);
            if (*end || end == argv[i]) port = -1;
        }
        else if (!strcmp(argv[i], "--quiet")) continue;   /* accepted for symmetry: it never logs */
        else { fprintf(stderr, "usage: %s [--host HOST] [--port PORT]\n", argv[0]); return 2; }
    }
    if (port < 0 || port > 65535) { fprintf(stderr, "echo_c: port must be 0..65535\n"); return 2; }
    struct sockaddr_storage addr = {0}; socklen_t alen;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&addr; struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) { a4->sin_family = AF_INET; a4->sin_port = htons(port); alen = sizeof *a4; }
    else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) { a6->sin6_family = AF_INET6; a6->sin6_port = htons(port); alen = sizeof *a6; }
    else { fprintf(stderr, "echo_c: not an IP address: %s\n", host); return 2; }

    int one = 1, lfd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&addr, alen) < 0 || listen(lfd, SOMAXCONN) < 0) {
        fprintf(stderr, "echo_c: cannot listen on %s:%d: %s\n", host, port, strerror(errno)); return 1;
    }
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    printf(addr.ss_family == AF_INET6 ? "listening on [%s]:%d\n" : "listening on %s:%d\n", host,
           ntohs(addr.ss_family == AF_INET6 ? a6->sin6_port : a4->sin_port));
    fflush(stdout);

    /* No SA_RESTART: a signal interrupts epoll_wait, and the loop sees `stopping`. */
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL); sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);                   /* a send to a reset peer returns EPIPE instead */

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};   /* NULL marks the listener */
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    static char buf[READ_SIZE];
    struct epoll_event events[512];
    while (!stopping) {
        int n = epoll_wait(ep, events, 512, 500);   /* the timeout only bounds a missed signal */
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (c == NULL) {                        /* new clients: take all that are waiting */
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c); c->fd = fd;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;                           /* EAGAIN, or out of descriptors: try later */
            }
            if (c->pending) {                       /* writable again: send what is left */
                ssize_t s = send(c->fd, c->pending + c->off, c->len - c->off, MSG_NOSIGNAL);
                if (s < 0 && errno != EAGAIN && errno != EINTR) { drop(ep, c); continue; }
                if (s > 0) c->off += (size_t)s;
                if (c->off == c->len) { free(c->pending); c->pending = NULL; want(ep, c, EPOLLIN); }
                continue;
            }
            ssize_t r = recv(c->fd, buf, sizeof buf, 0);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r <= 0) { drop(ep, c); continue; }  /* EOF with nothing pending, or a reset: done */
            ssize_t s = send(c->fd, buf, (size_t)r, MSG_NOSIGNAL);
            if (s < 0 && errno != EAGAIN && errno != EINTR) { drop(ep, c); continue; }
            if (s < 0) s = 0;
            if (s < r) {                            /* the client is slow to read: keep the rest, */
                c->len = (size_t)(r - s); c->off = 0;   /* stop reading, wait until writable */
                c->pending = malloc(c->len); memcpy(c->pending, buf + s, c->len);
                want(ep, c, EPOLLOUT);
            }
        }
    }
    close(ep);   /* exit closes every client socket */
    close(lfd);
    return 0;
}
