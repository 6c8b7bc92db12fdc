/*
 * fuzz_main.h - the replay driver shared by the fuzz targets in tests/fuzz/.
 *
 * A target defines LLVMFuzzerTestOneInput() and fuzz_write_seeds(); linked
 * with fuzz_main.c it is a normal executable:
 *   TARGET [--seeds DIR] FILE|DIR...
 * --seeds writes the target's seed corpus into DIR (created), then every
 * FILE, and every file under each DIR, is replayed through
 * LLVMFuzzerTestOneInput. ctest runs `TARGET --seeds D D`. A crash, an
 * abort() or a sanitizer report fails the run.
 *
 * For libFuzzer, build the target alone with -DCDX_LIBFUZZER and
 * -fsanitize=fuzzer (instructions in each target's header): fuzz_main.c is
 * not linked then.
 */
#ifndef FUZZ_MAIN_H
#define FUZZ_MAIN_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Write the target's seeds into dir with fuzz_seed() or fuzz_seed_sel(); returns 0 or -1. */
int fuzz_write_seeds(const char *dir);

/* One seed file dir/name holding b[0..n); returns 0 or -1. */
int fuzz_seed(const char *dir, const char *name, const void *b, size_t n);

/* One seed file dir/name holding the selector bytes sel[0..nsel) (how the
 * target reads the rest), then b[0..n); returns 0 or -1. */
int fuzz_seed_sel(const char *dir, const char *name, const void *sel, size_t nsel, const void *b,
                  size_t n);

#endif
