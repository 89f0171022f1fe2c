/*
 * cuda_tb: a CUDA driver token-bucket shim loaded with LD_PRELOAD.
 *
 * Internal declarations shared by the shim's translation units. The few CUDA
 * driver types the shim touches are declared here by hand so that the shim
 * builds on machines without the CUDA toolkit; every layout below is the
 * documented driver ABI (cuda.h, stable across CUDA 11.x - 13.x).
 */
#ifndef CUDA_TB_H
#define CUDA_TB_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define TB_EXPORT __attribute__((visibility("default")))
#define TB_LIKELY(x) __builtin_expect(!!(x), 1)
#define TB_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* ---- driver ABI ------------------------------------------------------- */
#include "cuda_abi.h"

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_NOT_FOUND = 500,
};

enum { CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM = 1 << 1 };
enum { CU_GET_PROC_ADDRESS_SUCCESS = 0, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND = 1 };
enum { CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16,
       CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR = 106 };
enum { CU_STREAM_CAPTURE_STATUS_NONE = 0 };
enum { CU_GRAPH_NODE_TYPE_KERNEL = 0, CU_GRAPH_NODE_TYPE_GRAPH = 4 };

/* Special stream handles (cuda.h: CU_STREAM_LEGACY, CU_STREAM_PER_THREAD). */
#define TB_CU_STREAM_LEGACY ((CUstream)0x1)

/* Common prefix of CUDA_KERNEL_NODE_PARAMS (v1, v2 and v3): the grid sits at
 * the same offsets in every version, so the shim only reads this prefix out of
 * a buffer large enough for any version the driver may fill in. */
typedef struct {
    CUfunction func;
    unsigned int gridDimX, gridDimY, gridDimZ;
} tb_kernel_node_prefix;

typedef CUresult (*pfn_cuInit)(unsigned int);
typedef CUresult (*pfn_cuGetProcAddress)(const char *, void **, int, cuuint64_t);
typedef CUresult (*pfn_cuGetProcAddress_v2)(const char *, void **, int, cuuint64_t, int *);
typedef CUresult (*pfn_cuLaunchKernel)(CUfunction, unsigned int, unsigned int, unsigned int,
                                       unsigned int, unsigned int, unsigned int, unsigned int,
                                       CUstream, void **, void **);
typedef CUresult (*pfn_cuLaunchKernelEx)(const CUlaunchConfig *, CUfunction, void **, void **);
typedef CUresult (*pfn_cuLaunchCooperativeKernel)(CUfunction, unsigned int, unsigned int,
                                                  unsigned int, unsigned int, unsigned int,
                                                  unsigned int, unsigned int, CUstream, void **);
typedef CUresult (*pfn_cuGraphLaunch)(CUgraphExec, CUstream);
typedef CUresult (*pfn_cuGraphInstantiate_v2)(CUgraphExec *, CUgraph, CUgraphNode *, char *,
                                              size_t);
typedef CUresult (*pfn_cuGraphInstantiateWithFlags)(CUgraphExec *, CUgraph, unsigned long long);
typedef CUresult (*pfn_cuGraphInstantiateWithParams)(CUgraphExec *, CUgraph, void *);
typedef CUresult (*pfn_cuGraphExecDestroy)(CUgraphExec);
typedef CUresult (*pfn_cuCtxGetDevice)(CUdevice *);
typedef CUresult (*pfn_cuDeviceGetAttribute)(int *, int, CUdevice);
typedef CUresult (*pfn_cuStreamIsCapturing)(CUstream, int *);
typedef CUresult (*pfn_cuGraphGetNodes)(CUgraph, CUgraphNode *, size_t *);
typedef CUresult (*pfn_cuGraphNodeGetType)(CUgraphNode, int *);
typedef CUresult (*pfn_cuGraphKernelNodeGetParams)(CUgraphNode, void *);
typedef CUresult (*pfn_cuGraphChildGraphNodeGetGraph)(CUgraphNode, CUgraph *);

/* ---- shim state --------------------------------------------------------- */
#define TB_WINDOW_NS 10000000ULL /* docs/algorithm.md section 8: W = 10 ms */
#define TB_MIN_RATE 0.1
#define TB_FALLBACK_BLOCKS_PER_WINDOW 16384ULL
#define TB_DEFAULT_WAVES_PER_WINDOW 10ULL

enum tb_mode { TB_MODE_UNINIT = 0, TB_MODE_FAST = 1, TB_MODE_THROTTLE = 2 };

enum tb_calibration { TB_CAL_NONE = 0, TB_CAL_ENV, TB_CAL_DEVICE, TB_CAL_FALLBACK, TB_CAL_SOCKET };

/* Resolved entry points of the real driver that the shim calls itself (not
 * the wrapped ones, which live in the hook table of hooks.c). */
struct tb_real_helpers {
    pfn_cuCtxGetDevice ctx_get_device;
    pfn_cuDeviceGetAttribute device_get_attribute;
    pfn_cuStreamIsCapturing stream_is_capturing;
    pfn_cuStreamIsCapturing stream_is_capturing_ptsz;
    pfn_cuGraphGetNodes graph_get_nodes;
    pfn_cuGraphNodeGetType graph_node_get_type;
    pfn_cuGraphKernelNodeGetParams kernel_node_get_params;
    pfn_cuGraphChildGraphNodeGetGraph child_graph_get_graph;
};

struct tb_state {
    /* Hot: read on every launch. */
    _Atomic int mode;
    _Atomic uint64_t launches;
    _Atomic uint64_t blocks;

    /* Control values, written by the socket thread, read by launchers. */
    _Atomic uint64_t rate_bits;        /* double, bit-cast, in [0.1, 1] */
    _Atomic uint64_t blocks_per_window; /* B_W = bucket capacity */
    _Atomic uint64_t graph_tokens;     /* cost of a graph of unknown size */
    _Atomic int calibration;

    /* Telemetry. */
    _Atomic uint64_t throttled_launches;
    _Atomic uint64_t wait_ns;
    _Atomic uint64_t graph_launches;
    _Atomic uint64_t graph_unknown_launches;
    _Atomic uint64_t captured_launches;
    _Atomic uint64_t unwrapped_lookups;

    uint64_t start_ns; /* CLOCK_MONOTONIC at load (or fork) */
    uint64_t waves_per_window;
    int real_missing;
    char real_path[512];
    struct tb_real_helpers helpers;
};

extern struct tb_state g_tb;

/* util.c */
uint64_t tb_now_ns(void);
double tb_rate(void);
void tb_set_rate(double r);
void tb_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
extern int g_tb_log_level;

/* hooks.c */
int tb_ensure_real(void *hint_handle);
void *tb_real_dlsym(void *handle, const char *name);
void tb_first_launch_init(void);
void tb_hooks_atfork_prepare(void);
void tb_hooks_atfork_parent(void);
void tb_hooks_atfork_child(void);

/* bucket.c */
void tb_bucket_init(void);
void tb_admit_slow(uint64_t blocks, CUstream stream, int ptsz);
void tb_apply_rate(double r);
double tb_bucket_tokens_now(void);
void tb_bucket_atfork_prepare(void);
void tb_bucket_atfork_parent(void);
void tb_bucket_atfork_child(void);
uint64_t tb_graph_blocks_lookup(CUgraphExec exec, int *known);
void tb_graph_register(CUgraphExec exec, CUgraph graph);
void tb_graph_forget(CUgraphExec exec);

/* Fast-path admission: the only work at r = 1 is one acquire load of the mode
 * and two relaxed counter increments (the counters feed GET stats). */
static inline void tb_admit(uint64_t blocks, CUstream stream, int ptsz)
{
    if (TB_LIKELY(atomic_load_explicit(&g_tb.mode, memory_order_acquire) == TB_MODE_FAST)) {
        atomic_fetch_add_explicit(&g_tb.launches, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&g_tb.blocks, blocks, memory_order_relaxed);
        return;
    }
    tb_admit_slow(blocks, stream, ptsz);
}

/* control.c */
void tb_control_init(void);
void tb_control_maybe_start(void);
void tb_control_atfork_prepare(void);
void tb_control_atfork_parent(void);
void tb_control_atfork_child(void);

#endif
