/*
 * A fake libcuda.so.1 for testing the cuda_tb shim on machines without a GPU.
 *
 * It exports the driver entry points the shim and its test program use, with
 * the real ABI. The fake device is a virtual timeline shared by all threads: a
 * "kernel launch" appends FAKE_CUDA_NS_PER_BLOCK nanoseconds per thread block
 * (default 1000, so the device retires 10 000 blocks per 10 ms window) and,
 * like a real launch, returns at once while the device has less than
 * FAKE_CUDA_QUEUE_US of work queued; past that it sleeps until half of the
 * queue has drained. Because the device runs in virtual time rather than on
 * the launching thread's CPU, a busy machine delays launches but does not make
 * the device slower, which keeps throughput measurements meaningful on a
 * loaded 2-core CI box. FAKE_CUDA_NS_PER_BLOCK=0 makes a launch a no-op, for
 * overhead measurements.
 *
 * Environment:
 *   FAKE_CUDA_NS_PER_BLOCK   cost of one block (ns)
 *   FAKE_CUDA_QUEUE_US       launch queue depth in device time (default 2000)
 *   FAKE_CUDA_SMS            multiprocessor count reported (default 4)
 *   FAKE_CUDA_PRIVATE_ENTRY  1: cuGetProcAddress hands out cuLaunchKernel(Ex)
 *                            and cuGraphInstantiate functions that are not
 *                            exported under any name, as a real driver may
 * The stream handle FAKE_CUDA_CAPTURE_STREAM (0xCA97) reports an active stream
 * capture. fakecuda_last_entry_ns() tells the calling thread when its last
 * launch reached the fake (i.e. left the shim), so a test can tell the time a
 * launch spent held by the shim from the time the fake device queue held it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

#include "../cuda_abi.h"

enum { OK = 0, INVALID_VALUE = 1, NOT_FOUND = 500 };

#define CAPTURE_STREAM ((CUstream)0xCA97)


typedef CUDA_KERNEL_NODE_PARAMS_v2 kernel_node_params;

#define MAX_NODES 64
struct fake_graph;
struct fake_node {
    int type; /* 0 kernel, 4 child graph */
    unsigned int gx, gy, gz;
    struct fake_graph *child;
};
struct fake_graph {
    int n;
    struct fake_node nodes[MAX_NODES];
};
struct fake_exec {
    uint64_t blocks;
};

static uint64_t g_ns_per_block = 1000;
static uint64_t g_queue_ns = 2000000;
static _Atomic uint64_t g_free_at; /* device time when the queued work ends */
static int g_sms = 4;
static int g_private;
static _Atomic uint64_t g_launches, g_blocks;
static __thread uint64_t tl_entry_ns; /* 0 until a timed launch (ns per block > 0) */

__attribute__((constructor)) static void fake_init(void)
{
    const char *v = getenv("FAKE_CUDA_NS_PER_BLOCK");
    if (v && *v)
        g_ns_per_block = strtoull(v, NULL, 10);
    v = getenv("FAKE_CUDA_QUEUE_US");
    if (v && *v)
        g_queue_ns = strtoull(v, NULL, 10) * 1000ULL;
    v = getenv("FAKE_CUDA_SMS");
    if (v && *v)
        g_sms = atoi(v);
    v = getenv("FAKE_CUDA_PRIVATE_ENTRY");
    g_private = v && strcmp(v, "1") == 0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static CUresult run_blocks(uint64_t blocks)
{
    if (blocks == 0)
        return INVALID_VALUE;
    atomic_fetch_add_explicit(&g_launches, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&g_blocks, blocks, memory_order_relaxed);
    if (g_ns_per_block == 0)
        return OK;
    uint64_t now = now_ns();
    tl_entry_ns = now;
    uint64_t cur = atomic_load(&g_free_at), end;
    do {
        uint64_t start = cur > now ? cur : now;
        end = start + blocks * g_ns_per_block;
    } while (!atomic_compare_exchange_weak(&g_free_at, &cur, end));
    if (end > now + g_queue_ns) {
        uint64_t until = end - g_queue_ns / 2;
        struct timespec ts = {(time_t)(until / 1000000000ULL), (long)(until % 1000000000ULL)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
            ;
    }
    return OK;
}

/* Test hook: CLOCK_MONOTONIC time at which the calling thread's last launch
 * entered the fake; only kept while FAKE_CUDA_NS_PER_BLOCK > 0, so the no-op
 * launches of the overhead benchmark stay free of a clock read. */
EXPORT uint64_t fakecuda_last_entry_ns(void)
{
    return tl_entry_ns;
}

/* Test hook: what the fake device actually executed. */
EXPORT void fakecuda_counters(uint64_t *launches, uint64_t *blocks)
{
    *launches = atomic_load(&g_launches);
    *blocks = atomic_load(&g_blocks);
}

EXPORT CUresult cuInit(unsigned int flags)
{
    (void)flags;
    return OK;
}

EXPORT CUresult cuDriverGetVersion(int *v)
{
    if (!v)
        return INVALID_VALUE;
    *v = 12040;
    return OK;
}

EXPORT CUresult cuCtxGetDevice(int *dev)
{
    if (!dev)
        return INVALID_VALUE;
    *dev = 0;
    return OK;
}

EXPORT CUresult cuDeviceGetAttribute(int *out, int attr, int dev)
{
    if (!out || dev != 0)
        return INVALID_VALUE;
    if (attr == 16)
        *out = g_sms;
    else if (attr == 106)
        *out = 8;
    else
        return INVALID_VALUE;
    return OK;
}

EXPORT CUresult cuStreamIsCapturing(CUstream s, int *status)
{
    if (!status)
        return INVALID_VALUE;
    *status = s == CAPTURE_STREAM;
    return OK;
}

EXPORT CUresult cuStreamIsCapturing_ptsz(CUstream s, int *status)
{
    return cuStreamIsCapturing(s, status);
}

/* ---- launches ------------------------------------------------------------------ */


static CUresult launch(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz)
{
    if (!f)
        return INVALID_VALUE;
    return run_blocks((uint64_t)gx * gy * gz);
}

EXPORT CUresult cuLaunchKernel(LAUNCH_ARGS)
{
    (void)bx, (void)by, (void)bz, (void)shmem, (void)s, (void)params, (void)extra;
    return launch(f, gx, gy, gz);
}

EXPORT CUresult cuLaunchKernel_ptsz(LAUNCH_ARGS)
{
    (void)bx, (void)by, (void)bz, (void)shmem, (void)s, (void)params, (void)extra;
    return launch(f, gx, gy, gz);
}

static CUresult launch_ex(const CUlaunchConfig *c, CUfunction f)
{
    if (!c)
        return INVALID_VALUE;
    return launch(f, c->gridDimX, c->gridDimY, c->gridDimZ);
}

EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *c, CUfunction f, void **p, void **e)
{
    (void)p, (void)e;
    return launch_ex(c, f);
}

EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *c, CUfunction f, void **p, void **e)
{
    (void)p, (void)e;
    return launch_ex(c, f);
}

EXPORT CUresult cuLaunchCooperativeKernel(COOP_ARGS)
{
    (void)bx, (void)by, (void)bz, (void)shmem, (void)s, (void)params;
    return launch(f, gx, gy, gz);
}

EXPORT CUresult cuLaunchCooperativeKernel_ptsz(COOP_ARGS)
{
    (void)bx, (void)by, (void)bz, (void)shmem, (void)s, (void)params;
    return launch(f, gx, gy, gz);
}

/* Same behaviour, but not exported: what FAKE_CUDA_PRIVATE_ENTRY hands out. */
static CUresult priv_launch_kernel(LAUNCH_ARGS)
{
    (void)bx, (void)by, (void)bz, (void)shmem, (void)s, (void)params, (void)extra;
    return launch(f, gx, gy, gz);
}

static CUresult priv_launch_kernel_ex(const CUlaunchConfig *c, CUfunction f, void **p, void **e)
{
    (void)p, (void)e;
    return launch_ex(c, f);
}

struct fake_exec;
struct fake_graph;
static CUresult instantiate(struct fake_exec **out, struct fake_graph *g);

/* A private instantiate: graphs made through it are invisible to the shim. */
static CUresult priv_graph_instantiate(struct fake_exec **out, struct fake_graph *g,
                                       unsigned long long flags)
{
    (void)flags;
    return instantiate(out, g);
}

/* ---- graphs ---------------------------------------------------------------------- */

EXPORT CUresult cuGraphCreate(struct fake_graph **g, unsigned int flags)
{
    (void)flags;
    if (!g)
        return INVALID_VALUE;
    *g = calloc(1, sizeof **g);
    return *g ? OK : INVALID_VALUE;
}

EXPORT CUresult cuGraphDestroy(struct fake_graph *g)
{
    free(g);
    return OK;
}

static struct fake_node *add_node(struct fake_graph *g)
{
    if (!g || g->n >= MAX_NODES)
        return NULL;
    return &g->nodes[g->n++];
}

EXPORT CUresult cuGraphAddKernelNode_v2(struct fake_node **out, struct fake_graph *g,
                                        const void *deps, size_t ndeps,
                                        const kernel_node_params *p)
{
    (void)deps, (void)ndeps;
    struct fake_node *n = p ? add_node(g) : NULL;
    if (!n)
        return INVALID_VALUE;
    n->type = 0;
    n->gx = p->gridDimX;
    n->gy = p->gridDimY;
    n->gz = p->gridDimZ;
    if (out)
        *out = n;
    return OK;
}

EXPORT CUresult cuGraphAddKernelNode(struct fake_node **out, struct fake_graph *g,
                                     const void *deps, size_t ndeps, const kernel_node_params *p)
{
    return cuGraphAddKernelNode_v2(out, g, deps, ndeps, p);
}

EXPORT CUresult cuGraphAddChildGraphNode(struct fake_node **out, struct fake_graph *g,
                                         const void *deps, size_t ndeps,
                                         struct fake_graph *child)
{
    (void)deps, (void)ndeps;
    struct fake_node *n = child ? add_node(g) : NULL;
    if (!n)
        return INVALID_VALUE;
    n->type = 4;
    n->child = child;
    if (out)
        *out = n;
    return OK;
}

EXPORT CUresult cuGraphGetNodes(struct fake_graph *g, struct fake_node **nodes, size_t *num)
{
    if (!g || !num)
        return INVALID_VALUE;
    if (nodes) {
        for (size_t i = 0; i < *num; i++)
            nodes[i] = i < (size_t)g->n ? &g->nodes[i] : NULL;
    }
    *num = (size_t)g->n;
    return OK;
}

EXPORT CUresult cuGraphNodeGetType(struct fake_node *n, int *type)
{
    if (!n || !type)
        return INVALID_VALUE;
    *type = n->type;
    return OK;
}

EXPORT CUresult cuGraphKernelNodeGetParams_v2(struct fake_node *n, kernel_node_params *p)
{
    if (!n || !p || n->type != 0)
        return INVALID_VALUE;
    memset(p, 0, sizeof *p);
    p->func = (CUfunction)n;
    p->gridDimX = n->gx;
    p->gridDimY = n->gy;
    p->gridDimZ = n->gz;
    p->blockDimX = p->blockDimY = p->blockDimZ = 1;
    return OK;
}

EXPORT CUresult cuGraphKernelNodeGetParams(struct fake_node *n, kernel_node_params *p)
{
    return cuGraphKernelNodeGetParams_v2(n, p);
}

EXPORT CUresult cuGraphChildGraphNodeGetGraph(struct fake_node *n, struct fake_graph **g)
{
    if (!n || !g || n->type != 4)
        return INVALID_VALUE;
    *g = n->child;
    return OK;
}

static uint64_t graph_total(const struct fake_graph *g, int depth)
{
    uint64_t t = 0;
    for (int i = 0; g && depth < 16 && i < g->n; i++) {
        const struct fake_node *n = &g->nodes[i];
        t += n->type == 0 ? (uint64_t)n->gx * n->gy * n->gz : graph_total(n->child, depth + 1);
    }
    return t;
}

static CUresult instantiate(struct fake_exec **out, struct fake_graph *g)
{
    if (!out || !g)
        return INVALID_VALUE;
    *out = malloc(sizeof **out);
    if (!*out)
        return INVALID_VALUE;
    (*out)->blocks = graph_total(g, 0);
    return OK;
}

EXPORT CUresult cuGraphInstantiateWithFlags(struct fake_exec **out, struct fake_graph *g,
                                            unsigned long long flags)
{
    (void)flags;
    return instantiate(out, g);
}

EXPORT CUresult cuGraphInstantiate_v2(struct fake_exec **out, struct fake_graph *g, void **err,
                                      char *log, size_t log_size)
{
    (void)err;
    if (log && log_size)
        log[0] = '\0';
    return instantiate(out, g);
}

EXPORT CUresult cuGraphInstantiate(struct fake_exec **out, struct fake_graph *g, void **err,
                                   char *log, size_t log_size)
{
    return cuGraphInstantiate_v2(out, g, err, log, log_size);
}

EXPORT CUresult cuGraphInstantiateWithParams(struct fake_exec **out, struct fake_graph *g,
                                             void *params)
{
    (void)params;
    return instantiate(out, g);
}

EXPORT CUresult cuGraphInstantiateWithParams_ptsz(struct fake_exec **out, struct fake_graph *g,
                                                  void *params)
{
    (void)params;
    return instantiate(out, g);
}

EXPORT CUresult cuGraphExecDestroy(struct fake_exec *e)
{
    free(e);
    return OK;
}

EXPORT CUresult cuGraphLaunch(struct fake_exec *e, CUstream s)
{
    (void)s;
    return e ? run_blocks(e->blocks) : INVALID_VALUE;
}

EXPORT CUresult cuGraphLaunch_ptsz(struct fake_exec *e, CUstream s)
{
    return cuGraphLaunch(e, s);
}

/* ---- cuGetProcAddress ------------------------------------------------------------ */

EXPORT CUresult cuGetProcAddress(const char *, void **, int, cuuint64_t);
EXPORT CUresult cuGetProcAddress_v2(const char *, void **, int, cuuint64_t, int *);

struct entry {
    const char *name;
    void *fn;
};

#define E(n) {#n, (void *)n}
static const struct entry g_entries[] = {
    E(cuInit),
    E(cuDriverGetVersion),
    E(cuCtxGetDevice),
    E(cuDeviceGetAttribute),
    E(cuStreamIsCapturing),
    E(cuGraphCreate),
    E(cuGraphDestroy),
    E(cuGraphAddChildGraphNode),
    E(cuGraphGetNodes),
    E(cuGraphNodeGetType),
    E(cuGraphChildGraphNodeGetGraph),
    E(cuGraphExecDestroy),
    E(cuGraphInstantiateWithFlags),
};
#undef E

/* Mirrors the real driver: base names, resolved by CUDA version and by the
 * per-thread-default-stream flag. */
static void *lookup(const char *sym, int version, cuuint64_t flags)
{
    int ptds = (flags & 2) != 0;
    if (strcmp(sym, "cuLaunchKernel") == 0) {
        if (g_private && !ptds)
            return (void *)priv_launch_kernel;
        return ptds ? (void *)cuLaunchKernel_ptsz : (void *)cuLaunchKernel;
    }
    if (strcmp(sym, "cuLaunchKernelEx") == 0) {
        if (g_private && !ptds)
            return (void *)priv_launch_kernel_ex;
        return ptds ? (void *)cuLaunchKernelEx_ptsz : (void *)cuLaunchKernelEx;
    }
    if (strcmp(sym, "cuLaunchCooperativeKernel") == 0)
        return ptds ? (void *)cuLaunchCooperativeKernel_ptsz : (void *)cuLaunchCooperativeKernel;
    if (strcmp(sym, "cuGraphLaunch") == 0)
        return ptds ? (void *)cuGraphLaunch_ptsz : (void *)cuGraphLaunch;
    if (strcmp(sym, "cuGraphInstantiateWithParams") == 0)
        return ptds ? (void *)cuGraphInstantiateWithParams_ptsz
                    : (void *)cuGraphInstantiateWithParams;
    if (strcmp(sym, "cuStreamIsCapturing") == 0)
        return ptds ? (void *)cuStreamIsCapturing_ptsz : (void *)cuStreamIsCapturing;
    if (strcmp(sym, "cuGetProcAddress") == 0)
        return version >= 12000 ? (void *)cuGetProcAddress_v2 : (void *)cuGetProcAddress;
    if (strcmp(sym, "cuGraphInstantiate") == 0 && g_private && version >= 12000)
        return (void *)priv_graph_instantiate;
    if (strcmp(sym, "cuGraphInstantiate") == 0)
        return version >= 12000 ? (void *)cuGraphInstantiateWithFlags
                                : (void *)cuGraphInstantiate_v2;
    if (strcmp(sym, "cuGraphAddKernelNode") == 0)
        return version >= 12000 ? (void *)cuGraphAddKernelNode_v2 : (void *)cuGraphAddKernelNode;
    if (strcmp(sym, "cuGraphKernelNodeGetParams") == 0)
        return version >= 12000 ? (void *)cuGraphKernelNodeGetParams_v2
                                : (void *)cuGraphKernelNodeGetParams;
    for (size_t i = 0; i < sizeof g_entries / sizeof g_entries[0]; i++)
        if (strcmp(sym, g_entries[i].name) == 0)
            return g_entries[i].fn;
    return NULL;
}

EXPORT CUresult cuGetProcAddress_v2(const char *sym, void **pfn, int version, cuuint64_t flags,
                                    int *status)
{
    if (!sym || !pfn)
        return INVALID_VALUE;
    *pfn = lookup(sym, version, flags);
    if (status)
        *status = *pfn ? 0 : 1;
    return *pfn ? OK : NOT_FOUND;
}

EXPORT CUresult cuGetProcAddress(const char *sym, void **pfn, int version, cuuint64_t flags)
{
    return cuGetProcAddress_v2(sym, pfn, version, flags, NULL);
}
