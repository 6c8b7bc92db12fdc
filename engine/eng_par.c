/* Fork-join and background jobs with error hand-off (eng_par.h). */
#include <stdio.h>
#include <unistd.h>

#include "eng_par.h"

void eng_part_done(eng_part *p, cdx_err err)
{
    p->err = err;
    if (err)
        snprintf(p->msg, sizeof(p->msg), "%s", cdx_err_detail());
}

cdx_err eng_parts_err(const eng_part *const *p, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        if (p[i]->err)
            return cdx_fail(p[i]->err, "%s", p[i]->msg);
    return CDX_OK;
}

unsigned eng_par_threads(size_t units, size_t min_units)
{
    if (units < min_units)
        return 1;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 2 ? 1 : n > CDX_WRITE_THREADS_MAX ? CDX_WRITE_THREADS_MAX : (unsigned)n;
}

void eng_par_run(void *(*fn)(void *), void *args, size_t size, unsigned n, bool caller_works)
{
    pthread_t th[ENG_PAR_MAX];
    bool started[ENG_PAR_MAX] = {false};
    unsigned nth = caller_works ? n - 1 : n; /* shares on new threads */
    for (unsigned i = 0; i < nth; i++)
        started[i] = pthread_create(&th[i], NULL, fn, (char *)args + i * size) == 0;
    for (unsigned i = 0; i < nth; i++)
        if (!started[i])
            fn((char *)args + i * size);
    if (caller_works)
        fn((char *)args + (size_t)(n - 1) * size);
    for (unsigned i = 0; i < nth; i++)
        if (started[i])
            pthread_join(th[i], NULL);
}

static void *bg_main(void *arg)
{
    eng_bg *j = arg;
    eng_part_done(&j->p, j->fn(j->arg));
    return NULL;
}

cdx_err eng_bg_start(eng_bg *j, cdx_err (*fn)(void *), void *arg)
{
    j->fn = fn;
    j->arg = arg;
    j->p.err = CDX_OK;
    j->running = pthread_create(&j->th, NULL, bg_main, j) == 0;
    return j->running ? CDX_OK : fn(arg);
}

cdx_err eng_bg_join(void *job)
{
    eng_bg *j = job;
    if (!j->running)
        return CDX_OK;
    pthread_join(j->th, NULL);
    j->running = false;
    const eng_part *p = &j->p;
    return eng_parts_err(&p, 1);
}
