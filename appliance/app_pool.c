/* Fixed worker pool with an eventfd-signalled completion queue (see app_pool.h). */
#include "app_pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "cdx_limits.h"

struct app_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    app_job *qhead, *qtail; /* submitted, not started */
    app_job *dhead, *dtail; /* finished, not reaped */
    bool stopping;
    unsigned nthreads;
    pthread_t *threads;
    int efd;
    atomic_size_t pending;
};

static void *worker(void *arg)
{
    app_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->qhead && !p->stopping)
            pthread_cond_wait(&p->cv, &p->mu);
        if (!p->qhead) /* stopping and drained */
            break;
        app_job *j = p->qhead;
        p->qhead = j->next;
        if (!p->qhead)
            p->qtail = NULL;
        pthread_mutex_unlock(&p->mu);
        j->next = NULL;
        j->run(j);
        pthread_mutex_lock(&p->mu);
        bool was_empty = p->dhead == NULL;
        if (p->dtail)
            p->dtail->next = j;
        else
            p->dhead = j;
        p->dtail = j;
        if (was_empty) { /* one wake-up per batch of completions */
            uint64_t one = 1;
            ssize_t n;
            do
                n = write(p->efd, &one, sizeof(one));
            while (n < 0 && errno == EINTR);
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

cdx_err app_pool_new(unsigned threads, app_pool **out)
{
    *out = NULL;
    if (threads == 0 || threads > CDX_WORKERS_MAX)
        return cdx_fail(CDX_ERR_INVALID_ARGUMENT, "worker threads must be 1..%d", CDX_WORKERS_MAX);
    app_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "out of memory");
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    p->threads = calloc(threads, sizeof(pthread_t));
    if (p->efd < 0 || !p->threads) {
        app_pool_free(p);
        return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "worker pool: cannot create its eventfd");
    }
    for (unsigned i = 0; i < threads; i++) {
        if (pthread_create(&p->threads[i], NULL, worker, p) != 0) {
            app_pool_free(p);
            return cdx_fail(CDX_ERR_RESOURCE_EXHAUSTED, "worker pool: cannot start thread %u", i);
        }
        p->nthreads++;
    }
    *out = p;
    return CDX_OK;
}

app_job *app_pool_stop(app_pool *p)
{
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    p->nthreads = 0;
    return app_pool_reap(p);
}

void app_pool_free(app_pool *p)
{
    if (!p)
        return;
    app_pool_stop(p); /* completions not reaped are dropped: the caller owned them */
    free(p->threads);
    if (p->efd >= 0)
        close(p->efd);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

void app_pool_submit(app_pool *p, app_job *job)
{
    job->next = NULL;
    atomic_fetch_add(&p->pending, 1);
    pthread_mutex_lock(&p->mu);
    if (p->qtail)
        p->qtail->next = job;
    else
        p->qhead = job;
    p->qtail = job;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

int app_pool_fd(const app_pool *p)
{
    return p->efd;
}

app_job *app_pool_reap(app_pool *p)
{
    uint64_t v;
    pthread_mutex_lock(&p->mu);
    /* Clear readiness under the lock: a worker finishing now signals again after us. */
    while (read(p->efd, &v, sizeof(v)) < 0 && errno == EINTR)
        ;
    app_job *list = p->dhead;
    p->dhead = p->dtail = NULL;
    pthread_mutex_unlock(&p->mu);
    size_t n = 0;
    for (app_job *j = list; j; j = j->next)
        n++;
    atomic_fetch_sub(&p->pending, n);
    return list;
}

size_t app_pool_pending(const app_pool *p)
{
    return atomic_load(&((app_pool *)p)->pending);
}
