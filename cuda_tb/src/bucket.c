/*
 * The token bucket of docs/algorithm.md section 8, start-up calibration, and the table of
 * CUDA graph sizes used to charge graph launches.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda_tb.h"

/* ---- bucket state (all under g_mu) ------------------------------------------ */

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_turn = PTHREAD_COND_INITIALIZER;
/* The head of the queue sleeps on g_tick until the next window boundary; a
 * rate change broadcasts it so the head re-evaluates at once. */
static pthread_cond_t g_tick = PTHREAD_COND_INITIALIZER;
static clockid_t g_tick_clock = CLOCK_REALTIME; /* the clock g_tick's deadlines use */
static double g_tokens;        /* may go negative: debt from an oversize launch */
static uint64_t g_win_start;   /* CLOCK_MONOTONIC start of the window of the last refill */
static uint64_t g_next_ticket; /* FIFO order among throttled launchers */
static uint64_t g_serving;
static int g_bucket_primed;

/* Serialises the switch out of TB_MODE_UNINIT against SET rate. */
static pthread_mutex_t g_mode_mu = PTHREAD_MUTEX_INITIALIZER;

/* Runs single-threaded (constructor, fork child), so re-initialising the
 * condition variable cannot race a waiter. */
void tb_bucket_init(void)
{
    g_tokens = 0;
    g_win_start = 0;
    g_next_ticket = g_serving = 0;
    g_bucket_primed = 0;
    /* Monotonic deadlines do not jump when the wall clock is set. */
    pthread_condattr_t attr;
    int have_attr = pthread_condattr_init(&attr) == 0;
    if (have_attr && pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0 &&
        pthread_cond_init(&g_tick, &attr) == 0) {
        g_tick_clock = CLOCK_MONOTONIC;
    } else {
        pthread_cond_init(&g_tick, NULL);
        g_tick_clock = CLOCK_REALTIME;
    }
    if (have_attr)
        pthread_condattr_destroy(&attr);
}

/* Refill for every window boundary crossed since the last one:
 * tokens = min(capacity, tokens + r * B_W) per window, which for k windows
 * is min(capacity, tokens + k * r * B_W) because the step is monotone.
 * Boundaries lie every W after g_win_start; a rate change moves g_win_start
 * (tb_apply_rate). `now_ns` may predate g_win_start when it was read before
 * the lock and a rate change came in between. */
static void refill_locked(uint64_t now_ns, double rate, double capacity)
{
    if (!g_bucket_primed) {
        g_tokens = capacity; /* a fresh bucket starts full */
        /* Windows are counted from the shim's load time until a rate change. */
        uint64_t since = now_ns > g_tb.start_ns ? now_ns - g_tb.start_ns : 0;
        g_win_start = g_tb.start_ns + since / TB_WINDOW_NS * TB_WINDOW_NS;
        g_bucket_primed = 1;
        return;
    }
    if (now_ns < g_win_start + TB_WINDOW_NS)
        return;
    uint64_t k = (now_ns - g_win_start) / TB_WINDOW_NS;
    double add = (double)k * rate * capacity;
    g_tokens = g_tokens + add > capacity ? capacity : g_tokens + add;
    g_win_start += k * TB_WINDOW_NS;
}

/* Waits on g_tick (releasing g_mu) until the monotonic `deadline`, a
 * broadcast, or a spurious wake-up; the caller re-checks the bucket in every
 * case. */
static void wait_tick_locked(uint64_t deadline)
{
    if (g_tick_clock != CLOCK_MONOTONIC) {
        /* Only if the monotonic clock could not be set on g_tick: translate
         * the deadline to the realtime clock the condition variable uses. */
        uint64_t mono = tb_now_ns();
        struct timespec rt;
        clock_gettime(CLOCK_REALTIME, &rt);
        uint64_t rt_ns = (uint64_t)rt.tv_sec * 1000000000ULL + (uint64_t)rt.tv_nsec;
        deadline = rt_ns + (deadline > mono ? deadline - mono : 0);
    }
    struct timespec ts = {.tv_sec = (time_t)(deadline / 1000000000ULL),
                          .tv_nsec = (long)(deadline % 1000000000ULL)};
    pthread_cond_timedwait(&g_tick, &g_mu, &ts);
}

/* Condition waits are cancellation points that re-take g_mu before a
 * cancelled thread unwinds: a launcher cancelled there would leave the lock
 * held and its ticket unserved, stalling every launcher and the control
 * thread. Cancellation is held off while a launcher waits (only then, so the
 * path that never waits pays nothing); a request made meanwhile takes effect
 * at the thread's next cancellation point after admission. */
static void hold_off_cancel(int *saved)
{
    if (*saved < 0)
        pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, saved);
}

/* Takes `cost` tokens, sleeping until window refills cover them. Launchers are
 * served in arrival order (a ticket queue) so a large launch waiting for a
 * full bucket cannot be overtaken forever by small ones. The head of the
 * queue sleeps one window at a time on g_tick (which releases the lock), so a
 * new capacity is seen at the next window boundary and a rate change, which
 * broadcasts g_tick, at once. */
static void bucket_acquire(uint64_t cost)
{
    uint64_t t0 = tb_now_ns();
    int waited = 0;
    int cancel_state = -1; /* -1: cancellation state untouched */
    pthread_mutex_lock(&g_mu);
    uint64_t ticket = g_next_ticket++;
    while (ticket != g_serving) {
        waited = 1;
        hold_off_cancel(&cancel_state);
        pthread_cond_wait(&g_turn, &g_mu);
    }
    for (;;) {
        double rate = tb_rate();
        double capacity =
            (double)atomic_load_explicit(&g_tb.blocks_per_window, memory_order_relaxed);
        uint64_t now = waited ? tb_now_ns() : t0;
        refill_locked(now, rate, capacity);
        double need = (double)cost;
        if (g_tokens >= need || (need > capacity && g_tokens >= capacity) || rate >= 1.0) {
            /* rate >= 1: the rate was raised to 1 while this launcher waited;
             * r = 1 never waits. */
            g_tokens -= need;
            break;
        }
        hold_off_cancel(&cancel_state);
        wait_tick_locked(g_win_start + TB_WINDOW_NS);
        waited = 1;
    }
    g_serving++;
    pthread_cond_broadcast(&g_turn);
    pthread_mutex_unlock(&g_mu);
    if (cancel_state >= 0) {
        int ignored;
        pthread_setcancelstate(cancel_state, &ignored);
    }
    if (waited) {
        atomic_fetch_add_explicit(&g_tb.throttled_launches, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&g_tb.wait_ns, tb_now_ns() - t0, memory_order_relaxed);
    }
}

/* Tokens as a launch arriving now would see them (for GET stats). */
double tb_bucket_tokens_now(void)
{
    double capacity = (double)atomic_load(&g_tb.blocks_per_window);
    pthread_mutex_lock(&g_mu);
    double tokens = g_tokens;
    if (!g_bucket_primed) {
        tokens = capacity;
    } else {
        uint64_t now = tb_now_ns();
        if (now >= g_win_start + TB_WINDOW_NS) {
            uint64_t k = (now - g_win_start) / TB_WINDOW_NS;
            double add = (double)k * tb_rate() * capacity;
            tokens = tokens + add > capacity ? capacity : tokens + add;
        }
    }
    pthread_mutex_unlock(&g_mu);
    return tokens;
}

/* ---- calibration -------------------------------------------------------------- */

/* B_W from device attributes: every SM holds at most max-blocks-per-SM
 * resident blocks, and W is taken to fit CUDA_TB_WAVES_PER_WINDOW such waves
 * (default 10: blocks of about 1 ms, typical of inference kernels). This is a
 * model, not a measurement; CUDA_TB_BLOCKS_PER_WINDOW or SET blocks_per_window
 * replace it with a measured figure (see docs/shim.md). */
static void calibrate(void)
{
    const struct tb_real_helpers *h = &g_tb.helpers;
    CUdevice dev = 0;
    int sms = 0, per_sm = 0;
    if (h->ctx_get_device && h->device_get_attribute && h->ctx_get_device(&dev) == CUDA_SUCCESS &&
        h->device_get_attribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev) ==
            CUDA_SUCCESS &&
        h->device_get_attribute(&per_sm, CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR,
                                dev) == CUDA_SUCCESS &&
        sms > 0 && per_sm > 0) {
        uint64_t bw = (uint64_t)sms * (uint64_t)per_sm * g_tb.waves_per_window;
        atomic_store(&g_tb.blocks_per_window, bw);
        atomic_store(&g_tb.calibration, TB_CAL_DEVICE);
        tb_log(2, "calibrated B_W = %d SMs x %d blocks x %llu waves = %llu", sms, per_sm,
               (unsigned long long)g_tb.waves_per_window, (unsigned long long)bw);
        return;
    }
    atomic_store(&g_tb.blocks_per_window, TB_FALLBACK_BLOCKS_PER_WINDOW);
    atomic_store(&g_tb.calibration, TB_CAL_FALLBACK);
    tb_log(1, "cannot read device attributes; B_W = %llu (set CUDA_TB_BLOCKS_PER_WINDOW)",
           (unsigned long long)TB_FALLBACK_BLOCKS_PER_WINDOW);
}

void tb_first_launch_init(void)
{
    tb_ensure_real(NULL);
    pthread_mutex_lock(&g_mode_mu);
    if (atomic_load(&g_tb.mode) == TB_MODE_UNINIT) {
        if (atomic_load(&g_tb.calibration) == TB_CAL_NONE)
            calibrate();
        atomic_store_explicit(&g_tb.mode, tb_rate() >= 1.0 ? TB_MODE_FAST : TB_MODE_THROTTLE,
                              memory_order_release);
    }
    pthread_mutex_unlock(&g_mode_mu);
}

/* Called by the control thread. Takes g_mode_mu so a concurrent first launch
 * cannot pick its mode from the old rate after the new one was stored.
 *
 * Section 8 applies a new rate at the next window; here the next window opens
 * now, so the change is in force before the socket reply goes out rather than
 * up to W later. Under g_mu: the windows that ended before the change are
 * settled at the old rate, a window starts at `now` with the refill
 * min(capacity, tokens + r * B_W) at the new rate, and the head launcher,
 * asleep until the old boundary, is woken to re-check. Launchers read the
 * rate under g_mu too, so none mixes the old rate with the new window. Each
 * change advances the window schedule by less than W: at most one extra
 * refill per change, and none for a SET of the rate already in force.
 *
 * At r = 1 launches bypass the bucket, so its tokens say nothing about what
 * the workload used; they are taken as spent (the new window holds r * B_W,
 * not a full bucket), otherwise a decrease from 1 would let a saturating
 * workload run a whole window at full speed first. Before the first launch
 * (TB_MODE_UNINIT) there is no bucket to touch: the first launch primes it. */
void tb_apply_rate(double r)
{
    pthread_mutex_lock(&g_mode_mu);
    double old = tb_rate();
    int mode = atomic_load_explicit(&g_tb.mode, memory_order_acquire);
    pthread_mutex_lock(&g_mu);
    if (r != old && mode != TB_MODE_UNINIT) {
        uint64_t now = tb_now_ns();
        double capacity =
            (double)atomic_load_explicit(&g_tb.blocks_per_window, memory_order_relaxed);
        if (mode == TB_MODE_FAST) {
            g_tokens = 0;
            g_bucket_primed = 1;
        } else if (g_bucket_primed) {
            refill_locked(now, old, capacity);
        }
        if (g_bucket_primed) {
            double add = r * capacity;
            g_tokens = g_tokens + add > capacity ? capacity : g_tokens + add;
            g_win_start = now;
            pthread_cond_broadcast(&g_tick);
        }
    }
    tb_set_rate(r);
    pthread_mutex_unlock(&g_mu);
    pthread_mutex_unlock(&g_mode_mu);
}

/* ---- admission --------------------------------------------------------------- */

/* Launches recorded into a graph during stream capture do not run, so they
 * are neither charged nor delayed. The legacy NULL stream cannot capture. */
static int stream_capturing(CUstream s, int ptsz)
{
    const struct tb_real_helpers *h = &g_tb.helpers;
    if (s == TB_CU_STREAM_LEGACY || (s == NULL && !ptsz))
        return 0;
    pfn_cuStreamIsCapturing fn = ptsz ? h->stream_is_capturing_ptsz : h->stream_is_capturing;
    if (!fn)
        fn = h->stream_is_capturing;
    int status = CU_STREAM_CAPTURE_STATUS_NONE;
    if (!fn || fn(s, &status) != CUDA_SUCCESS)
        return 0;
    return status != CU_STREAM_CAPTURE_STATUS_NONE;
}

void tb_admit_slow(uint64_t blocks, CUstream stream, int ptsz)
{
    int mode = atomic_load_explicit(&g_tb.mode, memory_order_acquire);
    if (mode == TB_MODE_UNINIT) {
        tb_first_launch_init();
        mode = atomic_load_explicit(&g_tb.mode, memory_order_acquire);
    }
    atomic_fetch_add_explicit(&g_tb.launches, 1, memory_order_relaxed);
    if (mode == TB_MODE_FAST) {
        atomic_fetch_add_explicit(&g_tb.blocks, blocks, memory_order_relaxed);
        return;
    }
    if (stream_capturing(stream, ptsz)) {
        atomic_fetch_add_explicit(&g_tb.captured_launches, 1, memory_order_relaxed);
        return;
    }
    atomic_fetch_add_explicit(&g_tb.blocks, blocks, memory_order_relaxed);
    bucket_acquire(blocks);
}

/* ---- graph sizes ---------------------------------------------------------------- */

/* Open-addressing map CUgraphExec -> blocks, filled when a graph is
 * instantiated (a rare, slow call) and read on every graph launch. */
#define GRAPH_EMPTY ((uintptr_t)0)
#define GRAPH_TOMBSTONE ((uintptr_t)1)
struct graph_entry {
    uintptr_t key;
    uint64_t blocks;
};
static pthread_mutex_t g_graph_mu = PTHREAD_MUTEX_INITIALIZER;
static struct graph_entry *g_graphs;
static size_t g_graph_cap, g_graph_used;

static size_t graph_hash(uintptr_t key, size_t cap)
{
    uint64_t x = (uint64_t)key;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x & (cap - 1);
}

static int graph_grow_locked(void)
{
    size_t cap = g_graph_cap ? g_graph_cap * 2 : 64;
    struct graph_entry *tab = calloc(cap, sizeof *tab);
    if (!tab)
        return 0;
    size_t used = 0;
    for (size_t i = 0; i < g_graph_cap; i++) {
        uintptr_t k = g_graphs[i].key;
        if (k == GRAPH_EMPTY || k == GRAPH_TOMBSTONE)
            continue;
        size_t j = graph_hash(k, cap);
        while (tab[j].key != GRAPH_EMPTY)
            j = (j + 1) & (cap - 1);
        tab[j] = g_graphs[i];
        used++;
    }
    free(g_graphs);
    g_graphs = tab;
    g_graph_cap = cap;
    g_graph_used = used;
    return 1;
}

static struct graph_entry *graph_find_locked(uintptr_t key)
{
    if (!g_graph_cap)
        return NULL;
    size_t j = graph_hash(key, g_graph_cap);
    for (size_t n = 0; n < g_graph_cap; n++) {
        if (g_graphs[j].key == key)
            return &g_graphs[j];
        if (g_graphs[j].key == GRAPH_EMPTY)
            return NULL;
        j = (j + 1) & (g_graph_cap - 1);
    }
    return NULL;
}

static void graph_put(uintptr_t key, uint64_t blocks)
{
    pthread_mutex_lock(&g_graph_mu);
    struct graph_entry *e = graph_find_locked(key);
    if (e) {
        e->blocks = blocks;
    } else if ((g_graph_used + 1) * 2 <= g_graph_cap || graph_grow_locked()) {
        size_t j = graph_hash(key, g_graph_cap);
        while (g_graphs[j].key != GRAPH_EMPTY && g_graphs[j].key != GRAPH_TOMBSTONE)
            j = (j + 1) & (g_graph_cap - 1);
        if (g_graphs[j].key == GRAPH_EMPTY)
            g_graph_used++; /* tombstones already count as used */
        g_graphs[j].key = key;
        g_graphs[j].blocks = blocks;
    }
    pthread_mutex_unlock(&g_graph_mu);
}

void tb_graph_forget(CUgraphExec exec)
{
    pthread_mutex_lock(&g_graph_mu);
    struct graph_entry *e = graph_find_locked((uintptr_t)exec);
    if (e)
        e->key = GRAPH_TOMBSTONE;
    pthread_mutex_unlock(&g_graph_mu);
}

/* Sum of gridDim products over the kernel nodes, recursing into child graphs.
 * Returns 0 in *ok when some node could not be read. */
static uint64_t graph_blocks(CUgraph g, int depth, int *ok)
{
    const struct tb_real_helpers *h = &g_tb.helpers;
    if (!h->graph_get_nodes || !h->graph_node_get_type || !h->kernel_node_get_params) {
        *ok = 0;
        return 0;
    }
    size_t n = 0;
    if (h->graph_get_nodes(g, NULL, &n) != CUDA_SUCCESS) {
        *ok = 0;
        return 0;
    }
    if (n == 0)
        return 0;
    CUgraphNode *nodes = calloc(n, sizeof *nodes);
    if (!nodes) {
        *ok = 0;
        return 0;
    }
    size_t got = n;
    uint64_t total = 0;
    if (h->graph_get_nodes(g, nodes, &got) != CUDA_SUCCESS) {
        *ok = 0;
        got = 0;
    }
    for (size_t i = 0; i < got && i < n; i++) {
        int type = -1;
        if (h->graph_node_get_type(nodes[i], &type) != CUDA_SUCCESS) {
            *ok = 0;
            continue;
        }
        if (type == CU_GRAPH_NODE_TYPE_KERNEL) {
            /* Large enough for every CUDA_KERNEL_NODE_PARAMS version. */
            union {
                tb_kernel_node_prefix p;
                unsigned char raw[512];
            } params;
            memset(&params, 0, sizeof params);
            if (h->kernel_node_get_params(nodes[i], &params) == CUDA_SUCCESS)
                total += (uint64_t)params.p.gridDimX * params.p.gridDimY * params.p.gridDimZ;
            else
                *ok = 0;
        } else if (type == CU_GRAPH_NODE_TYPE_GRAPH && h->child_graph_get_graph) {
            CUgraph child = NULL;
            if (depth < 16 && h->child_graph_get_graph(nodes[i], &child) == CUDA_SUCCESS && child)
                total += graph_blocks(child, depth + 1, ok);
            else
                *ok = 0;
        }
    }
    free(nodes);
    return total;
}

void tb_graph_register(CUgraphExec exec, CUgraph graph)
{
    int ok = 1;
    uint64_t blocks = graph_blocks(graph, 0, &ok);
    if (ok) {
        graph_put((uintptr_t)exec, blocks);
        tb_log(3, "graph exec %p: %llu blocks", (void *)exec, (unsigned long long)blocks);
    } else {
        tb_graph_forget(exec); /* the address may be reused from an older exec */
        tb_log(2, "graph exec %p: size unknown, charged CUDA_TB_GRAPH_TOKENS", (void *)exec);
    }
}

uint64_t tb_graph_blocks_lookup(CUgraphExec exec, int *known)
{
    pthread_mutex_lock(&g_graph_mu);
    struct graph_entry *e = graph_find_locked((uintptr_t)exec);
    uint64_t blocks = e ? e->blocks : 0;
    pthread_mutex_unlock(&g_graph_mu);
    *known = e != NULL;
    if (e)
        return blocks;
    uint64_t est = atomic_load_explicit(&g_tb.graph_tokens, memory_order_relaxed);
    return est ? est : atomic_load_explicit(&g_tb.blocks_per_window, memory_order_relaxed);
}

/* ---- fork ------------------------------------------------------------------------ */

void tb_bucket_atfork_prepare(void)
{
    pthread_mutex_lock(&g_mode_mu);
    pthread_mutex_lock(&g_graph_mu);
    pthread_mutex_lock(&g_mu);
}

void tb_bucket_atfork_parent(void)
{
    pthread_mutex_unlock(&g_mu);
    pthread_mutex_unlock(&g_graph_mu);
    pthread_mutex_unlock(&g_mode_mu);
}

void tb_bucket_atfork_child(void)
{
    pthread_mutex_init(&g_mu, NULL);
    pthread_mutex_init(&g_graph_mu, NULL);
    pthread_mutex_init(&g_mode_mu, NULL);
    pthread_cond_init(&g_turn, NULL);
    /* Launchers queued in the parent do not exist here. tb_bucket_init also
     * re-initialises g_tick. */
    tb_bucket_init();
}
