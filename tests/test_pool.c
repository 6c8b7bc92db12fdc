/* test_pool: the worker pool and its completion queue (appliance/app_pool.c). */
#include <CUnit/Basic.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "app_pool.h"
#include "fx_cunit.h"

typedef struct job {
    app_job base; /* first: the pool hands back app_job pointers */
    int id;
    atomic_int runs;
    int value;
} job;

static atomic_int g_running, g_max_running;

static void run(app_job *j)
{
    job *x = (job *)j;
    int now = atomic_fetch_add(&g_running, 1) + 1;
    int prev = atomic_load(&g_max_running);
    while (now > prev && !atomic_compare_exchange_weak(&g_max_running, &prev, now))
        ;
    atomic_fetch_add(&x->runs, 1);
    volatile unsigned s = 0;
    for (int i = 0; i < 2000; i++) /* a little work, so threads overlap */
        s += (unsigned)i * (unsigned)x->id;
    x->value = x->id * 2;
    atomic_fetch_sub(&g_running, 1);
}

/* Wait on the pool's fd and reap until `want` jobs came back; returns how many. */
static size_t reap_all(app_pool *p, size_t want, job **order)
{
    size_t got = 0;
    while (got < want) {
        struct pollfd pf = {.fd = app_pool_fd(p), .events = POLLIN};
        int r = poll(&pf, 1, 10000);
        CU_ASSERT_FATAL(r == 1); /* completions must wake the loop */
        for (app_job *j = app_pool_reap(p); j; j = j->next)
            order[got++] = (job *)j;
    }
    return got;
}

static void test_many_jobs(void)
{
    enum { N = 20000 };
    app_pool *p = NULL;
    job *jobs = calloc(N, sizeof(job));
    job **order = calloc(N, sizeof(job *));
    CU_ASSERT_FATAL(jobs && order);
    CU_ASSERT_FATAL(app_pool_new(4, &p) == CDX_OK);
    for (int i = 0; i < N; i++) {
        jobs[i].base.run = run;
        jobs[i].id = i;
        app_pool_submit(p, &jobs[i].base);
    }
    CU_ASSERT_EQUAL(reap_all(p, N, order), N);
    CU_ASSERT_EQUAL(app_pool_pending(p), 0);
    for (int i = 0; i < N; i++) {
        CU_ASSERT_EQUAL(atomic_load(&jobs[i].runs), 1);
        CU_ASSERT_EQUAL(jobs[i].value, 2 * i);
    }
    /* Nothing is left: the fd is not readable and reap returns nothing. */
    struct pollfd pf = {.fd = app_pool_fd(p), .events = POLLIN};
    CU_ASSERT_EQUAL(poll(&pf, 1, 0), 0);
    CU_ASSERT_PTR_NULL(app_pool_reap(p));
    CU_ASSERT(atomic_load(&g_max_running) <= 4);
    app_pool_free(p);
    free(jobs);
    free(order);
}

static void test_fifo_one_thread(void)
{
    enum { N = 500 };
    app_pool *p = NULL;
    job jobs[N];
    job *order[N];
    memset(jobs, 0, sizeof(jobs));
    CU_ASSERT_FATAL(app_pool_new(1, &p) == CDX_OK);
    for (int i = 0; i < N; i++) {
        jobs[i].base.run = run;
        jobs[i].id = i;
        app_pool_submit(p, &jobs[i].base);
    }
    CU_ASSERT_EQUAL(reap_all(p, N, order), N);
    for (int i = 0; i < N; i++)
        CU_ASSERT_EQUAL(order[i]->id, i);
    app_pool_free(p);
}

static void test_free_drains(void)
{
    enum { N = 300 };
    app_pool *p = NULL;
    job jobs[N];
    memset(jobs, 0, sizeof(jobs));
    CU_ASSERT_FATAL(app_pool_new(2, &p) == CDX_OK);
    for (int i = 0; i < N; i++) {
        jobs[i].base.run = run;
        jobs[i].id = i;
        app_pool_submit(p, &jobs[i].base);
    }
    /* SIGTERM's drain: everything queued still runs, and comes back to be reaped. */
    size_t back = 0;
    for (app_job *j = app_pool_stop(p); j; j = j->next)
        back++;
    CU_ASSERT_EQUAL(back, N);
    app_pool_free(p);
    for (int i = 0; i < N; i++)
        CU_ASSERT_EQUAL(atomic_load(&jobs[i].runs), 1);
    app_pool_free(NULL);
}

static void test_bad_sizes(void)
{
    app_pool *p = (app_pool *)1;
    CU_ASSERT_EQUAL(app_pool_new(0, &p), CDX_ERR_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NULL(p);
    CU_ASSERT_EQUAL(app_pool_new(100000, &p), CDX_ERR_INVALID_ARGUMENT);
}

int main(void)
{
    static const fx_test tests[] = {
        {"20,000 jobs on 4 threads, each once", test_many_jobs},
        {"one thread completes in order", test_fifo_one_thread},
        {"free drains queued jobs", test_free_drains},
        {"bad sizes", test_bad_sizes},
    };
    return fx_cunit_run1("pool", tests, FX_LEN(tests));
}
