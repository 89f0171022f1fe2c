/*
 * tb_launcher: drives kernel launches through the driver API the way the CUDA
 * runtime does (dlopen("libcuda.so.1"), dlsym("cuGetProcAddress_v2"), then
 * every entry point through cuGetProcAddress) and reports the achieved block
 * throughput as one JSON line per process. Used by the cuda_tb tests and
 * benchmark against the fake libcuda; it works against a real driver too,
 * though its kernel handle is a dummy, so real launches fail.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <getopt.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../cuda_abi.h"


typedef CUDA_KERNEL_NODE_PARAMS_v2 kernel_node_params;

typedef CUresult (*gpa2_t)(const char *, void **, int, cuuint64_t, int *);
typedef CUresult (*gpa1_t)(const char *, void **, int, cuuint64_t);
typedef CUresult (*init_t)(unsigned int);
typedef CUresult (*launch_t)(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int,
                             unsigned int, unsigned int, unsigned int, CUstream, void **, void **);
typedef CUresult (*launch_ex_t)(const CUlaunchConfig *, CUfunction, void **, void **);
typedef CUresult (*coop_t)(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int,
                           unsigned int, unsigned int, unsigned int, CUstream, void **);
typedef CUresult (*graph_launch_t)(CUgraphExec, CUstream);
typedef CUresult (*graph_create_t)(CUgraph *, unsigned int);
typedef CUresult (*add_kernel_t)(CUgraphNode *, CUgraph, const CUgraphNode *, size_t,
                                 const kernel_node_params *);
typedef CUresult (*add_child_t)(CUgraphNode *, CUgraph, const CUgraphNode *, size_t, CUgraph);
typedef CUresult (*inst_flags_t)(CUgraphExec *, CUgraph, unsigned long long);
typedef CUresult (*inst_v2_t)(CUgraphExec *, CUgraph, CUgraphNode *, char *, size_t);
typedef void (*counters_t)(uint64_t *, uint64_t *);
typedef uint64_t (*entry_ns_t)(void);

enum api { API_KERNEL, API_EX, API_COOP, API_GRAPH };
enum resolve { RES_GPA2, RES_GPA1, RES_DLSYM, RES_DEFAULT };

static struct {
    enum api api;
    enum resolve resolve;
    int ptsz, threads, capture, do_fork, rtld_check, stats;
    unsigned int blocks, graph_kernels;
    double duration, warmup;
    long launches;
    int bench_batches;
    long bench_size;
    const char *timeline, *lib;
} opt = {API_KERNEL, RES_GPA2, 0, 1, 0, 0, 0, 0, 100, 4, 1.0, 0.0, 0, 0, 0, NULL, "libcuda.so.1"};

static void *g_handle;
static gpa2_t g_gpa2;
static gpa1_t g_gpa1;
static void *g_launch_fn;
static CUgraphExec g_exec;
static CUresult g_first_error;
static entry_ns_t g_entry_ns; /* the fake's fakecuda_last_entry_ns, if present */
static pthread_mutex_t g_err_mu = PTHREAD_MUTEX_INITIALIZER;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void note_error(CUresult r)
{
    pthread_mutex_lock(&g_err_mu);
    if (!g_first_error)
        g_first_error = r;
    pthread_mutex_unlock(&g_err_mu);
}

static void *get(const char *base, const char *exported)
{
    void *fn = NULL;
    int status = 0;
    int version = opt.resolve == RES_GPA1 ? 11080 : 12040;
    cuuint64_t flags = opt.ptsz ? 2 : 0;
    CUresult r = 0;
    switch (opt.resolve) {
    case RES_GPA2:
        r = g_gpa2(base, &fn, version, flags, &status);
        break;
    case RES_GPA1:
        r = g_gpa1(base, &fn, version, flags);
        break;
    case RES_DLSYM:
        fn = dlsym(g_handle, exported);
        break;
    case RES_DEFAULT:
        fn = dlsym(RTLD_DEFAULT, exported);
        break;
    }
    if (r)
        note_error(r);
    return fn;
}

static int resolve_all(void)
{
    if (opt.resolve != RES_DEFAULT) {
        g_handle = dlopen(opt.lib, RTLD_NOW | RTLD_LOCAL);
        if (!g_handle) {
            fprintf(stderr, "tb_launcher: dlopen(%s): %s\n", opt.lib, dlerror());
            return 0;
        }
        g_gpa2 = (gpa2_t)dlsym(g_handle, "cuGetProcAddress_v2");
        g_gpa1 = (gpa1_t)dlsym(g_handle, "cuGetProcAddress");
        if ((opt.resolve == RES_GPA2 && !g_gpa2) || (opt.resolve == RES_GPA1 && !g_gpa1)) {
            fprintf(stderr, "tb_launcher: no cuGetProcAddress in %s\n", opt.lib);
            return 0;
        }
        g_entry_ns = (entry_ns_t)dlsym(g_handle, "fakecuda_last_entry_ns");
    }
    init_t init = (init_t)get("cuInit", "cuInit");
    if (init) {
        CUresult r = init(0);
        if (r)
            note_error(r);
    }
    const char *sfx = opt.ptsz ? "_ptsz" : "";
    char name[64];
    switch (opt.api) {
    case API_KERNEL:
        snprintf(name, sizeof name, "cuLaunchKernel%s", sfx);
        g_launch_fn = get("cuLaunchKernel", name);
        break;
    case API_EX:
        snprintf(name, sizeof name, "cuLaunchKernelEx%s", sfx);
        g_launch_fn = get("cuLaunchKernelEx", name);
        break;
    case API_COOP:
        snprintf(name, sizeof name, "cuLaunchCooperativeKernel%s", sfx);
        g_launch_fn = get("cuLaunchCooperativeKernel", name);
        break;
    case API_GRAPH: {
        snprintf(name, sizeof name, "cuGraphLaunch%s", sfx);
        g_launch_fn = get("cuGraphLaunch", name);
        graph_create_t create = (graph_create_t)get("cuGraphCreate", "cuGraphCreate");
        add_kernel_t add = (add_kernel_t)get("cuGraphAddKernelNode", "cuGraphAddKernelNode_v2");
        add_child_t add_child =
            (add_child_t)get("cuGraphAddChildGraphNode", "cuGraphAddChildGraphNode");
        void *inst = get("cuGraphInstantiate", "cuGraphInstantiateWithFlags");
        if (!create || !add || !add_child || !inst)
            return g_launch_fn != NULL;
        /* K kernel nodes of --blocks each, plus a child graph holding one more:
         * the graph is worth (K + 1) * blocks. */
        CUgraph g = NULL, child = NULL;
        kernel_node_params p;
        memset(&p, 0, sizeof p);
        p.func = (CUfunction)&opt;
        p.gridDimX = opt.blocks;
        p.gridDimY = p.gridDimZ = 1;
        p.blockDimX = p.blockDimY = p.blockDimZ = 1;
        CUgraphNode node;
        create(&g, 0);
        create(&child, 0);
        for (unsigned int i = 0; i < opt.graph_kernels; i++)
            add(&node, g, NULL, 0, &p);
        add(&node, child, NULL, 0, &p);
        add_child(&node, g, NULL, 0, child);
        CUresult r = opt.resolve == RES_GPA1 || opt.resolve == RES_DLSYM
                         ? ((inst_v2_t)get("cuGraphInstantiate", "cuGraphInstantiate_v2"))(
                               &g_exec, g, NULL, NULL, 0)
                         : ((inst_flags_t)inst)(&g_exec, g, 0);
        if (r)
            note_error(r);
        break;
    }
    }
    if (!g_launch_fn)
        fprintf(stderr, "tb_launcher: launch entry point not found\n");
    return g_launch_fn != NULL;
}

static CUresult launch_once(CUstream s)
{
    CUfunction f = (CUfunction)&opt; /* any non-NULL handle: the fake only checks that */
    unsigned int b = opt.blocks;
    switch (opt.api) {
    case API_KERNEL:
        return ((launch_t)g_launch_fn)(f, b, 1, 1, 128, 1, 1, 0, s, NULL, NULL);
    case API_EX: {
        CUlaunchConfig c = {b, 1, 1, 128, 1, 1, 0, s, NULL, 0};
        return ((launch_ex_t)g_launch_fn)(&c, f, NULL, NULL);
    }
    case API_COOP:
        return ((coop_t)g_launch_fn)(f, b, 1, 1, 128, 1, 1, 0, s, NULL);
    case API_GRAPH:
        return ((graph_launch_t)g_launch_fn)(g_exec, s);
    }
    return 1;
}

/* Timeline row: return time, cumulative blocks, call time, and when the call
 * reached the fake driver (0 if unknown); the shim held the launch from the
 * call until it reached the driver. */
#define TIMELINE_COLS 4

struct worker {
    pthread_t tid;
    int index;
    uint64_t launches, blocks_measured, launches_measured;
    uint64_t t_begin, t_end;
    uint64_t *timeline;
    size_t timeline_len, timeline_cap;
};

static uint64_t blocks_per_launch(void)
{
    return opt.api == API_GRAPH ? (uint64_t)opt.blocks * (opt.graph_kernels + 1) : opt.blocks;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    CUstream s = opt.capture ? (CUstream)0xCA97 : NULL;
    uint64_t per = blocks_per_launch();
    uint64_t start = now_ns();
    uint64_t measure_from = start + (uint64_t)(opt.warmup * 1e9);
    uint64_t stop = measure_from + (uint64_t)(opt.duration * 1e9);
    w->t_begin = measure_from;
    for (;;) {
        if (opt.launches > 0 && (long)w->launches >= opt.launches)
            break;
        uint64_t t_call = w->timeline ? now_ns() : 0;
        CUresult r = launch_once(s);
        uint64_t t = now_ns();
        if (r)
            note_error(r);
        w->launches++;
        if (t >= measure_from) {
            w->launches_measured++;
            w->blocks_measured += per;
        }
        if (w->timeline && w->timeline_len + TIMELINE_COLS <= w->timeline_cap) {
            w->timeline[w->timeline_len++] = t;
            w->timeline[w->timeline_len++] = w->launches * per;
            w->timeline[w->timeline_len++] = t_call;
            w->timeline[w->timeline_len++] = g_entry_ns ? g_entry_ns() : 0;
        }
        if (opt.launches <= 0 && t >= stop)
            break;
    }
    w->t_end = now_ns();
    if (opt.launches > 0)
        w->t_begin = start;
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void run_bench(void)
{
    double *ns = calloc((size_t)opt.bench_batches, sizeof *ns);
    if (!ns)
        return;
    for (long i = 0; i < opt.bench_size / 10; i++) /* warm caches and lazy init */
        launch_once(NULL);
    for (int b = 0; b < opt.bench_batches; b++) {
        uint64_t t0 = now_ns();
        for (long i = 0; i < opt.bench_size; i++)
            launch_once(NULL);
        ns[b] = (double)(now_ns() - t0) / (double)opt.bench_size;
    }
    printf("{\"pid\":%d,\"bench_batches\":[", (int)getpid());
    for (int b = 0; b < opt.bench_batches; b++)
        printf("%s%.3f", b ? "," : "", ns[b]);
    qsort(ns, (size_t)opt.bench_batches, sizeof *ns, cmp_double);
    int n = opt.bench_batches;
    double median = n % 2 ? ns[n / 2] : (ns[n / 2 - 1] + ns[n / 2]) / 2;
    printf("],\"median_ns\":%.3f,\"status\":%d}\n", median, g_first_error);
    free(ns);
}

/* Asks this process's own shim for its statistics (GET stats over
 * CUDA_TB_SOCKET) so a test sees launcher and shim numbers from one moment.
 * Writes "null" when there is no shim or no answer within a second. */
static void shim_stats(char *out, size_t cap)
{
    snprintf(out, cap, "null");
    const char *t = getenv("CUDA_TB_SOCKET");
    if (!t || !*t)
        return;
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    size_t o = 0;
    for (const char *p = t; *p && o + 16 < sizeof addr.sun_path; p++) {
        if (p[0] == '%' && p[1] == 'p') {
            o += (size_t)snprintf(addr.sun_path + o, sizeof addr.sun_path - o, "%d",
                                  (int)getpid());
            p++;
        } else if (p[0] == '%' && p[1] == '%') {
            addr.sun_path[o++] = '%';
            p++;
        } else {
            addr.sun_path[o++] = *p;
        }
    }
    for (int attempt = 0; attempt < 100; attempt++) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0)
            return;
        struct timeval tv = {2, 0}; /* a listener that never answers must not hang us */
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) {
            const char *cmd = "GET stats\n";
            size_t got = 0;
            if (write(fd, cmd, strlen(cmd)) == (ssize_t)strlen(cmd)) {
                ssize_t r;
                while (got + 1 < cap && (r = read(fd, out + got, cap - 1 - got)) > 0) {
                    got += (size_t)r;
                    if (out[got - 1] == '\n')
                        break;
                }
            }
            close(fd);
            if (got > 0 && out[got - 1] == '\n') {
                out[got - 1] = '\0';
                return;
            }
            snprintf(out, cap, "null");
            return;
        }
        close(fd);
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
}

static void run_workers(void)
{
    struct worker *ws = calloc((size_t)opt.threads, sizeof *ws);
    if (!ws)
        return;
    if (opt.timeline) {
        ws[0].timeline_cap = 1u << 22;
        ws[0].timeline = malloc(ws[0].timeline_cap * sizeof(uint64_t));
        if (!ws[0].timeline)
            ws[0].timeline_cap = 0;
    }
    for (int i = 0; i < opt.threads; i++) {
        ws[i].index = i;
        pthread_create(&ws[i].tid, NULL, worker_main, &ws[i]);
    }
    uint64_t launches = 0, measured_launches = 0, measured_blocks = 0, t0 = UINT64_MAX, t1 = 0;
    for (int i = 0; i < opt.threads; i++) {
        pthread_join(ws[i].tid, NULL);
        launches += ws[i].launches;
        measured_launches += ws[i].launches_measured;
        measured_blocks += ws[i].blocks_measured;
        t0 = ws[i].t_begin < t0 ? ws[i].t_begin : t0;
        t1 = ws[i].t_end > t1 ? ws[i].t_end : t1;
    }
    double elapsed = t1 > t0 ? (double)(t1 - t0) / 1e9 : 0;
    uint64_t fl = 0, fb = 0;
    counters_t counters = g_handle ? (counters_t)dlsym(g_handle, "fakecuda_counters") : NULL;
    if (counters)
        counters(&fl, &fb);
    char stats[4096];
    if (opt.stats)
        shim_stats(stats, sizeof stats);
    else
        snprintf(stats, sizeof stats, "null");
    printf("{\"pid\":%d,\"launches\":%llu,\"measured_launches\":%llu,\"blocks\":%llu,"
           "\"blocks_per_launch\":%llu,\"elapsed_s\":%.6f,\"blocks_per_s\":%.1f,"
           "\"status\":%d,\"fake_launches\":%llu,\"fake_blocks\":%llu,\"shim\":%s}\n",
           (int)getpid(), (unsigned long long)launches, (unsigned long long)measured_launches,
           (unsigned long long)measured_blocks, (unsigned long long)blocks_per_launch(), elapsed,
           elapsed > 0 ? (double)measured_blocks / elapsed : 0.0, g_first_error,
           (unsigned long long)fl, (unsigned long long)fb, stats);
    fflush(stdout);
    if (opt.timeline && ws[0].timeline) {
        FILE *f = fopen(opt.timeline, "w");
        if (f) {
            const uint64_t *row = ws[0].timeline;
            for (size_t i = 0; i + TIMELINE_COLS <= ws[0].timeline_len; i += TIMELINE_COLS)
                fprintf(f, "%llu %llu %llu %llu\n", (unsigned long long)row[i],
                        (unsigned long long)row[i + 1], (unsigned long long)row[i + 2],
                        (unsigned long long)row[i + 3]);
            fclose(f);
        }
    }
    free(ws[0].timeline);
    free(ws);
}

/* Under the shim, dlsym(RTLD_NEXT, ...) from this executable must search the
 * objects after it (the preloaded shim first): proof that the shim's dlsym
 * passes the caller's identity through to glibc. */
static int rtld_next_check(void)
{
    void *h = dlopen(opt.lib, RTLD_NOW | RTLD_GLOBAL);
    void *next = dlsym(RTLD_NEXT, "cuLaunchKernel");
    void *dflt = dlsym(RTLD_DEFAULT, "cuLaunchKernel");
    Dl_info info;
    const char *owner = next && dladdr(next, &info) && info.dli_fname ? info.dli_fname : "";
    printf("{\"loaded\":%s,\"next_is_default\":%s,\"next_owner\":\"%s\"}\n", h ? "true" : "false",
           next && next == dflt ? "true" : "false", owner);
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: tb_launcher [--api kernel|ex|coop|graph] [--resolve gpa2|gpa|dlsym|default]\n"
            "  [--ptsz] [--blocks N] [--graph-kernels K] [--threads T] [--duration S]\n"
            "  [--warmup S] [--launches N] [--bench-batches B --bench-size N]\n"
            "  [--timeline FILE] [--capture] [--fork] [--rtld-next-check] [--lib PATH]\n"
            "  [--stats]\n");
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"api", required_argument, 0, 'a'},       {"resolve", required_argument, 0, 'r'},
        {"ptsz", no_argument, 0, 'p'},            {"blocks", required_argument, 0, 'b'},
        {"graph-kernels", required_argument, 0, 'k'},
        {"threads", required_argument, 0, 't'},   {"duration", required_argument, 0, 'd'},
        {"warmup", required_argument, 0, 'w'},    {"launches", required_argument, 0, 'n'},
        {"bench-batches", required_argument, 0, 'B'},
        {"bench-size", required_argument, 0, 'N'},
        {"timeline", required_argument, 0, 'T'},  {"capture", no_argument, 0, 'c'},
        {"fork", no_argument, 0, 'f'},            {"rtld-next-check", no_argument, 0, 'R'},
        {"lib", required_argument, 0, 'l'},       {"stats", no_argument, 0, 'S'},
        {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'a':
            opt.api = !strcmp(optarg, "ex")      ? API_EX
                      : !strcmp(optarg, "coop")  ? API_COOP
                      : !strcmp(optarg, "graph") ? API_GRAPH
                                                 : API_KERNEL;
            break;
        case 'r':
            opt.resolve = !strcmp(optarg, "gpa")       ? RES_GPA1
                          : !strcmp(optarg, "dlsym")   ? RES_DLSYM
                          : !strcmp(optarg, "default") ? RES_DEFAULT
                                                       : RES_GPA2;
            break;
        case 'p':
            opt.ptsz = 1;
            break;
        case 'b':
            opt.blocks = (unsigned int)strtoul(optarg, NULL, 10);
            break;
        case 'k':
            opt.graph_kernels = (unsigned int)strtoul(optarg, NULL, 10);
            break;
        case 't':
            opt.threads = atoi(optarg) > 0 ? atoi(optarg) : 1;
            break;
        case 'd':
            opt.duration = atof(optarg);
            break;
        case 'w':
            opt.warmup = atof(optarg);
            break;
        case 'n':
            opt.launches = atol(optarg);
            break;
        case 'B':
            opt.bench_batches = atoi(optarg);
            break;
        case 'N':
            opt.bench_size = atol(optarg);
            break;
        case 'T':
            opt.timeline = optarg;
            break;
        case 'c':
            opt.capture = 1;
            break;
        case 'f':
            opt.do_fork = 1;
            break;
        case 'R':
            opt.rtld_check = 1;
            break;
        case 'l':
            opt.lib = optarg;
            break;
        case 'S':
            opt.stats = 1;
            break;
        default:
            usage();
            return 2;
        }
    }
    if (opt.rtld_check)
        return rtld_next_check();
    if (!resolve_all()) {
        printf("{\"pid\":%d,\"launches\":0,\"status\":%d,\"resolved\":false}\n", (int)getpid(),
               g_first_error);
        return 0;
    }
    if (opt.bench_batches > 0 && opt.bench_size > 0) {
        run_bench();
        return 0;
    }
    pid_t child = opt.do_fork ? fork() : -1;
    run_workers();
    if (child == 0)
        exit(0); /* runs the shim's destructor, which removes the child's socket */
    if (child > 0)
        waitpid(child, NULL, 0);
    return 0;
}
