/*
 * fsync_server: a tiny HTTP/1.1 server whose every request blocks on the disk, for off-CPU
 * profiling and for measuring a profiler's cost on a context-switch-heavy process.
 *
 * Listens on 127.0.0.1 only. Each request appends one log line to DIR/fsync_server.log and
 * fsyncs it before answering. Keep-alive by default (HTTP/1.1), pipelined requests are served
 * in order, "Connection: close" is honoured. Each of THREADS threads runs its own epoll loop
 * over the shared listening socket (EPOLLEXCLUSIVE wakes one thread per connection).
 *
 * usage: fsync_server [-p PORT] [-d DIR] [-t THREADS] [-s SECONDS]
 */
#include "common.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#define NOINL __attribute__((noinline, noclone))
#define MAX_CONNS 4096
#define BUF_SIZE 8192

static struct wl_counter counters[WL_MAX_THREADS];
static int nthreads = 1;
static double seconds = 0;
static int port = 8080;
static const char *dir = ".";
static int listen_fd = -1;
static int log_fd = -1;

static uint64_t wl_total_ops(void)
{
    return wl_sum_counters(counters, nthreads);
}

struct conn {
    int fd;
    size_t len;
    char buf[BUF_SIZE];
};

static const char RESPONSE_KEEP[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                    "Content-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n";
static const char RESPONSE_CLOSE[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                     "Content-Length: 3\r\nConnection: close\r\n\r\nok\n";
static const char RESPONSE_BAD[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                   "Connection: close\r\n\r\n";

NOINL void append_log(int idx, uint64_t seq, const char *req, size_t reqlen)
{
    char line[256];
    size_t first = 0;
    while (first < reqlen && first < 120 && req[first] != '\r' && req[first] != '\n')
        first++;
    int n = snprintf(line, sizeof line, "thread=%d seq=%llu %.*s\n", idx,
                     (unsigned long long)seq, (int)first, req);
    if (n > 0 && write(log_fd, line, (size_t)n) != n)
        wl_die("write log");
}

NOINL void sync_log(void)
{
    if (fsync(log_fd) < 0)
        wl_die("fsync");
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int header_says_close(const char *req, size_t len)
{
    static const char needle[] = "connection: close";
    size_t nl = sizeof needle - 1;
    for (size_t i = 0; i + nl <= len; i++)
        if (strncasecmp(req + i, needle, nl) == 0)
            return 1;
    return 0;
}

/* Serves every complete request in the buffer. Returns -1 when the connection must close. */
NOINL int handle_requests(int idx, struct conn *c)
{
    for (;;) {
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (!end)
            return c->len == BUF_SIZE ? -1 : 0; /* header larger than we accept */
        size_t reqlen = (size_t)(end - c->buf) + 4;
        if (strncmp(c->buf, "GET ", 4) != 0 && strncmp(c->buf, "HEAD ", 5) != 0) {
            send_all(c->fd, RESPONSE_BAD, sizeof RESPONSE_BAD - 1);
            return -1;
        }
        uint64_t seq = atomic_fetch_add_explicit(&counters[idx].ops, 1, memory_order_relaxed);
        append_log(idx, seq, c->buf, reqlen);
        sync_log();
        int close_after = header_says_close(c->buf, reqlen);
        const char *resp = close_after ? RESPONSE_CLOSE : RESPONSE_KEEP;
        size_t rlen = close_after ? sizeof RESPONSE_CLOSE - 1 : sizeof RESPONSE_KEEP - 1;
        if (send_all(c->fd, resp, rlen) < 0 || close_after)
            return -1;
        memmove(c->buf, c->buf + reqlen, c->len - reqlen);
        c->len -= reqlen;
    }
}

static void close_conn(int ep, struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

NOINL void *serve_loop(void *arg)
{
    int idx = (int)(intptr_t)arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        wl_die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, listen_fd, &ev) < 0)
        wl_die("epoll_ctl listen");
    struct epoll_event events[64];
    while (!wl_stopped()) {
        /* A timeout rather than an infinite wait: the stop signal lands on one thread only. */
        int n = epoll_wait(ep, events, 64, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0)
                        break;
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = calloc(1, sizeof *nc);
                    if (!nc) {
                        close(fd);
                        continue;
                    }
                    nc->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = nc};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) < 0) {
                        close(fd);
                        free(nc);
                    }
                }
                continue;
            }
            int closing = 0;
            for (;;) {
                ssize_t r = recv(c->fd, c->buf + c->len, BUF_SIZE - c->len, 0);
                if (r > 0) {
                    c->len += (size_t)r;
                    if (handle_requests(idx, c) < 0) {
                        closing = 1;
                        break;
                    }
                    continue;
                }
                if (r < 0 && errno == EINTR)
                    continue;
                if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                    break;
                closing = 1; /* EOF or error */
                break;
            }
            if (closing)
                close_conn(ep, c);
        }
    }
    close(ep);
    return NULL;
}

static void set_opt(char o, const char *v)
{
    switch (o) {
    case 'p': port = (int)wl_parse_long(v, 1, 65535, "port"); break;
    case 'd': dir = v; break;
    case 't': nthreads = (int)wl_parse_long(v, 1, WL_MAX_THREADS, "threads"); break;
    case 's': seconds = wl_parse_seconds(v); break;
    }
}

int main(int argc, char **argv)
{
    wl_getopt(argc, argv, "pdts",
              "[-p PORT (8080)] [-d LOG_DIR (.)] [-t THREADS (1)] [-s SECONDS (0 = until SIGINT)]",
              set_opt);
    char path[4096];
    snprintf(path, sizeof path, "%s/fsync_server.log", dir);
    log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0)
        wl_die(path);

    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd < 0)
        wl_die("socket");
    int one = 1;
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        wl_die("bind 127.0.0.1");
    if (listen(listen_fd, 1024) < 0)
        wl_die("listen");

    pthread_t tids[WL_MAX_THREADS];
    wl_start(seconds);
    for (int i = 1; i < nthreads; i++)
        if ((errno = pthread_create(&tids[i], NULL, serve_loop, (void *)(intptr_t)i)))
            wl_die("pthread_create");
    printf("pid=%d name=fsync_server listen=127.0.0.1:%d threads=%d log=%s\n", (int)getpid(),
           port, nthreads, path);
    serve_loop((void *)0);
    for (int i = 1; i < nthreads; i++)
        pthread_join(tids[i], NULL);
    wl_report("fsync_server");
    return 0;
}
