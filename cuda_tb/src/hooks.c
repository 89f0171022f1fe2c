/*
 * Symbol interception: which driver entry points the shim wraps, how callers
 * find the wrappers, and how the wrappers find the real driver.
 *
 * A CUDA program reaches driver functions in three ways, and all three are
 * covered:
 *   1. Linking against libcuda (-lcuda): the exported functions below win by
 *      LD_PRELOAD symbol interposition.
 *   2. dlopen("libcuda.so.1") + dlsym(handle, "cuGetProcAddress_v2") (the CUDA
 *      runtime, cuBLAS/cuDNN's private runtimes, Triton, PyTorch's driver API
 *      loader): a dlsym(handle, ...) lookup only searches libcuda and its
 *      dependencies, so interposition alone misses it. The shim therefore
 *      exports dlsym itself (trampoline at the end of this file).
 *   3. cuGetProcAddress(_v2)("cuLaunchKernel", ..., flags): the runtime asks
 *      the driver for every entry point by base name, CUDA version and stream
 *      flavour. The shim forwards the query to the real driver and swaps the
 *      answer for its wrapper of the same function.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_tb.h"

/* ---- the hook table ------------------------------------------------------ */

/* ABI families: functions in one family share a signature, so an entry point
 * the shim has never seen (a private pointer handed out by cuGetProcAddress)
 * can still be wrapped if its family is known. */
enum tb_family {
    FAM_NONE = -1,
    FAM_LAUNCH = 0,
    FAM_LAUNCH_EX,
    FAM_COOP,
    FAM_GRAPH_LAUNCH,
    FAM_GPA1,
    FAM_GPA2,
    FAM_DYN_COUNT, /* families above have spare wrapper slots */
    FAM_INIT = FAM_DYN_COUNT,
    FAM_INSTANTIATE,
    FAM_EXEC_DESTROY,
};

enum {
    H_cuInit,
    H_cuGetProcAddress,
    H_cuGetProcAddress_v2,
    H_cuLaunchKernel,
    H_cuLaunchKernel_ptsz,
    H_cuLaunchKernelEx,
    H_cuLaunchKernelEx_ptsz,
    H_cuLaunchCooperativeKernel,
    H_cuLaunchCooperativeKernel_ptsz,
    H_cuGraphLaunch,
    H_cuGraphLaunch_ptsz,
    H_cuGraphInstantiate,
    H_cuGraphInstantiate_v2,
    H_cuGraphInstantiateWithFlags,
    H_cuGraphInstantiateWithParams,
    H_cuGraphInstantiateWithParams_ptsz,
    H_cuGraphExecDestroy,
    H_COUNT
};

struct tb_hook {
    const char *name;
    void *wrapper;
    int family;
    _Atomic(void *) real;
};

TB_EXPORT CUresult cuInit(unsigned int);
TB_EXPORT CUresult cuGetProcAddress(const char *, void **, int, cuuint64_t);
TB_EXPORT CUresult cuGetProcAddress_v2(const char *, void **, int, cuuint64_t, int *);
TB_EXPORT CUresult cuLaunchKernel(CUfunction, unsigned int, unsigned int, unsigned int,
                                  unsigned int, unsigned int, unsigned int, unsigned int, CUstream,
                                  void **, void **);
TB_EXPORT CUresult cuLaunchKernel_ptsz(CUfunction, unsigned int, unsigned int, unsigned int,
                                       unsigned int, unsigned int, unsigned int, unsigned int,
                                       CUstream, void **, void **);
TB_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *, CUfunction, void **, void **);
TB_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *, CUfunction, void **, void **);
TB_EXPORT CUresult cuLaunchCooperativeKernel(CUfunction, unsigned int, unsigned int, unsigned int,
                                             unsigned int, unsigned int, unsigned int,
                                             unsigned int, CUstream, void **);
TB_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction, unsigned int, unsigned int,
                                                  unsigned int, unsigned int, unsigned int,
                                                  unsigned int, unsigned int, CUstream, void **);
TB_EXPORT CUresult cuGraphLaunch(CUgraphExec, CUstream);
TB_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec, CUstream);
TB_EXPORT CUresult cuGraphInstantiate(CUgraphExec *, CUgraph, CUgraphNode *, char *, size_t);
TB_EXPORT CUresult cuGraphInstantiate_v2(CUgraphExec *, CUgraph, CUgraphNode *, char *, size_t);
TB_EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec *, CUgraph, unsigned long long);
TB_EXPORT CUresult cuGraphInstantiateWithParams(CUgraphExec *, CUgraph, void *);
TB_EXPORT CUresult cuGraphInstantiateWithParams_ptsz(CUgraphExec *, CUgraph, void *);
TB_EXPORT CUresult cuGraphExecDestroy(CUgraphExec);

#define HOOK(n, fam) [H_##n] = {#n, (void *)n, fam, NULL}
static struct tb_hook g_hooks[H_COUNT] = {
    HOOK(cuInit, FAM_INIT),
    HOOK(cuGetProcAddress, FAM_GPA1),
    HOOK(cuGetProcAddress_v2, FAM_GPA2),
    HOOK(cuLaunchKernel, FAM_LAUNCH),
    HOOK(cuLaunchKernel_ptsz, FAM_LAUNCH),
    HOOK(cuLaunchKernelEx, FAM_LAUNCH_EX),
    HOOK(cuLaunchKernelEx_ptsz, FAM_LAUNCH_EX),
    HOOK(cuLaunchCooperativeKernel, FAM_COOP),
    HOOK(cuLaunchCooperativeKernel_ptsz, FAM_COOP),
    HOOK(cuGraphLaunch, FAM_GRAPH_LAUNCH),
    HOOK(cuGraphLaunch_ptsz, FAM_GRAPH_LAUNCH),
    HOOK(cuGraphInstantiate, FAM_INSTANTIATE),
    HOOK(cuGraphInstantiate_v2, FAM_INSTANTIATE),
    HOOK(cuGraphInstantiateWithFlags, FAM_INSTANTIATE),
    HOOK(cuGraphInstantiateWithParams, FAM_INSTANTIATE),
    HOOK(cuGraphInstantiateWithParams_ptsz, FAM_INSTANTIATE),
    HOOK(cuGraphExecDestroy, FAM_EXEC_DESTROY),
};
#undef HOOK

static inline void *real_of(int h)
{
    return atomic_load_explicit(&g_hooks[h].real, memory_order_acquire);
}

static int hook_index(const char *name)
{
    for (int i = 0; i < H_COUNT; i++)
        if (strcmp(g_hooks[i].name, name) == 0)
            return i;
    return -1;
}

/* ---- the real dlsym --------------------------------------------------------- */

typedef void *(*pfn_dlsym)(void *, const char *);
static _Atomic(pfn_dlsym) g_real_dlsym;

/* Called from the trampoline, so it must not itself depend on dlsym. dlvsym
 * is not interposed, and RTLD_NEXT from this object reaches libc. */
__attribute__((used, visibility("hidden"))) void *tb_get_real_dlsym(void)
{
    pfn_dlsym fn = atomic_load_explicit(&g_real_dlsym, memory_order_acquire);
    if (TB_LIKELY(fn != NULL))
        return (void *)fn;
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.0"};
    for (size_t i = 0; i < sizeof versions / sizeof versions[0] && !fn; i++)
        fn = (pfn_dlsym)dlvsym(RTLD_NEXT, "dlsym", versions[i]);
    if (!fn) {
        /* Loaded with dlopen(RTLD_LOCAL) rather than LD_PRELOAD: ask libc. */
        void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
        for (size_t i = 0; libc && i < sizeof versions / sizeof versions[0] && !fn; i++)
            fn = (pfn_dlsym)dlvsym(libc, "dlsym", versions[i]);
        if (libc)
            dlclose(libc);
    }
    if (fn)
        atomic_store_explicit(&g_real_dlsym, fn, memory_order_release);
    return (void *)fn;
}

void *tb_real_dlsym(void *handle, const char *name)
{
    pfn_dlsym fn = (pfn_dlsym)tb_get_real_dlsym();
    return fn ? fn(handle, name) : NULL;
}

/* ---- finding the real driver -------------------------------------------- */

static pthread_mutex_t g_real_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int g_real_done;
static void *g_real_handle;

static int is_self(void *addr)
{
    Dl_info self, other;
    if (!addr || !dladdr((void *)tb_real_dlsym, &self) || !dladdr(addr, &other))
        return 0;
    return self.dli_fbase == other.dli_fbase;
}

/* The handle the application itself dlopen()ed is the best evidence of which
 * libcuda it uses (it may sit outside the loader path, e.g. a CUDA forward
 * compatibility package), so the shim takes its own reference to that file. */
static void *handle_from_hint(void *hint)
{
    if (!hint)
        return NULL;
    void *probe = tb_real_dlsym(hint, "cuGetProcAddress");
    if (!probe)
        probe = tb_real_dlsym(hint, "cuInit");
    Dl_info info;
    if (!probe || is_self(probe) || !dladdr(probe, &info) || !info.dli_fname)
        return NULL;
    return dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
}

static void *open_real(void)
{
    const char *path = getenv("CUDA_TB_REAL_LIBCUDA");
    void *h = NULL;
    if (path && *path) {
        h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h)
            tb_log(1, "CUDA_TB_REAL_LIBCUDA=%s cannot be loaded: %s", path, dlerror());
        return h;
    }
    h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h)
        tb_log(1, "libcuda.so.1 cannot be loaded: %s", dlerror());
    if (h && is_self(tb_real_dlsym(h, "cuInit"))) {
        /* A directory on the loader path holds this shim under libcuda's name. */
        tb_log(1, "libcuda.so.1 resolves to the shim itself; set CUDA_TB_REAL_LIBCUDA");
        dlclose(h);
        h = NULL;
    }
    return h;
}

static void *resolve(void *h, const char *name)
{
    void *p = tb_real_dlsym(h, name);
    return is_self(p) ? NULL : p;
}

static void resolve_all(void *hint)
{
    void *h = NULL;
    const char *env = getenv("CUDA_TB_REAL_LIBCUDA");
    if (!(env && *env))
        h = handle_from_hint(hint);
    if (!h)
        h = open_real();
    g_real_handle = h; /* held for the life of the process */
    if (!h) {
        g_tb.real_missing = 1;
        tb_log(1, "no real CUDA driver: calls through the shim return CUDA_ERROR_NOT_INITIALIZED");
        return;
    }
    struct link_map *lm = NULL;
    if (dlinfo(h, RTLD_DI_LINKMAP, &lm) == 0 && lm && lm->l_name)
        snprintf(g_tb.real_path, sizeof g_tb.real_path, "%s", lm->l_name);
    for (int i = 0; i < H_COUNT; i++)
        atomic_store_explicit(&g_hooks[i].real, resolve(h, g_hooks[i].name),
                              memory_order_release);

    struct tb_real_helpers *x = &g_tb.helpers;
    x->ctx_get_device = (pfn_cuCtxGetDevice)resolve(h, "cuCtxGetDevice");
    x->device_get_attribute = (pfn_cuDeviceGetAttribute)resolve(h, "cuDeviceGetAttribute");
    x->stream_is_capturing = (pfn_cuStreamIsCapturing)resolve(h, "cuStreamIsCapturing");
    x->stream_is_capturing_ptsz =
        (pfn_cuStreamIsCapturing)resolve(h, "cuStreamIsCapturing_ptsz");
    x->graph_get_nodes = (pfn_cuGraphGetNodes)resolve(h, "cuGraphGetNodes");
    x->graph_node_get_type = (pfn_cuGraphNodeGetType)resolve(h, "cuGraphNodeGetType");
    x->kernel_node_get_params =
        (pfn_cuGraphKernelNodeGetParams)resolve(h, "cuGraphKernelNodeGetParams_v2");
    if (!x->kernel_node_get_params)
        x->kernel_node_get_params =
            (pfn_cuGraphKernelNodeGetParams)resolve(h, "cuGraphKernelNodeGetParams");
    x->child_graph_get_graph =
        (pfn_cuGraphChildGraphNodeGetGraph)resolve(h, "cuGraphChildGraphNodeGetGraph");
    tb_log(2, "real driver: %s", g_tb.real_path[0] ? g_tb.real_path : "(unnamed)");
}

/* Returns 1 when a real driver is available. Safe to call from any hook. */
int tb_ensure_real(void *hint_handle)
{
    if (TB_UNLIKELY(!atomic_load_explicit(&g_real_done, memory_order_acquire))) {
        pthread_mutex_lock(&g_real_mu);
        if (!atomic_load_explicit(&g_real_done, memory_order_relaxed)) {
            resolve_all(hint_handle);
            atomic_store_explicit(&g_real_done, 1, memory_order_release);
        }
        pthread_mutex_unlock(&g_real_mu);
    }
    tb_control_maybe_start();
    return !g_tb.real_missing;
}

/* What a wrapper returns when it has no real function to call: no driver at
 * all, or a driver that lacks this entry point. */
static CUresult missing(void)
{
    return g_tb.real_missing ? CUDA_ERROR_NOT_INITIALIZED : CUDA_ERROR_NOT_FOUND;
}

/* ---- launch wrappers ------------------------------------------------------ */

static inline uint64_t grid_blocks(unsigned int x, unsigned int y, unsigned int z)
{
    return (uint64_t)x * (uint64_t)y * (uint64_t)z;
}

/* The real pointer is read after admission: the first launch initialises the
 * shim (and resolves the driver) inside tb_admit. */
static inline CUresult do_launch(_Atomic(void *) *slot, int ptsz, CUfunction f, unsigned int gx,
                                 unsigned int gy, unsigned int gz, unsigned int bx,
                                 unsigned int by, unsigned int bz, unsigned int shmem, CUstream s,
                                 void **params, void **extra)
{
    tb_admit(grid_blocks(gx, gy, gz), s, ptsz);
    pfn_cuLaunchKernel real = (pfn_cuLaunchKernel)atomic_load_explicit(slot, memory_order_relaxed);
    if (TB_UNLIKELY(!real))
        return missing();
    return real(f, gx, gy, gz, bx, by, bz, shmem, s, params, extra);
}

static inline CUresult do_launch_ex(_Atomic(void *) *slot, int ptsz, const CUlaunchConfig *cfg,
                                    CUfunction f, void **params, void **extra)
{
    if (cfg)
        tb_admit(grid_blocks(cfg->gridDimX, cfg->gridDimY, cfg->gridDimZ), cfg->hStream, ptsz);
    pfn_cuLaunchKernelEx real =
        (pfn_cuLaunchKernelEx)atomic_load_explicit(slot, memory_order_relaxed);
    if (TB_UNLIKELY(!real))
        return missing();
    return real(cfg, f, params, extra);
}

static inline CUresult do_coop(_Atomic(void *) *slot, int ptsz, CUfunction f, unsigned int gx,
                               unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by,
                               unsigned int bz, unsigned int shmem, CUstream s, void **params)
{
    tb_admit(grid_blocks(gx, gy, gz), s, ptsz);
    pfn_cuLaunchCooperativeKernel real =
        (pfn_cuLaunchCooperativeKernel)atomic_load_explicit(slot, memory_order_relaxed);
    if (TB_UNLIKELY(!real))
        return missing();
    return real(f, gx, gy, gz, bx, by, bz, shmem, s, params);
}

static inline CUresult do_graph_launch(_Atomic(void *) *slot, int ptsz, CUgraphExec exec,
                                       CUstream s)
{
    if (TB_UNLIKELY(atomic_load_explicit(&g_tb.mode, memory_order_acquire) == TB_MODE_UNINIT))
        tb_first_launch_init(); /* the cost of an unknown graph needs B_W */
    int known = 0;
    uint64_t cost = tb_graph_blocks_lookup(exec, &known);
    atomic_fetch_add_explicit(&g_tb.graph_launches, 1, memory_order_relaxed);
    if (!known)
        atomic_fetch_add_explicit(&g_tb.graph_unknown_launches, 1, memory_order_relaxed);
    tb_admit(cost, s, ptsz);
    pfn_cuGraphLaunch real = (pfn_cuGraphLaunch)atomic_load_explicit(slot, memory_order_relaxed);
    if (TB_UNLIKELY(!real))
        return missing();
    return real(exec, s);
}


TB_EXPORT CUresult cuLaunchKernel(LAUNCH_ARGS)
{
    return do_launch(&g_hooks[H_cuLaunchKernel].real, 0, f, gx, gy, gz, bx, by, bz, shmem, s,
                     params, extra);
}

TB_EXPORT CUresult cuLaunchKernel_ptsz(LAUNCH_ARGS)
{
    return do_launch(&g_hooks[H_cuLaunchKernel_ptsz].real, 1, f, gx, gy, gz, bx, by, bz, shmem, s,
                     params, extra);
}

TB_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *cfg, CUfunction f, void **params,
                                    void **extra)
{
    return do_launch_ex(&g_hooks[H_cuLaunchKernelEx].real, 0, cfg, f, params, extra);
}

TB_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *cfg, CUfunction f, void **params,
                                         void **extra)
{
    return do_launch_ex(&g_hooks[H_cuLaunchKernelEx_ptsz].real, 1, cfg, f, params, extra);
}

TB_EXPORT CUresult cuLaunchCooperativeKernel(COOP_ARGS)
{
    return do_coop(&g_hooks[H_cuLaunchCooperativeKernel].real, 0, f, gx, gy, gz, bx, by, bz,
                   shmem, s, params);
}

TB_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(COOP_ARGS)
{
    return do_coop(&g_hooks[H_cuLaunchCooperativeKernel_ptsz].real, 1, f, gx, gy, gz, bx, by, bz,
                   shmem, s, params);
}

TB_EXPORT CUresult cuGraphLaunch(CUgraphExec exec, CUstream s)
{
    return do_graph_launch(&g_hooks[H_cuGraphLaunch].real, 0, exec, s);
}

TB_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec exec, CUstream s)
{
    return do_graph_launch(&g_hooks[H_cuGraphLaunch_ptsz].real, 1, exec, s);
}

/* ---- graph bookkeeping wrappers --------------------------------------------- */

static void after_instantiate(CUresult r, CUgraphExec *ph, CUgraph g)
{
    if (r == CUDA_SUCCESS && ph && *ph)
        tb_graph_register(*ph, g);
}

static CUresult instantiate_5(int h, CUgraphExec *ph, CUgraph g, CUgraphNode *err_node,
                              char *log, size_t log_size)
{
    tb_ensure_real(NULL);
    pfn_cuGraphInstantiate_v2 real = (pfn_cuGraphInstantiate_v2)real_of(h);
    if (!real)
        return missing();
    CUresult r = real(ph, g, err_node, log, log_size);
    after_instantiate(r, ph, g);
    return r;
}

TB_EXPORT CUresult cuGraphInstantiate(CUgraphExec *ph, CUgraph g, CUgraphNode *err_node,
                                      char *log, size_t log_size)
{
    return instantiate_5(H_cuGraphInstantiate, ph, g, err_node, log, log_size);
}

TB_EXPORT CUresult cuGraphInstantiate_v2(CUgraphExec *ph, CUgraph g, CUgraphNode *err_node,
                                         char *log, size_t log_size)
{
    return instantiate_5(H_cuGraphInstantiate_v2, ph, g, err_node, log, log_size);
}

TB_EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec *ph, CUgraph g,
                                               unsigned long long flags)
{
    tb_ensure_real(NULL);
    pfn_cuGraphInstantiateWithFlags real =
        (pfn_cuGraphInstantiateWithFlags)real_of(H_cuGraphInstantiateWithFlags);
    if (!real)
        return missing();
    CUresult r = real(ph, g, flags);
    after_instantiate(r, ph, g);
    return r;
}

static CUresult instantiate_params(int h, CUgraphExec *ph, CUgraph g, void *params)
{
    tb_ensure_real(NULL);
    pfn_cuGraphInstantiateWithParams real = (pfn_cuGraphInstantiateWithParams)real_of(h);
    if (!real)
        return missing();
    CUresult r = real(ph, g, params);
    after_instantiate(r, ph, g);
    return r;
}

TB_EXPORT CUresult cuGraphInstantiateWithParams(CUgraphExec *ph, CUgraph g, void *params)
{
    return instantiate_params(H_cuGraphInstantiateWithParams, ph, g, params);
}

TB_EXPORT CUresult cuGraphInstantiateWithParams_ptsz(CUgraphExec *ph, CUgraph g, void *params)
{
    return instantiate_params(H_cuGraphInstantiateWithParams_ptsz, ph, g, params);
}

TB_EXPORT CUresult cuGraphExecDestroy(CUgraphExec exec)
{
    tb_ensure_real(NULL);
    pfn_cuGraphExecDestroy real = (pfn_cuGraphExecDestroy)real_of(H_cuGraphExecDestroy);
    if (!real)
        return missing();
    tb_graph_forget(exec);
    return real(exec);
}

TB_EXPORT CUresult cuInit(unsigned int flags)
{
    tb_ensure_real(NULL);
    pfn_cuInit real = (pfn_cuInit)real_of(H_cuInit);
    if (!real)
        return missing();
    return real(flags);
}

/* ---- spare wrappers for entry points only cuGetProcAddress knows ------------ */

/* A driver may hand out pointers that are not exported under any name. Each
 * family has a few pre-built wrappers bound to such pointers on first sight. */
#define TB_DYN_SLOTS 4
static _Atomic(void *) g_dyn_real[FAM_DYN_COUNT][TB_DYN_SLOTS];
static int g_dyn_ptsz[FAM_DYN_COUNT][TB_DYN_SLOTS];

static CUresult gpa_common(_Atomic(void *) *slot, int v2, const char *symbol, void **pfn,
                           int version, cuuint64_t flags, int *status);

#define DYN_WRAPPERS(i)                                                                         \
    static CUresult dyn_launch_##i(LAUNCH_ARGS)                                                  \
    {                                                                                           \
        return do_launch(&g_dyn_real[FAM_LAUNCH][i], g_dyn_ptsz[FAM_LAUNCH][i], f, gx, gy, gz,  \
                         bx, by, bz, shmem, s, params, extra);                                  \
    }                                                                                           \
    static CUresult dyn_launch_ex_##i(const CUlaunchConfig *cfg, CUfunction f, void **params,   \
                                      void **extra)                                             \
    {                                                                                           \
        return do_launch_ex(&g_dyn_real[FAM_LAUNCH_EX][i], g_dyn_ptsz[FAM_LAUNCH_EX][i], cfg, f, \
                            params, extra);                                                     \
    }                                                                                           \
    static CUresult dyn_coop_##i(COOP_ARGS)                                                      \
    {                                                                                           \
        return do_coop(&g_dyn_real[FAM_COOP][i], g_dyn_ptsz[FAM_COOP][i], f, gx, gy, gz, bx, by, \
                       bz, shmem, s, params);                                                   \
    }                                                                                           \
    static CUresult dyn_graph_launch_##i(CUgraphExec exec, CUstream s)                           \
    {                                                                                           \
        return do_graph_launch(&g_dyn_real[FAM_GRAPH_LAUNCH][i],                                 \
                               g_dyn_ptsz[FAM_GRAPH_LAUNCH][i], exec, s);                       \
    }                                                                                           \
    static CUresult dyn_gpa1_##i(const char *symbol, void **pfn, int version, cuuint64_t flags) \
    {                                                                                           \
        return gpa_common(&g_dyn_real[FAM_GPA1][i], 0, symbol, pfn, version, flags, NULL);     \
    }                                                                                           \
    static CUresult dyn_gpa2_##i(const char *symbol, void **pfn, int version, cuuint64_t flags, \
                                 int *status)                                                   \
    {                                                                                           \
        return gpa_common(&g_dyn_real[FAM_GPA2][i], 1, symbol, pfn, version, flags, status);   \
    }

DYN_WRAPPERS(0)
DYN_WRAPPERS(1)
DYN_WRAPPERS(2)
DYN_WRAPPERS(3)

#define DYN_ROW(prefix) {(void *)prefix##0, (void *)prefix##1, (void *)prefix##2, (void *)prefix##3}
static void *const g_dyn_wrappers[FAM_DYN_COUNT][TB_DYN_SLOTS] = {
    [FAM_LAUNCH] = DYN_ROW(dyn_launch_),
    [FAM_LAUNCH_EX] = DYN_ROW(dyn_launch_ex_),
    [FAM_COOP] = DYN_ROW(dyn_coop_),
    [FAM_GRAPH_LAUNCH] = DYN_ROW(dyn_graph_launch_),
    [FAM_GPA1] = DYN_ROW(dyn_gpa1_),
    [FAM_GPA2] = DYN_ROW(dyn_gpa2_),
};
#undef DYN_ROW

static pthread_mutex_t g_dyn_mu = PTHREAD_MUTEX_INITIALIZER;

/* Rare (once per distinct pointer), so a mutex keeps pointer and flag paired. */
static void *dyn_bind(int fam, void *real, int ptsz)
{
    void *w = NULL;
    pthread_mutex_lock(&g_dyn_mu);
    for (int i = 0; i < TB_DYN_SLOTS && !w; i++) {
        void *cur = atomic_load_explicit(&g_dyn_real[fam][i], memory_order_relaxed);
        if (cur == NULL) {
            g_dyn_ptsz[fam][i] = ptsz;
            atomic_store_explicit(&g_dyn_real[fam][i], real, memory_order_release);
            cur = real;
        }
        if (cur == real)
            w = g_dyn_wrappers[fam][i];
    }
    pthread_mutex_unlock(&g_dyn_mu);
    return w;
}

/* Name as the runtime asks for it ("cuLaunchKernel") or with a suffix
 * ("cuLaunchKernel_ptsz"); "cuLaunchKernelEx" is not a "cuLaunchKernel". */
static int base_is(const char *symbol, const char *base)
{
    size_t n = strlen(base);
    return strncmp(symbol, base, n) == 0 && (symbol[n] == '\0' || symbol[n] == '_');
}

static int family_of(const char *symbol, int version)
{
    if (base_is(symbol, "cuLaunchKernel"))
        return FAM_LAUNCH;
    if (base_is(symbol, "cuLaunchKernelEx"))
        return FAM_LAUNCH_EX;
    if (base_is(symbol, "cuLaunchCooperativeKernel"))
        return FAM_COOP;
    if (base_is(symbol, "cuGraphLaunch"))
        return FAM_GRAPH_LAUNCH;
    if (strcmp(symbol, "cuGetProcAddress") == 0)
        return version >= 12000 ? FAM_GPA2 : FAM_GPA1; /* versioned in CUDA 12.0 */
    if (strcmp(symbol, "cuGetProcAddress_v2") == 0)
        return FAM_GPA2;
    if (base_is(symbol, "cuGraphInstantiate") || base_is(symbol, "cuGraphInstantiateWithFlags") ||
        base_is(symbol, "cuGraphInstantiateWithParams"))
        return FAM_INSTANTIATE;
    if (base_is(symbol, "cuGraphExecDestroy"))
        return FAM_EXEC_DESTROY;
    if (base_is(symbol, "cuInit"))
        return FAM_INIT;
    return FAM_NONE;
}

/* Swap a pointer the real driver returned for the matching wrapper. The
 * pointer itself identifies the function (and so its ABI) when it is one of
 * the exported ones, whatever name, version or flags the caller used. */
static void *wrap_lookup(const char *symbol, void *real, int version, cuuint64_t flags)
{
    /* A driver whose own references to its exports go through the GOT hands
     * out the shim's wrappers already (interposition); never wrap twice. */
    if (is_self(real))
        return real;
    for (int i = 0; i < H_COUNT; i++)
        if (real_of(i) == real)
            return g_hooks[i].wrapper;
    int fam = family_of(symbol, version);
    if (fam == FAM_NONE)
        return real;
    if (fam < FAM_DYN_COUNT) {
        void *w = dyn_bind(fam, real, (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0);
        if (w)
            return w;
    }
    if (atomic_fetch_add(&g_tb.unwrapped_lookups, 1) == 0)
        tb_log(1, "cuGetProcAddress(%s) returned a private entry point the shim cannot wrap;"
                  " its launches are not throttled", symbol);
    return real;
}

/* The real pointer is read only after tb_ensure_real: the runtime's first
 * query is usually the shim's first contact with the driver. */
static CUresult gpa_common(_Atomic(void *) *slot, int v2, const char *symbol, void **pfn,
                           int version, cuuint64_t flags, int *status)
{
    tb_ensure_real(NULL);
    void *real = atomic_load_explicit(slot, memory_order_acquire);
    if (!real) {
        if (pfn)
            *pfn = NULL;
        if (status)
            *status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
        return missing();
    }
    CUresult r = v2 ? ((pfn_cuGetProcAddress_v2)real)(symbol, pfn, version, flags, status)
                    : ((pfn_cuGetProcAddress)real)(symbol, pfn, version, flags);
    if (r == CUDA_SUCCESS && symbol && pfn && *pfn)
        *pfn = wrap_lookup(symbol, *pfn, version, flags);
    return r;
}

TB_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int version,
                                    cuuint64_t flags)
{
    return gpa_common(&g_hooks[H_cuGetProcAddress].real, 0, symbol, pfn, version, flags, NULL);
}

TB_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version,
                                       cuuint64_t flags, int *status)
{
    return gpa_common(&g_hooks[H_cuGetProcAddress_v2].real, 1, symbol, pfn, version, flags, status);
}

/* ---- dlsym interposition ---------------------------------------------------- */

/* Decides whether dlsym(handle, symbol) is answered with a wrapper. NULL means
 * "not ours": the trampoline then jumps to the real dlsym with the caller's
 * return address intact, which dlsym needs for RTLD_NEXT and for the caller's
 * local scope under RTLD_DEFAULT. Those two pseudo-handles are always passed
 * through: RTLD_DEFAULT already finds the shim's exported symbols, and
 * RTLD_NEXT is how another interposer reaches the next definition. */
__attribute__((used, visibility("hidden"))) void *tb_dlsym_lookup(void *handle, const char *symbol)
{
    if (!symbol || symbol[0] != 'c' || symbol[1] != 'u')
        return NULL;
    if (handle == RTLD_NEXT || handle == RTLD_DEFAULT)
        return NULL;
    int i = hook_index(symbol);
    if (i < 0)
        return NULL;
    /* Only answer for names the handle really has, exactly like dlsym. */
    if (!tb_real_dlsym(handle, symbol))
        return NULL;
    tb_ensure_real(handle);
    return g_hooks[i].wrapper;
}

/* fork(): see util.c. Both locks guard rare, short sections. */
void tb_hooks_atfork_prepare(void)
{
    pthread_mutex_lock(&g_real_mu);
    pthread_mutex_lock(&g_dyn_mu);
}

void tb_hooks_atfork_parent(void)
{
    pthread_mutex_unlock(&g_dyn_mu);
    pthread_mutex_unlock(&g_real_mu);
}

void tb_hooks_atfork_child(void)
{
    pthread_mutex_init(&g_dyn_mu, NULL);
    pthread_mutex_init(&g_real_mu, NULL);
}

#if defined(__x86_64__)
/* dlsym(handle, symbol): ask tb_dlsym_lookup; if it declines, tail-jump to the
 * real dlsym so that glibc sees the original caller's return address. */
__asm__(".text\n"
        ".globl dlsym\n"
        ".type dlsym, @function\n"
        ".p2align 4\n"
        "dlsym:\n"
        "  .cfi_startproc\n"
        "  .byte 0xf3, 0x0f, 0x1e, 0xfa\n" /* endbr64 */
        "  pushq %rdi\n"
        "  .cfi_adjust_cfa_offset 8\n"
        "  pushq %rsi\n"
        "  .cfi_adjust_cfa_offset 8\n"
        "  subq $8, %rsp\n"
        "  .cfi_adjust_cfa_offset 8\n"
        "  call tb_dlsym_lookup\n"
        "  testq %rax, %rax\n"
        "  jnz 1f\n"
        "  call tb_get_real_dlsym\n"
        "  testq %rax, %rax\n"
        "  jz 1f\n"
        "  movq %rax, %r11\n"
        "  movq 8(%rsp), %rsi\n"
        "  movq 16(%rsp), %rdi\n"
        "  .cfi_remember_state\n"
        "  addq $24, %rsp\n"
        "  .cfi_adjust_cfa_offset -24\n"
        "  jmp *%r11\n"
        "  .cfi_restore_state\n"
        "1:\n"
        "  addq $24, %rsp\n"
        "  .cfi_adjust_cfa_offset -24\n"
        "  ret\n"
        "  .cfi_endproc\n"
        ".size dlsym, .-dlsym\n");
#else
#warning "cuda_tb: dlsym interposition is only implemented for x86-64; see docs/shim.md"
#endif
