/*
 * eng_par.h - the engine's one threading helper: fork-join over a few
 * worker threads, and one background job, both carrying each thread's
 * cdx_err and its detail (cdx_fail / cdx_err_detail are per thread) back to
 * the thread that waits for them.
 *
 * A worker's result lives in an eng_part embedded in its argument: the
 * worker ends with eng_part_done(part, err); the waiting thread raises the
 * first error again with eng_parts_err. A thread that cannot be created
 * never loses work: its share runs on the calling thread instead.
 */
#ifndef ENG_PAR_H
#define ENG_PAR_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include "cdx_err.h"
#include "cdx_limits.h"

#define ENG_PAR_DETAIL_MAX 512                   /* bytes of a carried detail (as cdx_err keeps) */
#define ENG_PAR_MAX        CDX_QUERY_THREADS_MAX /* most shares one eng_par_run takes */

/* One thread's share of the outcome: its error and that error's detail. */
typedef struct eng_part {
    cdx_err err;
    char msg[ENG_PAR_DETAIL_MAX];
} eng_part;

/* Record err (and, if any, this thread's current detail) in p. */
void eng_part_done(eng_part *p, cdx_err err);

/* The first error of p[0..n) raised again on this thread (cdx_fail with its detail), or CDX_OK. */
cdx_err eng_parts_err(const eng_part *const *p, unsigned n);

/*
 * How many write-path threads (1..CDX_WRITE_THREADS_MAX, at most the online
 * cores) `units` of work deserve: 1 below min_units.
 */
unsigned eng_par_threads(size_t units, size_t min_units);

/*
 * Run fn on args[0..n) (each `size` bytes; n <= ENG_PAR_MAX) and return when
 * all are done. caller_works: n - 1 run on new threads and the last on this
 * one; else all n on new threads while this one waits. A thread that cannot
 * start runs its share here. fn reports through its argument (eng_part).
 */
void eng_par_run(void *(*fn)(void *), void *args, size_t size, unsigned n, bool caller_works);

/* A job (a store write) on its own thread while the caller goes on. */
typedef struct eng_bg {
    eng_part p;
    cdx_err (*fn)(void *);
    void *arg;
    pthread_t th;
    bool running;
} eng_bg;

/* An idle job: eng_bg_join on it is a no-op. */
#define ENG_BG_IDLE                                                                                \
    {                                                                                              \
        .running = false                                                                           \
    }

/*
 * Start fn(arg) on a thread; without one, run it now and return its error.
 * Returns CDX_OK once the thread runs: its error comes from eng_bg_join.
 */
cdx_err eng_bg_start(eng_bg *j, cdx_err (*fn)(void *), void *arg);

/*
 * Wait for the job (an eng_bg *; a no-op if none runs) and raise its error
 * on this thread. Safe to call again: later calls return CDX_OK. Its type
 * suits eng_commit_joined's join callback.
 */
cdx_err eng_bg_join(void *job);

#endif
