/*
 * app_pool.h - the daemon's fixed pool of worker threads.
 *
 * The network thread submits jobs; workers run them (engine work: blocking
 * store and token calls) and put each finished job on a completion queue;
 * the network thread is woken through an eventfd (app_pool_fd, readable
 * when completions wait) and collects them with app_pool_reap, so response
 * writing stays on the network thread and no socket is touched by a worker.
 * The pool does not bound its queue: the daemon's admission control (the
 * in-flight byte budget, outstanding requests per connection) does, before
 * submitting.
 */
#ifndef APP_POOL_H
#define APP_POOL_H

#include <stddef.h>

#include "cdx_err.h"

typedef struct app_job app_job;

/* Runs on a worker thread. */
typedef void (*app_job_fn)(app_job *job);

/* Embed this first in your job struct (or point to it); the pool owns nothing else. */
struct app_job {
    app_job_fn run;
    app_job *next; /* the pool's queues */
};

typedef struct app_pool app_pool;

/*
 * Start `threads` workers (1..CDX_WORKERS_MAX).
 * Errors: CDX_ERR_INVALID_ARGUMENT, CDX_ERR_RESOURCE_EXHAUSTED (threads or
 * the eventfd could not be created).
 */
cdx_err app_pool_new(unsigned threads, app_pool **out);

/*
 * Stop: workers finish the job they run and every job already queued
 * (drain), then exit. Completions not reaped are dropped from the queue
 * (their memory belongs to the caller, who should reap first). NULL is a
 * no-op.
 */
void app_pool_free(app_pool *p);

/*
 * Stop the workers after they finish everything submitted (drain) and
 * return the finished jobs not yet reaped (list as app_pool_reap). The pool
 * must then only be freed.
 */
app_job *app_pool_stop(app_pool *p);

/* Queue a job (never blocks). After app_pool_free has begun: not allowed. */
void app_pool_submit(app_pool *p, app_job *job);

/* File descriptor that is readable while completions wait (for the event loop). */
int app_pool_fd(const app_pool *p);

/*
 * Take every finished job, oldest first, as a list linked by ->next (NULL
 * when none); clears the fd's readiness.
 */
app_job *app_pool_reap(app_pool *p);

/* Jobs submitted and not yet reaped (queued, running or finished). */
size_t app_pool_pending(const app_pool *p);

#endif
