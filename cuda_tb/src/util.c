/*
 * Process-wide state, environment parsing, logging and fork handling.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cuda_tb.h"

struct tb_state g_tb;
int g_tb_log_level = 1;

uint64_t tb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

double tb_rate(void)
{
    uint64_t bits = atomic_load_explicit(&g_tb.rate_bits, memory_order_relaxed);
    double r;
    memcpy(&r, &bits, sizeof r);
    return r;
}

/* The caller has validated r. The mode is switched after the rate is stored so
 * that a launcher entering the throttled path always sees a rate < 1. */
void tb_set_rate(double r)
{
    uint64_t bits;
    memcpy(&bits, &r, sizeof bits);
    atomic_store_explicit(&g_tb.rate_bits, bits, memory_order_relaxed);
    int mode = atomic_load_explicit(&g_tb.mode, memory_order_acquire);
    if (mode == TB_MODE_UNINIT)
        return; /* the first launch picks the mode from the rate */
    atomic_store_explicit(&g_tb.mode, r >= 1.0 ? TB_MODE_FAST : TB_MODE_THROTTLE,
                          memory_order_release);
}

void tb_log(int level, const char *fmt, ...)
{
    if (level > g_tb_log_level)
        return;
    char buf[512];
    int n = snprintf(buf, sizeof buf, "[cuda_tb %d] ", (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof buf)
        vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = strnlen(buf, sizeof buf - 2);
    buf[len++] = '\n';
    /* One write() so lines from several threads do not interleave; the result
     * is deliberately ignored: logging must never fail the host. */
    ssize_t w = write(STDERR_FILENO, buf, len);
    (void)w;
}

static int env_u64(const char *name, uint64_t min, uint64_t *out)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return 0;
    char *end = NULL;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || end == v || *end != '\0' || x < min) {
        tb_log(1, "ignoring %s=%s (want an integer >= %llu)", name, v, (unsigned long long)min);
        return 0;
    }
    *out = x;
    return 1;
}

static double env_rate(void)
{
    const char *v = getenv("CUDA_TB_RATE");
    if (!v || !*v)
        return 1.0;
    char *end = NULL;
    double r = strtod(v, &end);
    if (end == v || *end != '\0' || !isfinite(r)) {
        tb_log(1, "ignoring CUDA_TB_RATE=%s (not a number), using 1.0", v);
        return 1.0;
    }
    if (r < TB_MIN_RATE || r > 1.0) {
        double c = r < TB_MIN_RATE ? TB_MIN_RATE : 1.0;
        tb_log(1, "CUDA_TB_RATE=%s outside [0.1, 1], clamped to %.2f", v, c);
        return c;
    }
    return r;
}

static void load_env(void)
{
    uint64_t lvl;
    if (env_u64("CUDA_TB_LOG", 0, &lvl))
        g_tb_log_level = (int)(lvl > 3 ? 3 : lvl);

    double r = env_rate();
    uint64_t bits;
    memcpy(&bits, &r, sizeof bits);
    atomic_store(&g_tb.rate_bits, bits);

    uint64_t bw;
    if (env_u64("CUDA_TB_BLOCKS_PER_WINDOW", 1, &bw)) {
        atomic_store(&g_tb.blocks_per_window, bw);
        atomic_store(&g_tb.calibration, TB_CAL_ENV);
    }
    uint64_t waves = TB_DEFAULT_WAVES_PER_WINDOW;
    env_u64("CUDA_TB_WAVES_PER_WINDOW", 1, &waves);
    g_tb.waves_per_window = waves;

    uint64_t gt = 0; /* 0 = one full window (B_W) per graph of unknown size */
    env_u64("CUDA_TB_GRAPH_TOKENS", 0, &gt);
    atomic_store(&g_tb.graph_tokens, gt);
}

static void reset_counters(void)
{
    atomic_store(&g_tb.launches, 0);
    atomic_store(&g_tb.blocks, 0);
    atomic_store(&g_tb.throttled_launches, 0);
    atomic_store(&g_tb.wait_ns, 0);
    atomic_store(&g_tb.graph_launches, 0);
    atomic_store(&g_tb.graph_unknown_launches, 0);
    atomic_store(&g_tb.captured_launches, 0);
    atomic_store(&g_tb.unwrapped_lookups, 0);
    g_tb.start_ns = tb_now_ns();
}

/* fork(): the child has one thread and copies of every lock, so locks are
 * taken around the fork and the child rebuilds what it cannot inherit: the
 * control thread and its socket (the parent keeps both). The child starts its
 * own statistics and its own control socket lazily, like a fresh process. */
static void atfork_prepare(void)
{
    tb_control_atfork_prepare();
    tb_bucket_atfork_prepare();
    tb_hooks_atfork_prepare();
}

static void atfork_parent(void)
{
    tb_hooks_atfork_parent();
    tb_bucket_atfork_parent();
    tb_control_atfork_parent();
}

static void atfork_child(void)
{
    tb_hooks_atfork_child();
    tb_bucket_atfork_child();
    tb_control_atfork_child();
    reset_counters();
    /* Back through the first-launch path, which restarts the control thread. */
    atomic_store(&g_tb.mode, TB_MODE_UNINIT);
}

__attribute__((constructor)) static void tb_constructor(void)
{
    atomic_store(&g_tb.mode, TB_MODE_UNINIT);
    reset_counters();
    load_env();
    tb_bucket_init();
    tb_control_init();
    if (pthread_atfork(atfork_prepare, atfork_parent, atfork_child) != 0)
        tb_log(1, "pthread_atfork failed; fork()ed children may misbehave");
}
