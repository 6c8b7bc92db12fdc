/*
 * bench_custody - subkey derivations per second on a throwaway SoftHSM token.
 *
 * Rows: raw C_Sign(CKM_SHA256_HMAC) with a cached handle (the floor: what the
 * token itself costs), custody derivations with the cache off (1 and 2
 * threads), custody cache hits with a TTL (1 and 2 threads). A program, not a
 * test: run it through `./run bench` or directly (CDX_TEST_TMP for its temp dir).
 *
 * Usage: bench_custody [seconds-per-row]   (default 2)
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

#include "cdx_err.h"
#include "fx_custody.h"
#include "fx_softhsm.h"
#include "hsm_custody.h"
#include "hsm_keys.h"
#include "hsm_subkey.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

struct job {
    hsm_custody *c;
    hsm_key_ref ref;
    uint8_t kcv[8];
    double until;
    atomic_ulong *ops;
    int errors;
    int vary; /* vary the epoch so the cache, if on, misses only once per epoch */
};

static void *worker(void *arg)
{
    struct job *j = arg;
    unsigned long n = 0;
    while (now_s() < j->until) {
        for (int k = 0; k < 64; k++) {
            hsm_subkey *sk = NULL;
            if (hsm_subkey_get(j->c, &j->ref, j->kcv, HSM_P_PAYLOAD, (uint32_t)(k % j->vary), &sk))
                j->errors++;
            hsm_subkey_release(sk);
            n++;
        }
    }
    atomic_fetch_add(j->ops, n);
    return NULL;
}

static double run(hsm_custody *c, const hsm_key_ref *ref, const uint8_t kcv[8], int threads,
                  double secs)
{
    atomic_ulong ops = 0;
    pthread_t th[8];
    struct job jobs[8];
    double t0 = now_s();
    for (int i = 0; i < threads; i++) {
        jobs[i] = (struct job){.c = c, .ref = *ref, .until = t0 + secs, .ops = &ops, .vary = 4};
        memcpy(jobs[i].kcv, kcv, 8);
        pthread_create(&th[i], NULL, worker, &jobs[i]);
    }
    int errors = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        errors += jobs[i].errors;
    }
    double el = now_s() - t0;
    if (errors)
        fprintf(stderr, "bench: %d errors\n", errors);
    return (double)atomic_load(&ops) / el;
}

/* The floor: C_Sign on the token with a cached handle, no custody layer. */
static double raw_sign(const char *module, const char *label, double secs)
{
    void *dl = dlopen(module, RTLD_NOW | RTLD_NOLOAD);
    CK_C_GetFunctionList g = dl ? (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList") : NULL;
    CK_FUNCTION_LIST_PTR f;
    if (!g || g(&f) != CKR_OK)
        return 0;
    CK_SLOT_ID slots[8];
    CK_ULONG ns = 8;
    CK_SESSION_HANDLE s = 0;
    f->C_GetSlotList(CK_TRUE, slots, &ns);
    for (CK_ULONG i = 0; i < ns; i++) {
        CK_TOKEN_INFO ti;
        if (f->C_GetTokenInfo(slots[i], &ti) == CKR_OK && !memcmp(ti.label, label, strlen(label)))
            f->C_OpenSession(slots[i], CKF_SERIAL_SESSION, NULL, NULL, &s);
    }
    CK_ATTRIBUTE t = {CKA_LABEL, (void *)"cipherdex-index-000102030405060708090a0b0c0d0e0f", 48};
    CK_OBJECT_HANDLE h;
    CK_ULONG n = 0;
    f->C_FindObjectsInit(s, &t, 1);
    f->C_FindObjects(s, &h, 1, &n);
    f->C_FindObjectsFinal(s);
    if (n != 1)
        return 0;
    uint8_t msg[64] = {0}, out[32];
    unsigned long ops = 0;
    double t0 = now_s(), until = t0 + secs;
    while (now_s() < until) {
        for (int k = 0; k < 64; k++) {
            CK_MECHANISM m = {CKM_SHA256_HMAC, NULL, 0};
            CK_ULONG ol = 32;
            f->C_SignInit(s, &m, h);
            f->C_Sign(s, msg, 48, out, &ol);
            ops++;
        }
    }
    double el = now_s() - t0;
    f->C_CloseSession(s);
    dlclose(dl);
    return ops / el;
}

static hsm_custody *open_ctx(fx_token *t, uint32_t ttl)
{
    hsm_config cfg;
    fx_hsm_config(t, NULL, ttl, &cfg);
    hsm_custody *c = NULL;
    cdx_err e = hsm_custody_open(&cfg, &c);
    if (e)
        fprintf(stderr, "bench: open: %s: %s\n", cdx_err_name(e), cdx_err_detail());
    return c;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 2.0;
    if (secs <= 0)
        secs = 2.0;
    fx_token *t = fx_token_new("bench");
    if (!t)
        return 1;
    hsm_key_ref ref = {.kind = HSM_KEY_INDEX};
    for (int i = 0; i < 16; i++)
        ref.id[i] = (uint8_t)i;
    uint8_t kcv[8];

    hsm_custody *c = open_ctx(t, 0);
    if (!c || hsm_index_key_generate(c, ref.id, kcv))
        return 1;
    double floor1 = raw_sign(fx_softhsm_module(), "bench", secs);
    double off1 = run(c, &ref, kcv, 1, secs);
    double off2 = run(c, &ref, kcv, 2, secs);
    hsm_stats st;
    hsm_custody_stats(c, &st);
    hsm_custody_free(c);

    c = open_ctx(t, 60000);
    if (!c)
        return 1;
    double on1 = run(c, &ref, kcv, 1, secs);
    double on2 = run(c, &ref, kcv, 2, secs);
    hsm_stats st2;
    hsm_custody_stats(c, &st2);
    hsm_custody_free(c);
    fx_token_free(t);

    printf("## Subkey derivation (SoftHSM2 2.6.1, %.1f s per row)\n\n", secs);
    printf("| what | threads | ops/s | vs raw C_Sign |\n|---|---|---|---|\n");
    printf("| raw C_Sign(CKM_SHA256_HMAC), cached handle (floor) | 1 | %.0f | 1.00x |\n", floor1);
    printf("| custody derive, cache off (TTL 0) | 1 | %.0f | %.2fx |\n", off1, off1 / floor1);
    printf("| custody derive, cache off (TTL 0) | 2 | %.0f | %.2fx |\n", off2, off2 / floor1);
    printf("| custody cache hit (TTL 60 s) | 1 | %.0f | %.1fx |\n", on1, on1 / floor1);
    printf("| custody cache hit (TTL 60 s) | 2 | %.0f | %.1fx |\n", on2, on2 / floor1);
    printf("\ncache off: %llu derivations, %llu hits; cache on: %llu derivations, %llu hits\n",
           (unsigned long long)st.derivations, (unsigned long long)st.cache_hits,
           (unsigned long long)st2.derivations, (unsigned long long)st2.cache_hits);
    return 0;
}
