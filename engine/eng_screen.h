/*
 * eng_screen.h - proven bounds on a float score from 8-bit codes, so a scan
 * can read codes (a quarter of the bytes) and score exactly only the rows
 * that could still make the result.
 *
 * Rows are stored as SQ8 codes (eng_sq8.h) plus two floats of "row aux":
 *   n2  = sum_i (step_i * code_i)^2            (float, within 2^-24 relative)
 *   err = ||x - decoded(x)||, rounded up        (0 when the codes are the data)
 * where decoded(x)_i = vmin_i + step_i * code_i in real arithmetic.
 *
 * Per query, eng_screen_prepare rounds the query's weights to int16 (so the
 * scan is an exact integer dot product of codes and weights, 16 codes per
 * three AVX2 instructions) and records every error term. eng_screen_bounds
 * then gives, per row, an interval [lo, hi] that provably contains the score
 * the caller's rescoring kernel computes in float32 for that row:
 *   - rescore_codes false: eng_l2sq / eng_dot of the query and x itself
 *     (IVFFlat originals, centroids);
 *   - rescore_codes true: eng_sq8_l2sq_many / eng_sq8_dot_many on the row's
 *     codes (IVFSQ8: its distances are those of the decoded vectors).
 * The intervals combine the integer rounding of the weights, `err` (triangle
 * inequality for L2, Cauchy-Schwarz for inner products), the float rounding
 * of the rescoring kernel (a multiple of d * 2^-24 of the magnitudes
 * involved) and double rounding. Scores are squared L2 distances (smaller is
 * better) or inner products (larger is better).
 *
 * A scan that keeps the k best upper bounds (lower bounds for inner
 * products) and rescores every row whose interval reaches that threshold
 * finds exactly the rows, distances and tie order a full float scan finds.
 */
#ifndef ENG_SCREEN_H
#define ENG_SCREEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eng_kmeans.h"
#include "eng_sq8.h"

typedef struct eng_screen {
    size_t d;
    bool l2;
    int16_t *w;   /* d integer weights (caller's buffer) */
    int32_t wmax; /* largest |w_i| with no int32 overflow at this d */
    double delta; /* weight unit: w_i * delta ~ the real weight */
    double base;  /* L2: ||q - vmin||^2; IP: q . vmin */
    double qerr;  /* bound on the weights' rounding, summed over a row */
    double gam;   /* relative float rounding of a d-term kernel */
    double eta;   /* L2, rescoring on codes: per-query absolute error of the kernel */
    double qn;    /* ||q|| */
    double mag;   /* IP: sum |q_i| (|vmin_i| + 255 step_i) + |base| */
    bool rescore_codes;
} eng_screen;

/* Largest |weight| usable at dimension d (0 when d is too large for the integer dot). */
int32_t eng_screen_wmax(size_t d);

/*
 * Prepare for query q (d = sq->d finite floats) with metric m; wbuf holds d
 * int16. Returns false when the screen cannot be used for this query (all
 * weights zero, a non-finite intermediate, d too large): score every row
 * exactly instead.
 */
bool eng_screen_prepare(eng_screen *s, const eng_sq8 *sq, const float *q, eng_km_metric m,
                        bool rescore_codes, int16_t *wbuf);

/*
 * Bounds for n rows: codes (n x d), aux (n x 2 floats: n2, err). S is n
 * int64 of scratch. lo/hi get each row's interval (double).
 */
void eng_screen_bounds(const eng_screen *s, const uint8_t *codes, const float *aux, size_t n,
                       int64_t *S, double *lo, double *hi);

/*
 * AVX-512 VNNI (vpdpwssd) was tried for the integer kernel on an Emerald
 * Rapids VM: no faster, since the scan is bound by memory bandwidth.
 */

/*
 * Test and bench hook: S[j] = sum_i w[i] * codes[j*d + i] with the named
 * kernel ("scalar", "avx2"); false when this CPU lacks it.
 * |w[i]| must be at most eng_screen_wmax(d).
 */
bool eng_screen_idot(const char *impl, const int16_t *w, const uint8_t *codes, size_t n, size_t d,
                     int64_t *S);

/* The row aux of x (d floats) and its codes (already encoded with sq). */
void eng_screen_row_aux(const eng_sq8 *sq, const float *x, const uint8_t *code, float aux[2]);

#endif
