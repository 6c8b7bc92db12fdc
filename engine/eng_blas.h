/*
 * eng_blas.h - which OpenBLAS kernels this process runs, and which it
 * should. Debian 12's OpenBLAS 0.3.21 falls back to generic SSE3 kernels
 * ("Prescott") on CPUs newer than itself (k-means training ~6x slower) and
 * reads OPENBLAS_CORETYPE only when it loads, so a program sets that
 * variable and re-executes itself (cipherdexd and bench_ivf do).
 *
 * Exported through eng.h. Every function is thread-safe.
 */
#ifndef ENG_BLAS_H
#define ENG_BLAS_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

/*
 * When OpenBLAS fell back to generic kernels on a CPU it does not know, the
 * OPENBLAS_CORETYPE this CPU should use instead ("SkylakeX" with AVX-512,
 * "Haswell" with AVX2 + FMA); NULL when the kernels are fine or nothing
 * better exists (or the build is not x86 with GCC or Clang).
 */
const char *eng_blas_better_coretype(void);

/*
 * True if `core` (an OpenBLAS kernel set name, may be NULL) is one of the
 * generic fallbacks. Inline: eng_kmeans.c is also built without the engine
 * library (test_math).
 */
static inline bool eng_blas_is_generic(const char *core)
{
    static const char *const generic[] = {"Prescott", "Core2",     "Penryn", "Dunnington",
                                          "Nehalem",  "Atom",      "Katmai", "Northwood",
                                          "Opteron",  "Barcelona", "Bobcat", "Sandybridge"};
    for (size_t i = 0; core && i < sizeof(generic) / sizeof(generic[0]); i++)
        if (strcmp(core, generic[i]) == 0)
            return true;
    return false;
}

#endif
