/*
 * Control and telemetry: one Unix socket per process, served by a background
 * thread, speaking a line protocol:
 *
 *   PING                      -> OK
 *   SET rate <r>              -> OK            (0.1 <= r <= 1)
 *   SET blocks_per_window <n> -> OK            (n >= 1)
 *   SET graph_tokens <n>      -> OK            (n >= 0; 0 = one window, B_W)
 *   GET rate                  -> {"rate":0.5}
 *   GET stats                 -> one JSON object on one line
 *   anything else             -> ERR <reason>
 *
 * The same thread keeps the GPU utilisation estimate (see util_tick).
 *
 * The socket's directory must be this user's alone (socket_dir_ok): a missing
 * one is created 0700, an existing one must be a directory owned by this
 * process's effective uid and writable by nobody else. Otherwise the control
 * socket is not opened (a line on stderr says why) and the process runs on at
 * its start-up rate.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "cuda_tb.h"

#define TB_MAX_CLIENTS 32
#define TB_LINE_MAX 256
#define TB_CLIENT_IDLE_NS (10ULL * 1000000000ULL)

struct client {
    int fd;
    size_t len;
    uint64_t last_ns;
    char buf[TB_LINE_MAX];
};

static char g_template[256];   /* CUDA_TB_SOCKET, may hold %p */
static char g_path[256];       /* the bound path, "" while none */
static pid_t g_owner_pid;      /* process that bound g_path */
static _Atomic int g_bound;    /* g_path and g_owner_pid are published */
static int g_listen_fd = -1;
static struct client g_clients[TB_MAX_CLIENTS];
static pthread_mutex_t g_ctl_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int g_ctl_started;

/* Utilisation model state; only the control thread touches it. */
static struct {
    uint64_t last_ns;
    uint64_t seen_blocks;
    double backlog_blocks;
    double active_ns;
} g_util;

void tb_control_init(void)
{
    const char *t = getenv("CUDA_TB_SOCKET");
    g_template[0] = '\0';
    for (int i = 0; i < TB_MAX_CLIENTS; i++)
        g_clients[i].fd = -1;
    if (!t || !*t)
        return;
    if (strlen(t) >= sizeof g_template) {
        tb_log(1, "CUDA_TB_SOCKET is too long; control socket disabled");
        return;
    }
    snprintf(g_template, sizeof g_template, "%s", t);
}

/* "%p" -> pid, "%%" -> "%"; anything else is copied as is. */
static int format_path(char *out, size_t cap)
{
    char pid[24];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    size_t o = 0;
    for (const char *p = g_template; *p; p++) {
        const char *piece = NULL;
        char one[2] = {*p, '\0'};
        if (p[0] == '%' && p[1] == 'p') {
            piece = pid;
            p++;
        } else if (p[0] == '%' && p[1] == '%') {
            piece = "%";
            p++;
        } else {
            piece = one;
        }
        size_t n = strlen(piece);
        if (o + n >= cap)
            return 0;
        memcpy(out + o, piece, n);
        o += n;
    }
    out[o] = '\0';
    return 1;
}

/* A socket file left by a dead process refuses connections; a live one
 * accepts them and must not be stolen. */
static int is_stale(const struct sockaddr_un *addr)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    int r = connect(fd, (const struct sockaddr *)addr, sizeof *addr);
    int err = errno;
    close(fd);
    return r != 0 && err == ECONNREFUSED;
}

/* Whoever can write to the socket's directory can replace the socket, or bind
 * its name first, and so take the control channel (set the rate, feed fake
 * stats). Returns 1 if the directory of `path` is safe, creating it (0700) if
 * it is missing; logs why not and returns 0 otherwise. */
static int socket_dir_ok(const char *path)
{
    char dir[sizeof g_path];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    uid_t me = geteuid();
    struct stat st;
    if (lstat(dir, &st) != 0) {
        if (errno != ENOENT) {
            tb_log(1, "control socket disabled: cannot check %s: %s", dir, strerror(errno));
            return 0;
        }
        if (mkdir(dir, S_IRWXU) == 0) {
            if (chmod(dir, S_IRWXU) != 0)  /* the umask may have narrowed it further */
                tb_log(3, "chmod(%s): %s", dir, strerror(errno));
        } else if (errno != EEXIST) {  /* EEXIST: another process made it meanwhile */
            tb_log(1, "control socket disabled: cannot create %s: %s", dir, strerror(errno));
            return 0;
        }
        if (lstat(dir, &st) != 0) {
            tb_log(1, "control socket disabled: cannot check %s: %s", dir, strerror(errno));
            return 0;
        }
    }
    if (S_ISLNK(st.st_mode)) {
        /* A link is followed only if it is ours (someone else's could be re-pointed). */
        if (st.st_uid != me || stat(dir, &st) != 0) {
            tb_log(1, "control socket disabled: %s is a symbolic link not owned by uid %u "
                   "or pointing nowhere", dir, (unsigned)me);
            return 0;
        }
    }
    if (!S_ISDIR(st.st_mode)) {
        tb_log(1, "control socket disabled: %s is not a directory", dir);
        return 0;
    }
    if (st.st_uid != me) {
        tb_log(1, "control socket disabled: %s is owned by uid %u, not by this process's "
               "uid %u; use a directory of this user's own (e.g. a new one, which the shim "
               "creates with mode 0700)", dir, (unsigned)st.st_uid, (unsigned)me);
        return 0;
    }
    if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        tb_log(1, "control socket disabled: %s is writable by group or others (mode %03o); "
               "chmod go-w it or use a directory of this user's own", dir,
               (unsigned)(st.st_mode & 0777));
        return 0;
    }
    return 1;
}

static int make_listener(const char *path)
{
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path) {
        tb_log(1, "control socket path too long (%zu >= %zu): %s", strlen(path),
               sizeof addr.sun_path, path);
        return -1;
    }
    memcpy(addr.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        tb_log(1, "socket(): %s", strerror(errno));
        return -1;
    }
    /* Linux creates the socket file with the socket inode's mode (minus the
     * umask), so setting it first leaves no window with wider permissions;
     * chmod after bind covers systems where fchmod on a socket is ignored. */
    if (fchmod(fd, S_IRUSR | S_IWUSR) != 0)
        tb_log(3, "fchmod(socket): %s", strerror(errno));
    int r = bind(fd, (struct sockaddr *)&addr, sizeof addr);
    if (r != 0 && errno == EADDRINUSE && is_stale(&addr)) {
        unlink(path);
        r = bind(fd, (struct sockaddr *)&addr, sizeof addr);
    }
    if (r != 0) {
        tb_log(1, "cannot bind control socket %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (chmod(path, S_IRUSR | S_IWUSR) != 0 || listen(fd, 16) != 0) {
        tb_log(1, "cannot set up control socket %s: %s", path, strerror(errno));
        close(fd);
        unlink(path);
        return -1;
    }
    return fd;
}

/* ---- utilisation estimate ---------------------------------------------------- */

/* The device is modelled as a queue that drains B_W blocks per window: blocks
 * enter it when launched (after throttling) and the time it spends non-empty
 * is "active". With B_W calibrated to the device this is the fraction of time
 * the launched work keeps the GPU busy; it is an estimate from launch
 * accounting, not a hardware counter. */
static void util_tick(uint64_t now)
{
    uint64_t blocks = atomic_load_explicit(&g_tb.blocks, memory_order_relaxed);
    uint64_t bw = atomic_load_explicit(&g_tb.blocks_per_window, memory_order_relaxed);
    if (now <= g_util.last_ns)
        return;
    double dt = (double)(now - g_util.last_ns);
    double arrivals = (double)(blocks - g_util.seen_blocks);
    g_util.last_ns = now;
    g_util.seen_blocks = blocks;
    if (bw == 0)
        return;
    g_util.backlog_blocks += arrivals;
    double capacity = (double)bw * dt / (double)TB_WINDOW_NS;
    double drained = g_util.backlog_blocks < capacity ? g_util.backlog_blocks : capacity;
    g_util.active_ns += drained / (double)bw * (double)TB_WINDOW_NS;
    g_util.backlog_blocks -= drained;
}

/* ---- protocol ----------------------------------------------------------------- */

static const char *calibration_name(int c)
{
    switch (c) {
    case TB_CAL_ENV:
        return "env";
    case TB_CAL_DEVICE:
        return "device";
    case TB_CAL_FALLBACK:
        return "fallback";
    case TB_CAL_SOCKET:
        return "socket";
    default:
        return "pending";
    }
}

static const char *mode_name(int m)
{
    return m == TB_MODE_FAST ? "fast" : m == TB_MODE_THROTTLE ? "throttle" : "uninit";
}

/* JSON string (with quotes) or null. */
static void json_str(char *out, size_t cap, const char *s)
{
    if (!s || !*s) {
        snprintf(out, cap, "null");
        return;
    }
    size_t o = 0;
    if (cap < 3)
        return;
    out[o++] = '"';
    for (; *s && o + 8 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = '"';
    out[o] = '\0';
}

static int format_stats(char *out, size_t cap)
{
    uint64_t now = tb_now_ns();
    util_tick(now);
    uint64_t uptime = now - g_tb.start_ns;
    uint64_t active = (uint64_t)g_util.active_ns;
    if (active > uptime)
        active = uptime;
    char real[600], sock[300];
    json_str(real, sizeof real, g_tb.real_missing ? NULL : g_tb.real_path);
    json_str(sock, sizeof sock, g_path);
    return snprintf(
        out, cap,
        "{\"pid\":%d,\"mode\":\"%s\",\"rate\":%.6g,\"window_ns\":%llu,"
        "\"blocks_per_window\":%llu,\"calibration\":\"%s\",\"tokens\":%.1f,"
        "\"graph_tokens\":%llu,\"launches\":%llu,\"blocks\":%llu,"
        "\"throttled_launches\":%llu,\"wait_ns\":%llu,\"graph_launches\":%llu,"
        "\"graph_unknown_launches\":%llu,\"captured_launches\":%llu,"
        "\"unwrapped_lookups\":%llu,\"uptime_ns\":%llu,\"gpu_active_ns\":%llu,"
        "\"gpu_idle_ns\":%llu,\"gpu_backlog_blocks\":%.0f,\"utilization\":%.4f,"
        "\"real_libcuda\":%s,\"socket\":%s}\n",
        (int)getpid(), mode_name(atomic_load(&g_tb.mode)), tb_rate(),
        (unsigned long long)TB_WINDOW_NS, (unsigned long long)atomic_load(&g_tb.blocks_per_window),
        calibration_name(atomic_load(&g_tb.calibration)), tb_bucket_tokens_now(),
        (unsigned long long)atomic_load(&g_tb.graph_tokens),
        (unsigned long long)atomic_load(&g_tb.launches),
        (unsigned long long)atomic_load(&g_tb.blocks),
        (unsigned long long)atomic_load(&g_tb.throttled_launches),
        (unsigned long long)atomic_load(&g_tb.wait_ns),
        (unsigned long long)atomic_load(&g_tb.graph_launches),
        (unsigned long long)atomic_load(&g_tb.graph_unknown_launches),
        (unsigned long long)atomic_load(&g_tb.captured_launches),
        (unsigned long long)atomic_load(&g_tb.unwrapped_lookups), (unsigned long long)uptime,
        (unsigned long long)active, (unsigned long long)(uptime - active), g_util.backlog_blocks,
        uptime ? (double)active / (double)uptime : 0.0, real, sock);
}

static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    if (!s || !*s || *s == '-' || *s == '+')
        return 0;
    char *end = NULL;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || *end != '\0' || x < min || x > max)
        return 0;
    *out = x;
    return 1;
}

/* Executes one command line (no newline) and writes the reply, with its
 * newline, into out. */
static void handle_line(char *line, char *out, size_t cap)
{
    char *save = NULL;
    char *verb = strtok_r(line, " \t\r", &save);
    char *key = verb ? strtok_r(NULL, " \t\r", &save) : NULL;
    char *val = key ? strtok_r(NULL, " \t\r", &save) : NULL;
    char *extra = val ? strtok_r(NULL, " \t\r", &save) : NULL;

    if (!verb) {
        snprintf(out, cap, "ERR empty command\n");
    } else if (strcasecmp(verb, "PING") == 0 && !key) {
        snprintf(out, cap, "OK\n");
    } else if (strcasecmp(verb, "GET") == 0 && key && !val) {
        if (strcasecmp(key, "stats") == 0) {
            if (format_stats(out, cap) >= (int)cap)
                snprintf(out, cap, "ERR stats do not fit the reply buffer\n");
        } else if (strcasecmp(key, "rate") == 0) {
            snprintf(out, cap, "{\"rate\":%.6g}\n", tb_rate());
        } else {
            snprintf(out, cap, "ERR unknown key for GET (stats, rate)\n");
        }
    } else if (strcasecmp(verb, "SET") == 0 && key && val && !extra) {
        if (strcasecmp(key, "rate") == 0) {
            char *end = NULL;
            double r = strtod(val, &end);
            if (end == val || *end != '\0' || !isfinite(r))
                snprintf(out, cap, "ERR rate is not a number\n");
            else if (r < TB_MIN_RATE || r > 1.0)
                snprintf(out, cap, "ERR rate must be in [0.1, 1]\n");
            else {
                tb_apply_rate(r);
                snprintf(out, cap, "OK\n");
            }
        } else if (strcasecmp(key, "blocks_per_window") == 0) {
            uint64_t n;
            if (!parse_u64(val, 1, 1000000000000ULL, &n)) {
                snprintf(out, cap, "ERR blocks_per_window must be an integer in [1, 1e12]\n");
            } else {
                atomic_store(&g_tb.blocks_per_window, n);
                atomic_store(&g_tb.calibration, TB_CAL_SOCKET);
                snprintf(out, cap, "OK\n");
            }
        } else if (strcasecmp(key, "graph_tokens") == 0) {
            uint64_t n;
            if (!parse_u64(val, 0, 1000000000000ULL, &n)) {
                snprintf(out, cap, "ERR graph_tokens must be an integer in [0, 1e12]\n");
            } else {
                atomic_store(&g_tb.graph_tokens, n);
                snprintf(out, cap, "OK\n");
            }
        } else {
            snprintf(out, cap, "ERR unknown key for SET (rate, blocks_per_window, graph_tokens)\n");
        }
    } else {
        snprintf(out, cap, "ERR unknown command (PING, GET stats|rate, SET rate|"
                           "blocks_per_window|graph_tokens <value>)\n");
    }
}

static void client_close(struct client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->len = 0;
}

static int client_send(struct client *c, const char *msg)
{
    size_t n = strlen(msg);
    /* MSG_NOSIGNAL: a client that went away must not SIGPIPE the host. */
    ssize_t w = send(c->fd, msg, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    return w == (ssize_t)n;
}

static void client_read(struct client *c, uint64_t now)
{
    char reply[2048];
    for (;;) {
        ssize_t r = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, MSG_DONTWAIT);
        if (r == 0) {
            client_close(c);
            return;
        }
        if (r < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                client_close(c);
            return;
        }
        c->last_ns = now;
        c->len += (size_t)r;
        char *nl;
        while (c->fd >= 0 && (nl = memchr(c->buf, '\n', c->len)) != NULL) {
            *nl = '\0';
            handle_line(c->buf, reply, sizeof reply);
            size_t used = (size_t)(nl - c->buf) + 1;
            memmove(c->buf, c->buf + used, c->len - used);
            c->len -= used;
            if (!client_send(c, reply))
                client_close(c);
        }
        if (c->fd >= 0 && c->len == sizeof c->buf) {
            client_send(c, "ERR line too long\n");
            client_close(c);
            return;
        }
    }
}

static struct client *free_slot(void)
{
    for (int i = 0; i < TB_MAX_CLIENTS; i++)
        if (g_clients[i].fd < 0)
            return &g_clients[i];
    return NULL;
}

/* Clients that hung up since the last poll still hold slots: reap them (and
 * serve whatever they sent) before turning a new connection away. */
static void reap_clients(uint64_t now)
{
    for (int i = 0; i < TB_MAX_CLIENTS; i++)
        if (g_clients[i].fd >= 0)
            client_read(&g_clients[i], now);
}

static void accept_clients(uint64_t now)
{
    for (;;) {
        int fd = accept4(g_listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        struct client *slot = free_slot();
        if (!slot) {
            reap_clients(now);
            slot = free_slot();
        }
        if (!slot) {
            const char *busy = "ERR too many clients\n";
            ssize_t w = send(fd, busy, strlen(busy), MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)w;
            close(fd);
            continue;
        }
        slot->fd = fd;
        slot->len = 0;
        slot->last_ns = now;
    }
}

static void *control_main(void *arg)
{
    (void)arg;
    /* strtod and printf must use '.' whatever locale the host application set. */
    locale_t c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    if (c_locale)
        uselocale(c_locale);

    char path[sizeof g_path];
    if (!format_path(path, sizeof path)) {
        tb_log(1, "control socket path too long; control socket disabled");
        return NULL;
    }
    if (!socket_dir_ok(path))
        return NULL;
    int fd = make_listener(path);
    if (fd < 0)
        return NULL;
    g_listen_fd = fd;
    g_owner_pid = getpid();
    memcpy(g_path, path, sizeof path);
    atomic_store_explicit(&g_bound, 1, memory_order_release);
    g_util.last_ns = g_tb.start_ns;
    g_util.seen_blocks = 0;
    g_util.backlog_blocks = 0;
    g_util.active_ns = 0;
    tb_log(2, "control socket %s", g_path);

    for (;;) {
        struct pollfd pfd[1 + TB_MAX_CLIENTS];
        struct client *who[1 + TB_MAX_CLIENTS];
        int n = 0;
        pfd[n].fd = g_listen_fd;
        pfd[n].events = POLLIN;
        who[n++] = NULL;
        for (int i = 0; i < TB_MAX_CLIENTS; i++) {
            if (g_clients[i].fd >= 0) {
                pfd[n].fd = g_clients[i].fd;
                pfd[n].events = POLLIN;
                who[n++] = &g_clients[i];
            }
        }
        /* Tick every window while work is queued, less often when idle. */
        int timeout_ms = g_util.backlog_blocks > 0 ? 10 : 50;
        int ready = poll(pfd, (nfds_t)n, timeout_ms);
        uint64_t now = tb_now_ns();
        util_tick(now);
        if (ready < 0 && errno != EINTR) {
            tb_log(1, "control poll(): %s", strerror(errno));
            return NULL;
        }
        for (int i = 1; ready > 0 && i < n; i++)
            if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
                client_read(who[i], now);
        if (ready > 0 && (pfd[0].revents & POLLIN))
            accept_clients(now);
        for (int i = 0; i < TB_MAX_CLIENTS; i++)
            if (g_clients[i].fd >= 0 && now - g_clients[i].last_ns > TB_CLIENT_IDLE_NS)
                client_close(&g_clients[i]);
    }
    return NULL;
}

void tb_control_maybe_start(void)
{
    if (TB_LIKELY(atomic_load_explicit(&g_ctl_started, memory_order_acquire)) || !g_template[0])
        return;
    pthread_mutex_lock(&g_ctl_mu);
    if (!atomic_load_explicit(&g_ctl_started, memory_order_relaxed)) {
        atomic_store_explicit(&g_ctl_started, 1, memory_order_release);
        /* The thread must never take the host's signals (Python's SIGINT
         * handling, for one, expects them on the main thread). */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        pthread_t tid;
        int err = pthread_create(&tid, &attr, control_main, NULL);
        pthread_attr_destroy(&attr);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (err != 0)
            tb_log(1, "cannot start the control thread: %s", strerror(err));
        else
            pthread_setname_np(tid, "cuda_tb");
    }
    pthread_mutex_unlock(&g_ctl_mu);
}

/* ---- fork and exit ---------------------------------------------------------- */

void tb_control_atfork_prepare(void)
{
    pthread_mutex_lock(&g_ctl_mu);
}

void tb_control_atfork_parent(void)
{
    pthread_mutex_unlock(&g_ctl_mu);
}

/* The child inherits the parent's descriptors but not its control thread:
 * close the copies (the parent keeps serving its socket) and start afresh. */
void tb_control_atfork_child(void)
{
    pthread_mutex_init(&g_ctl_mu, NULL);
    if (g_listen_fd >= 0)
        close(g_listen_fd);
    g_listen_fd = -1;
    for (int i = 0; i < TB_MAX_CLIENTS; i++) {
        if (g_clients[i].fd >= 0)
            close(g_clients[i].fd);
        g_clients[i].fd = -1;
        g_clients[i].len = 0;
    }
    atomic_store(&g_bound, 0);
    g_path[0] = '\0';
    atomic_store(&g_ctl_started, 0);
}

__attribute__((destructor)) static void tb_control_fini(void)
{
    /* Only the process that bound the socket removes it: a fork()ed child
     * exiting must not unlink its parent's socket. */
    if (atomic_load_explicit(&g_bound, memory_order_acquire) && g_owner_pid == getpid())
        unlink(g_path);
}
