/*
 * cdx_time.h - the project's clocks, in one place.
 *
 * Monotonic time (CLOCK_MONOTONIC) for timeouts, back-off, TTLs and stage
 * timers: it never jumps with the wall clock. Wall time (CLOCK_REALTIME) only
 * for what is stored or shown to people (record write times, log stamps).
 *
 * Thread-safe, no allocation; clock_gettime cannot fail for these clocks on
 * Linux, so there is no error return.
 */
#ifndef CDX_TIME_H
#define CDX_TIME_H

#include <stdint.h>
#include <time.h>

/* Monotonic nanoseconds since an arbitrary start (boot). */
uint64_t cdx_mono_ns(void);

/* Monotonic milliseconds since the same start; fits int64_t for 292 million years. */
int64_t cdx_mono_ms(void);

/* Monotonic seconds as a double, for human-facing rates and durations. */
double cdx_mono_s(void);

/* Wall-clock milliseconds since the Unix epoch. */
uint64_t cdx_wall_ms(void);

/*
 * The CLOCK_MONOTONIC instant `ms` from now, as pthread_cond_timedwait wants
 * it (the condition variable made with pthread_condattr_setclock(MONOTONIC)).
 */
struct timespec cdx_mono_deadline(int64_t ms);

#endif
