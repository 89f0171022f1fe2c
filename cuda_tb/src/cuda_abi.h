/*
 * The few CUDA driver ABI types shared by the shim and its test fakes, declared by hand
 * so that nothing here needs the CUDA toolkit. Every layout is the documented driver
 * ABI (cuda.h, stable across CUDA 11.x - 13.x).
 */
#ifndef CUDA_TB_ABI_H
#define CUDA_TB_ABI_H

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long cuuint64_t;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef struct CUgraph_st *CUgraph;
typedef struct CUgraphNode_st *CUgraphNode;
typedef struct CUgraphExec_st *CUgraphExec;

typedef struct {
    unsigned int gridDimX, gridDimY, gridDimZ;
    unsigned int blockDimX, blockDimY, blockDimZ;
    unsigned int sharedMemBytes;
    CUstream hStream;
    void *attrs;
    unsigned int numAttrs;
} CUlaunchConfig;

/* CUDA_KERNEL_NODE_PARAMS_v2 layout. */
typedef struct {
    CUfunction func;
    unsigned int gridDimX, gridDimY, gridDimZ;
    unsigned int blockDimX, blockDimY, blockDimZ;
    unsigned int sharedMemBytes;
    void **kernelParams;
    void **extra;
    void *kern;
    void *ctx;
} CUDA_KERNEL_NODE_PARAMS_v2;

/* Parameter lists of cuLaunchKernel and cuLaunchCooperativeKernel (and their _ptsz
 * forms), named so that definitions can use f, gx..gz, bx..bz, shmem, s, params, extra. */
#define LAUNCH_ARGS                                                                     \
    CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,    \
        unsigned int by, unsigned int bz, unsigned int shmem, CUstream s, void **params, \
        void **extra
#define COOP_ARGS                                                                       \
    CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,    \
        unsigned int by, unsigned int bz, unsigned int shmem, CUstream s, void **params

#endif
